//! The rules of the API: authorization, validation, transactions, audit.
//!
//! Handlers call one function here per request; each function opens its own
//! short transaction (a tenant transaction under row-level security, see
//! [`crate::store::tenant_tx_checked`]) and records an audit event for every mutation
//! inside it, so an accepted change and its audit entry commit together.

pub mod admission;
pub mod api_key;
pub mod application;
pub mod audit;
pub mod auth;
pub mod billing_ops;
pub mod budget;
pub mod compute_pool;
pub mod event;
pub mod idempotency;
pub mod invoice;
pub mod oidc;
pub mod operation;
pub mod organization;
pub mod price_book;
pub mod savepoint;
pub mod savepoint_jm;
pub mod savepoint_runtime;
pub mod savepoint_schedule;
pub mod service_account;
pub mod spec;
pub mod usage;
pub mod user;

use std::sync::Arc;

use base64::Engine;
use sluice_api_types::{
    ApiKeyId, FieldError, OrgId, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, PoolId, PrincipalRef, Role,
    UserId,
};
use sqlx::PgPool;

use crate::config::Config;
use crate::store::{self, PageQuery, StoreError, Tx};

/// Everything a service function needs besides the request.
#[derive(Clone)]
pub struct Service {
    /// Connections as the database's owner: token issuance, the operator's
    /// API, signing keys. Never used for a tenant's data.
    pub db: PgPool,
    /// Connections that run as `sluice_tenant` (row-level security) for
    /// their whole life; see [`store::connect_tenant`].
    pub tenant_db: PgPool,
    pub cfg: Arc<Config>,
    pub keys: Arc<auth::KeyRing>,
    /// The external OIDC issuer, when configured.
    pub oidc: Option<Arc<oidc::Oidc>>,
    /// Provisioner, storage and the reconciler's wake-up (applications that run).
    pub engine: Arc<crate::reconcile::Engine>,
    /// Savepoint storage and clusters (injected at start; None: savepoints are recorded, not taken).
    pub savepoints: Option<Arc<savepoint_runtime::SavepointBackend>>,
}

/// The errors of the service layer; `http::error` maps each to one status and code.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{resource} {id} not found")]
    NotFound { resource: &'static str, id: String },
    #[error("the request is invalid")]
    Invalid(Vec<FieldError>),
    #[error("{detail}")]
    Conflict { code: &'static str, detail: String },
    #[error("{detail}")]
    Unprocessable { code: &'static str, detail: String },
    /// 409 `compute_pool_exhausted` with the free and requested KPUs (DESIGN §6).
    #[error("{detail}")]
    PoolExhausted {
        free_kpu_milli: u64,
        requested_kpu_milli: u64,
        detail: String,
    },
    #[error("If-Match names version {expected} but the current version is {current}")]
    PreconditionFailed { expected: i64, current: i64 },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ServiceError {
    pub fn not_found(resource: &'static str, id: impl ToString) -> Self {
        ServiceError::NotFound {
            resource,
            id: id.to_string(),
        }
    }

    pub fn invalid(field: &str, code: &str, message: impl Into<String>) -> Self {
        ServiceError::Invalid(vec![FieldError::new(field, code, message)])
    }
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unique { constraint } => ServiceError::Conflict {
                code: "already_exists",
                detail: format!(
                    "a resource with the same unique values already exists ({constraint})"
                ),
            },
            StoreError::ForeignKey { constraint } => ServiceError::Conflict {
                code: "in_use",
                detail: format!("the resource is referenced by others ({constraint})"),
            },
            other => ServiceError::Internal(anyhow::Error::new(other)),
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

/// The authenticated caller of a tenant request. The organization comes from
/// the credential only, never from a path or a body.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub org_id: OrgId,
    pub principal: PrincipalRef,
    pub role: Role,
    pub api_key_id: Option<ApiKeyId>,
    /// Set when the API key is limited to one compute pool.
    pub pool_scope: Option<PoolId>,
    pub request_id: Option<String>,
    /// What the token was issued for; re-checked in every transaction.
    pub credential: Credential,
}

/// What an access token was issued for.
#[derive(Debug, Clone)]
pub enum Credential {
    ApiKey(ApiKeyId),
    /// A console login of this user.
    Login(UserId),
}

impl Ctx {
    pub fn actor(&self) -> &str {
        match &self.principal {
            PrincipalRef::User(u) => u.as_str(),
            PrincipalRef::ServiceAccount(s) => s.as_str(),
        }
    }

    /// 403 unless the caller's role is one of `allowed`.
    pub fn require(&self, allowed: &[Role], what: &str) -> Result<(), ServiceError> {
        if allowed.contains(&self.role) {
            Ok(())
        } else {
            Err(ServiceError::Forbidden(format!(
                "role {} may not {what}",
                self.role.as_str()
            )))
        }
    }

    /// Whether a pool-scoped key may see this pool (unscoped credentials see all).
    pub fn sees_pool(&self, pool: &str) -> bool {
        self.pool_scope.as_ref().is_none_or(|p| p.as_str() == pool)
    }

    /// Opens the request's tenant transaction; its first statement also checks
    /// that the credential is still live with the role the token claims.
    pub async fn begin(&self, svc: &Service) -> Result<Tx, ServiceError> {
        store::tenant_tx_checked(&svc.tenant_db, &self.org_id, &self.check())
            .await?
            .ok_or_else(not_live)
    }

    /// A tenant connection for a request that only reads: checked and scoped
    /// like [`Ctx::begin`], without the BEGIN and COMMIT round trips.
    pub async fn read(&self, svc: &Service) -> Result<store::TenantConn, ServiceError> {
        store::tenant_conn_checked(&svc.tenant_db, &self.org_id, &self.check())
            .await?
            .ok_or_else(not_live)
    }

    fn check(&self) -> store::CredentialCheck<'_> {
        let (api_key, user) = match &self.credential {
            Credential::ApiKey(k) => (Some(k), None),
            Credential::Login(u) => (None, Some(u)),
        };
        store::CredentialCheck {
            api_key,
            user,
            role: self.role,
            pool: self.pool_scope.as_ref(),
        }
    }

    /// Records an audit event in the mutation's transaction.
    pub async fn audit(
        &self,
        tx: &mut Tx,
        action: &str,
        resource_type: &str,
        resource_id: &str,
        details: serde_json::Value,
    ) -> Result<(), ServiceError> {
        store::audit::insert(
            tx,
            &store::audit::NewEvent {
                org_id: &self.org_id,
                actor: self.actor(),
                api_key_id: self.api_key_id.as_ref().map(ApiKeyId::as_str),
                action,
                resource_type,
                resource_id,
                request_id: self.request_id.as_deref(),
                details,
            },
        )
        .await?;
        Ok(())
    }
}

fn not_live() -> ServiceError {
    ServiceError::Unauthenticated(
        "the token's credential was revoked or expired, its principal deleted, or its role changed; get a new token"
            .into(),
    )
}

/// Who may call what. The role × route test enumerates these.
pub mod policy {
    use sluice_api_types::Role::{self, *};

    pub const ANY: &[Role] = &[OrgAdmin, Developer, Viewer, BillingAdmin];
    pub const READ_POOLS: &[Role] = ANY;
    pub const WRITE_POOLS: &[Role] = &[OrgAdmin];
    pub const READ_APPS: &[Role] = &[OrgAdmin, Developer, Viewer];
    pub const WRITE_APPS: &[Role] = &[OrgAdmin, Developer];
    pub const MANAGE_IDENTITY: &[Role] = &[OrgAdmin];
    pub const READ_AUDIT: &[Role] = &[OrgAdmin];
    /// Usage, invoices and the budget.
    pub const READ_BILLING: &[Role] = &[OrgAdmin, BillingAdmin, Viewer];
    pub const WRITE_BUDGET: &[Role] = &[OrgAdmin, BillingAdmin];
}

/// Parses `page_size` / `page_token` of a list whose cursor is an identifier.
pub fn page(size: Option<u32>, token: Option<&str>) -> Result<PageQuery, ServiceError> {
    let limit = page_size(size)?;
    let after = token
        .map(|t| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t)
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or_else(|| {
                    ServiceError::invalid(
                        "query.page_token",
                        "invalid_page_token",
                        "page_token is not a token this API returned",
                    )
                })
        })
        .transpose()?;
    Ok(PageQuery { after, limit })
}

pub fn page_size(size: Option<u32>) -> Result<i64, ServiceError> {
    match size.unwrap_or(PAGE_SIZE_DEFAULT) {
        n @ 1..=PAGE_SIZE_MAX => Ok(i64::from(n)),
        n => Err(ServiceError::invalid(
            "query.page_size",
            "out_of_range",
            format!("page_size must be between 1 and {PAGE_SIZE_MAX}, got {n}"),
        )),
    }
}

/// The `next_page_token` after `last` when more rows follow.
pub fn next_token(more: bool, last: Option<&str>) -> Option<String> {
    match (more, last) {
        (true, Some(l)) => Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(l)),
        _ => None,
    }
}

/// Checks a display name: trimmed, 1..=max characters, no control characters.
pub fn check_name(field: &str, value: &str, max: usize, errors: &mut Vec<FieldError>) {
    let n = value.chars().count();
    if value.trim() != value || n == 0 || n > max || value.chars().any(char::is_control) {
        errors.push(FieldError::new(
            field,
            "invalid_name",
            format!("{field} must be 1..={max} characters without surrounding spaces or control characters"),
        ));
    }
}

/// 412 unless `if_match` (when given) names the current version.
pub fn check_version(if_match: Option<i64>, current: i64) -> Result<(), ServiceError> {
    match if_match {
        Some(expected) if expected != current => {
            Err(ServiceError::PreconditionFailed { expected, current })
        }
        _ => Ok(()),
    }
}

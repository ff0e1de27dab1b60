//! Organizations: created by the platform operator (with their first admin), by
//! self-service signup when enabled, or by `sluice admin bootstrap`.

use sluice_api_types::{
    ApiKeyId, CreateOrganization, FieldError, Me, OrgId, Organization, OrganizationCreated,
    OrganizationList, PageParams, PrincipalRef, Role, SignupRequest, TokenResponse, UserId,
};

use super::auth::{check_password, hash_password_blocking, new_secret, sha256};
use super::{Ctx, Service, ServiceError, check_name, next_token, page};
use crate::store;

/// Checks an email address well enough to catch typos; the mailbox is not verified.
pub fn check_email(field: &str, email: &str, errors: &mut Vec<FieldError>) {
    let ok = email.len() <= 254
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(|c| c.is_whitespace() || c.is_control());
    if !ok {
        errors.push(FieldError::new(
            field,
            "invalid_email",
            "not an email address",
        ));
    }
}

async fn create_with_admin(
    svc: &Service,
    req: &CreateOrganization,
    actor: &str,
    request_id: Option<&str>,
) -> Result<OrganizationCreated, ServiceError> {
    let mut errors = Vec::new();
    check_name("name", &req.name, 200, &mut errors);
    check_name("admin.name", &req.admin.name, 200, &mut errors);
    check_email("admin.email", &req.admin.email, &mut errors);
    check_password("admin.password", &req.admin.password, &mut errors);
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    let hash = hash_password_blocking(req.admin.password.clone()).await?;
    let org_id = OrgId::new();
    let user_id = UserId::new();
    let mut tx = store::system_tx(&svc.db).await?;
    let organization = store::organization::insert(&mut tx, &org_id, &req.name).await?;
    let admin = store::user::insert(
        &mut tx,
        &store::user::NewUser {
            id: &user_id,
            org_id: &org_id,
            email: &req.admin.email.to_ascii_lowercase(),
            name: &req.admin.name,
            role: Role::OrgAdmin,
            password_hash: &hash,
        },
    )
    .await
    .map_err(|e| match e {
        store::StoreError::Unique { .. } => ServiceError::Conflict {
            code: "already_exists",
            detail: "a user with this email already exists".into(),
        },
        e => e.into(),
    })?;
    for (action, rtype, rid) in [
        ("organization.create", "organization", org_id.as_str()),
        ("user.create", "user", user_id.as_str()),
    ] {
        store::audit::insert(
            &mut tx,
            &store::audit::NewEvent {
                org_id: &org_id,
                actor,
                api_key_id: None,
                action,
                resource_type: rtype,
                resource_id: rid,
                request_id,
                details: serde_json::json!({ "role": "org_admin" }),
            },
        )
        .await?;
    }
    tx.commit().await?;
    Ok(OrganizationCreated {
        organization,
        admin,
    })
}

/// `POST /admin/v1/organizations`.
pub async fn create(
    svc: &Service,
    req: &CreateOrganization,
    request_id: Option<&str>,
) -> Result<OrganizationCreated, ServiceError> {
    create_with_admin(svc, req, "platform_operator", request_id).await
}

/// `POST /v1/signup`: a new organization whose creator is its admin, logged in.
pub async fn signup(
    svc: &Service,
    req: &SignupRequest,
    request_id: Option<&str>,
) -> Result<TokenResponse, ServiceError> {
    if !svc.cfg.auth.signup_enabled {
        return Err(ServiceError::Forbidden(
            "self-service signup is disabled on this server".into(),
        ));
    }
    let created = create_with_admin(
        svc,
        &CreateOrganization {
            name: req.organization_name.clone(),
            admin: sluice_api_types::AdminUserSpec {
                email: req.email.clone(),
                name: req.name.clone(),
                password: req.password.clone(),
            },
        },
        "signup",
        request_id,
    )
    .await
    .map_err(|e| match e {
        ServiceError::Invalid(errs) => ServiceError::Invalid(
            errs.into_iter()
                .map(|mut f| {
                    f.field = match f.field.as_str() {
                        "name" => "organization_name".into(),
                        other => other.trim_start_matches("admin.").into(),
                    };
                    f
                })
                .collect(),
        ),
        e => e,
    })?;
    svc.keys
        .issue(
            &created.organization.id,
            created.admin.id.as_str(),
            None,
            Role::OrgAdmin,
            None,
        )
        .await
}

pub async fn list(svc: &Service, p: &PageParams) -> Result<OrganizationList, ServiceError> {
    let page = page(p.page_size, p.page_token.as_deref())?;
    let mut tx = store::system_tx(&svc.db).await?;
    let (items, more) = store::organization::list(&mut tx, &page).await?;
    tx.commit().await?;
    let next_page_token = next_token(more, items.last().map(|o: &Organization| o.id.as_str()));
    Ok(OrganizationList {
        items,
        next_page_token,
    })
}

/// `GET /v1/me`.
pub async fn me(svc: &Service, ctx: &Ctx) -> Result<Me, ServiceError> {
    let mut conn = ctx.read(svc).await?;
    let organization = store::organization::get(&mut conn, &ctx.org_id)
        .await?
        .ok_or_else(|| ServiceError::not_found("organization", &ctx.org_id))?;
    Ok(Me {
        organization,
        principal: ctx.principal.clone(),
        role: ctx.role,
        api_key_id: ctx.api_key_id.clone(),
        compute_pool_id: ctx.pool_scope.clone(),
    })
}

/// What `sluice admin bootstrap` prints.
pub struct Bootstrapped {
    pub organization: Organization,
    pub user_id: UserId,
    pub created_user: bool,
    pub api_key_id: ApiKeyId,
    pub secret: String,
}

/// Idempotent first-run setup: the organization and its admin exist afterwards
/// (created only if missing), and the admin holds exactly one live key named
/// `bootstrap`, fresh each run (a secret cannot be shown twice).
pub async fn bootstrap(
    db: &sqlx::PgPool,
    org_name: &str,
    email: &str,
) -> Result<Bootstrapped, ServiceError> {
    let mut errors = Vec::new();
    check_name("org", org_name, 200, &mut errors);
    check_email("email", email, &mut errors);
    if !errors.is_empty() {
        return Err(ServiceError::Invalid(errors));
    }
    let email = email.to_ascii_lowercase();
    // Nobody logs in with this password: the admin uses the printed key, and can set one later.
    let hash = hash_password_blocking(new_secret()?).await?;
    let mut tx = store::system_tx(db).await?;
    // Serialises concurrent bootstraps, so two runs cannot both create the organization.
    sqlx::query("SELECT pg_advisory_xact_lock(7365646)")
        .execute(&mut *tx)
        .await?;
    let organization = match store::organization::find_by_name(&mut tx, org_name).await? {
        Some(o) => o,
        None => store::organization::insert(&mut tx, &OrgId::new(), org_name).await?,
    };
    let existing = store::user::find_by_email(&mut tx, &email).await?;
    let (user_id, created_user) = match existing {
        Some(u) if u.org_id == organization.id.as_str() => {
            (u.id.parse().map_err(|e| anyhow::anyhow!("{e}"))?, false)
        }
        Some(_) => {
            return Err(ServiceError::Conflict {
                code: "already_exists",
                detail: format!("{email} belongs to another organization"),
            });
        }
        None => {
            let id = UserId::new();
            store::user::insert(
                &mut tx,
                &store::user::NewUser {
                    id: &id,
                    org_id: &organization.id,
                    email: &email,
                    name: "Administrator",
                    role: Role::OrgAdmin,
                    password_hash: &hash,
                },
            )
            .await?;
            (id, true)
        }
    };
    store::api_key::revoke_owned(
        &mut tx,
        &organization.id,
        user_id.as_str(),
        Some("bootstrap"),
    )
    .await?;
    let secret = new_secret()?;
    let key_id = ApiKeyId::new();
    store::api_key::insert(
        &mut tx,
        &store::api_key::NewKey {
            id: &key_id,
            org_id: &organization.id,
            name: "bootstrap",
            owner: &PrincipalRef::User(user_id.clone()),
            role: Role::OrgAdmin,
            compute_pool_id: None,
            secret_sha256: &sha256(secret.as_bytes()),
            expires_at: None,
        },
    )
    .await?;
    store::audit::insert(
        &mut tx,
        &store::audit::NewEvent {
            org_id: &organization.id,
            actor: "platform_operator",
            api_key_id: None,
            action: "api_key.create",
            resource_type: "api_key",
            resource_id: key_id.as_str(),
            request_id: None,
            details: serde_json::json!({ "name": "bootstrap", "owner": user_id.as_str() }),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(Bootstrapped {
        organization,
        user_id,
        created_user,
        api_key_id: key_id,
        secret,
    })
}

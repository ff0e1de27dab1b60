//! Organizations, users, service accounts, API keys, tokens and roles.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::id::{ApiKeyId, OrgId, PoolId, ServiceAccountId, UserId};

/// What a principal may do inside its organization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Everything in the organization, including users, keys and audit events.
    OrgAdmin,
    /// Applications: create, change, start, stop; read pools and operations.
    Developer,
    /// Read applications, pools and operations.
    Viewer,
    /// Usage and invoices; read pools.
    BillingAdmin,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::OrgAdmin,
        Role::Developer,
        Role::Viewer,
        Role::BillingAdmin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::OrgAdmin => "org_admin",
            Role::Developer => "developer",
            Role::Viewer => "viewer",
            Role::BillingAdmin => "billing_admin",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Organization {
    pub id: OrgId,
    pub name: String,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct User {
    pub id: UserId,
    pub email: String,
    pub name: String,
    pub role: Role,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateUser {
    pub email: String,
    pub name: String,
    pub role: Role,
    /// At least 12 characters; stored as an argon2id hash.
    pub password: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUser {
    pub name: Option<String>,
    pub role: Option<Role>,
    pub password: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserList {
    pub items: Vec<User>,
    pub next_page_token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ServiceAccount {
    pub id: ServiceAccountId,
    pub name: String,
    pub description: String,
    pub role: Role,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateServiceAccount {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub role: Role,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ServiceAccountList {
    pub items: Vec<ServiceAccount>,
    pub next_page_token: Option<String>,
}

/// Who holds an API key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum PrincipalRef {
    User(UserId),
    ServiceAccount(ServiceAccountId),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub name: String,
    pub owner: PrincipalRef,
    pub role: Role,
    /// When set, the key sees and acts on this compute pool and its applications only.
    pub compute_pool_id: Option<PoolId>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApiKey {
    pub name: String,
    /// The service account that holds the key (org_admin only); absent: the caller (a user).
    pub service_account_id: Option<ServiceAccountId>,
    /// Defaults to the owner's role. Only an org_admin may give a key a role other
    /// than the owner's own or `viewer`.
    pub role: Option<Role>,
    pub compute_pool_id: Option<PoolId>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// The only response that ever contains the secret.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyCreated {
    pub api_key: ApiKey,
    /// Shown once; only a hash is stored.
    pub secret: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApiKeyList {
    pub items: Vec<ApiKey>,
    pub next_page_token: Option<String>,
}

/// `POST /v1/auth/token`: the client-credentials exchange of an API key for a JWT.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub key_id: String,
    pub secret: String,
}

/// `POST /v1/auth/login`: console login.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub email: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TokenResponse {
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    pub expires_in: u64,
}

/// `POST /v1/signup` (when the server enables self-service signup).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    pub organization_name: String,
    pub email: String,
    pub name: String,
    pub password: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub organization: Organization,
    pub principal: PrincipalRef,
    pub role: Role,
    pub api_key_id: Option<ApiKeyId>,
    pub compute_pool_id: Option<PoolId>,
}

/// The first administrator of a new organization.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUserSpec {
    pub email: String,
    pub name: String,
    pub password: String,
}

/// `POST /admin/v1/organizations`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateOrganization {
    pub name: String,
    pub admin: AdminUserSpec,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrganizationCreated {
    pub organization: Organization,
    pub admin: User,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct OrganizationList {
    pub items: Vec<Organization>,
    pub next_page_token: Option<String>,
}

/// A signing key of the JWKS rotation, as the platform operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct SigningKeyInfo {
    pub kid: String,
    pub created_at: DateTime<Utc>,
    /// Tokens are no longer signed with it after this instant.
    pub retired_at: Option<DateTime<Utc>>,
}

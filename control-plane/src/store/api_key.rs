//! `api_keys`.

use chrono::{DateTime, Utc};
use sluice_api_types::{ApiKey, ApiKeyId, OrgId, PoolId, PrincipalRef, Role};

use super::{Conn, PageQuery, StoreError, id, split_page};

const COLUMNS: &str = "id, org_id, name, user_id, service_account_id, role, compute_pool_id, \
                       secret_sha256, expires_at, revoked_at, created_at";

#[derive(sqlx::FromRow)]
pub struct KeyRow {
    pub id: String,
    pub org_id: String,
    pub name: String,
    pub user_id: Option<String>,
    pub service_account_id: Option<String>,
    pub role: String,
    pub compute_pool_id: Option<String>,
    pub secret_sha256: Vec<u8>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl KeyRow {
    pub fn owner(&self) -> Result<PrincipalRef, StoreError> {
        match (&self.user_id, &self.service_account_id) {
            (Some(u), None) => Ok(PrincipalRef::User(id(u)?)),
            (None, Some(s)) => Ok(PrincipalRef::ServiceAccount(id(s)?)),
            _ => Err(StoreError::Corrupt(format!(
                "api key {} has no single owner",
                self.id
            ))),
        }
    }

    pub fn role(&self) -> Result<Role, StoreError> {
        Role::parse(&self.role)
            .ok_or_else(|| StoreError::Corrupt(format!("api key role '{}'", self.role)))
    }

    pub fn to_api(&self) -> Result<ApiKey, StoreError> {
        Ok(ApiKey {
            id: id(&self.id)?,
            name: self.name.clone(),
            owner: self.owner()?,
            role: self.role()?,
            compute_pool_id: self.compute_pool_id.as_deref().map(id).transpose()?,
            expires_at: self.expires_at,
            revoked_at: self.revoked_at,
            created_at: self.created_at,
        })
    }
}

pub struct NewKey<'a> {
    pub id: &'a ApiKeyId,
    pub org_id: &'a OrgId,
    pub name: &'a str,
    pub owner: &'a PrincipalRef,
    pub role: Role,
    pub compute_pool_id: Option<&'a PoolId>,
    pub secret_sha256: &'a [u8],
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn insert(conn: &mut Conn, k: &NewKey<'_>) -> Result<ApiKey, StoreError> {
    let (user, sa) = match k.owner {
        PrincipalRef::User(u) => (Some(u.as_str()), None),
        PrincipalRef::ServiceAccount(s) => (None, Some(s.as_str())),
    };
    sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO api_keys (id, org_id, name, user_id, service_account_id, role, compute_pool_id,
                               secret_sha256, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    )))
    .bind(k.id.as_str())
    .bind(k.org_id.as_str())
    .bind(k.name)
    .bind(user)
    .bind(sa)
    .bind(k.role.as_str())
    .bind(k.compute_pool_id.map(PoolId::as_str))
    .bind(k.secret_sha256)
    .bind(k.expires_at)
    .fetch_one(conn)
    .await?
    .to_api()
}

/// Any key with this id, in any organization (token exchange; the org is not known yet).
pub async fn find(conn: &mut Conn, key: &ApiKeyId) -> Result<Option<KeyRow>, StoreError> {
    Ok(sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_keys WHERE id = $1"
    )))
    .bind(key.as_str())
    .fetch_optional(conn)
    .await?)
}

pub async fn get(
    conn: &mut Conn,
    org: &OrgId,
    key: &ApiKeyId,
) -> Result<Option<KeyRow>, StoreError> {
    Ok(sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_keys WHERE id = $1 AND org_id = $2"
    )))
    .bind(key.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?)
}

/// Keys of the organization; `owner`, when given, restricts to one principal's keys.
pub async fn list(
    conn: &mut Conn,
    org: &OrgId,
    owner: Option<&str>,
    page: &PageQuery,
) -> Result<(Vec<ApiKey>, bool), StoreError> {
    let rows = sqlx::query_as::<_, KeyRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM api_keys WHERE org_id = $1
         AND ($2::text IS NULL OR user_id = $2 OR service_account_id = $2)
         AND ($3::text IS NULL OR id > $3) ORDER BY id LIMIT $4"
    )))
    .bind(org.as_str())
    .bind(owner)
    .bind(page.after.as_deref())
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    let (rows, more) = split_page(rows, page.limit);
    Ok((
        rows.iter().map(KeyRow::to_api).collect::<Result<_, _>>()?,
        more,
    ))
}

pub async fn revoke(conn: &mut Conn, org: &OrgId, key: &ApiKeyId) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND org_id = $2 AND revoked_at IS NULL",
    )
    .bind(key.as_str())
    .bind(org.as_str())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Revokes every live key of a principal (`usr_…` or `sa_…`), named `name` when given.
pub async fn revoke_owned(
    conn: &mut Conn,
    org: &OrgId,
    owner: &str,
    name: Option<&str>,
) -> Result<u64, StoreError> {
    let r = sqlx::query(
        "UPDATE api_keys SET revoked_at = now()
         WHERE org_id = $1 AND (user_id = $2 OR service_account_id = $2)
         AND ($3::text IS NULL OR name = $3) AND revoked_at IS NULL",
    )
    .bind(org.as_str())
    .bind(owner)
    .bind(name)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// The role and pool scope a key grants now, or None when the key is revoked or
/// expired, its owner is deleted, or its owner's role no longer covers it.
/// Checked on every request, so revocation is immediate.
pub async fn live_grant(
    conn: &mut Conn,
    org: &OrgId,
    key: &ApiKeyId,
) -> Result<Option<(Role, Option<PoolId>)>, StoreError> {
    let row: Option<(String, Option<String>)> = sqlx::query_as(concat!(
        "SELECT k.role, k.compute_pool_id FROM api_keys k
         LEFT JOIN users u ON u.id = k.user_id
         LEFT JOIN service_accounts s ON s.id = k.service_account_id
         WHERE k.id = $1 AND k.org_id = $2 AND k.revoked_at IS NULL
           AND (k.expires_at IS NULL OR k.expires_at > now())
           AND (k.user_id IS NULL OR (u.id IS NOT NULL AND u.deleted_at IS NULL AND ",
        super::key_within_owner_role!(),
        "))
           AND (k.service_account_id IS NULL OR (s.id IS NOT NULL AND s.deleted_at IS NULL))",
    ))
    .bind(key.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?;
    row.map(|(role, pool)| {
        Ok((
            Role::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("api key role '{role}'")))?,
            pool.as_deref().map(id).transpose()?,
        ))
    })
    .transpose()
}

//! `service_accounts`.

use chrono::{DateTime, Utc};
use sluice_api_types::{OrgId, Role, ServiceAccount, ServiceAccountId};

use super::{Conn, PageQuery, StoreError, id, split_page};

const COLUMNS: &str = "id, name, description, role, version, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    description: String,
    role: String,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_api(self) -> Result<ServiceAccount, StoreError> {
        Ok(ServiceAccount {
            id: id(&self.id)?,
            role: Role::parse(&self.role).ok_or_else(|| {
                StoreError::Corrupt(format!("service account role '{}'", self.role))
            })?,
            name: self.name,
            description: self.description,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub async fn insert(
    conn: &mut Conn,
    org: &OrgId,
    sa: &ServiceAccountId,
    name: &str,
    description: &str,
    role: Role,
) -> Result<ServiceAccount, StoreError> {
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO service_accounts (id, org_id, name, description, role)
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    )))
    .bind(sa.as_str())
    .bind(org.as_str())
    .bind(name)
    .bind(description)
    .bind(role.as_str())
    .fetch_one(conn)
    .await?
    .into_api()
}

pub async fn get(
    conn: &mut Conn,
    org: &OrgId,
    sa: &ServiceAccountId,
) -> Result<Option<ServiceAccount>, StoreError> {
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM service_accounts WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL"
    )))
    .bind(sa.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?
    .map(Row::into_api)
    .transpose()
}

pub async fn list(
    conn: &mut Conn,
    org: &OrgId,
    page: &PageQuery,
) -> Result<(Vec<ServiceAccount>, bool), StoreError> {
    let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM service_accounts WHERE org_id = $1 AND deleted_at IS NULL
         AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3"
    )))
    .bind(org.as_str())
    .bind(page.after.as_deref())
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    let (rows, more) = split_page(rows, page.limit);
    Ok((
        rows.into_iter()
            .map(Row::into_api)
            .collect::<Result<_, _>>()?,
        more,
    ))
}

pub async fn soft_delete(
    conn: &mut Conn,
    org: &OrgId,
    sa: &ServiceAccountId,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE service_accounts SET deleted_at = now(), version = version + 1
         WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL",
    )
    .bind(sa.as_str())
    .bind(org.as_str())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

//! `users`.

use chrono::{DateTime, Utc};
use sluice_api_types::{OrgId, Role, User, UserId};

use super::{Conn, PageQuery, StoreError, id, split_page};

const COLUMNS: &str =
    "id, org_id, email, name, role, password_hash, version, created_at, updated_at";

/// A user row, including what the API never shows (the password hash).
#[derive(sqlx::FromRow, Clone)]
pub struct UserRow {
    pub id: String,
    pub org_id: String,
    pub email: String,
    pub name: String,
    pub role: String,
    pub password_hash: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl UserRow {
    pub fn role(&self) -> Result<Role, StoreError> {
        Role::parse(&self.role)
            .ok_or_else(|| StoreError::Corrupt(format!("user role '{}'", self.role)))
    }

    pub fn to_api(&self) -> Result<User, StoreError> {
        Ok(User {
            id: id(&self.id)?,
            email: self.email.clone(),
            name: self.name.clone(),
            role: self.role()?,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub struct NewUser<'a> {
    pub id: &'a UserId,
    pub org_id: &'a OrgId,
    pub email: &'a str,
    pub name: &'a str,
    pub role: Role,
    pub password_hash: &'a str,
}

pub async fn insert(conn: &mut Conn, u: &NewUser<'_>) -> Result<User, StoreError> {
    sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO users (id, org_id, email, name, role, password_hash)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    )))
    .bind(u.id.as_str())
    .bind(u.org_id.as_str())
    .bind(u.email)
    .bind(u.name)
    .bind(u.role.as_str())
    .bind(u.password_hash)
    .fetch_one(conn)
    .await?
    .to_api()
}

/// A live (not deleted) user of the organization; `for_update` locks the row.
pub async fn get(
    conn: &mut Conn,
    org: &OrgId,
    user: &UserId,
    for_update: bool,
) -> Result<Option<UserRow>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    Ok(sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL{lock}"
    )))
    .bind(user.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?)
}

/// The live user with this email, in any organization (login).
pub async fn find_by_email(conn: &mut Conn, email: &str) -> Result<Option<UserRow>, StoreError> {
    Ok(sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users WHERE email = $1 AND deleted_at IS NULL"
    )))
    .bind(email)
    .fetch_optional(conn)
    .await?)
}

pub async fn list(
    conn: &mut Conn,
    org: &OrgId,
    page: &PageQuery,
) -> Result<(Vec<User>, bool), StoreError> {
    let rows = sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM users WHERE org_id = $1 AND deleted_at IS NULL
         AND ($2::text IS NULL OR id > $2) ORDER BY id LIMIT $3"
    )))
    .bind(org.as_str())
    .bind(page.after.as_deref())
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    let (rows, more) = split_page(rows, page.limit);
    Ok((
        rows.iter().map(UserRow::to_api).collect::<Result<_, _>>()?,
        more,
    ))
}

/// Writes name, role and password hash of a row read with `get(.., true)` and bumps its version.
pub async fn save(conn: &mut Conn, row: &UserRow) -> Result<User, StoreError> {
    sqlx::query_as::<_, UserRow>(sqlx::AssertSqlSafe(format!(
        "UPDATE users SET name = $3, role = $4, password_hash = $5, version = version + 1, updated_at = now()
         WHERE id = $1 AND org_id = $2 RETURNING {COLUMNS}"
    )))
    .bind(&row.id)
    .bind(&row.org_id)
    .bind(&row.name)
    .bind(&row.role)
    .bind(&row.password_hash)
    .fetch_one(conn)
    .await?
    .to_api()
}

/// Marks the user deleted; its API keys are revoked in the same statement batch by the caller.
pub async fn soft_delete(conn: &mut Conn, org: &OrgId, user: &UserId) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE users SET deleted_at = now(), version = version + 1
         WHERE id = $1 AND org_id = $2 AND deleted_at IS NULL",
    )
    .bind(user.as_str())
    .bind(org.as_str())
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

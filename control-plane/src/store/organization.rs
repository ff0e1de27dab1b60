//! `organizations`.

use chrono::{DateTime, Utc};
use sluice_api_types::{OrgId, Organization};

use super::{Conn, PageQuery, StoreError, id, split_page};

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    name: String,
    created_at: DateTime<Utc>,
}

impl Row {
    fn into_api(self) -> Result<Organization, StoreError> {
        Ok(Organization {
            id: id(&self.id)?,
            name: self.name,
            created_at: self.created_at,
        })
    }
}

pub async fn insert(conn: &mut Conn, org: &OrgId, name: &str) -> Result<Organization, StoreError> {
    sqlx::query_as::<_, Row>(
        "INSERT INTO organizations (id, name) VALUES ($1, $2) RETURNING id, name, created_at",
    )
    .bind(org.as_str())
    .bind(name)
    .fetch_one(conn)
    .await?
    .into_api()
}

pub async fn get(conn: &mut Conn, org: &OrgId) -> Result<Option<Organization>, StoreError> {
    sqlx::query_as::<_, Row>("SELECT id, name, created_at FROM organizations WHERE id = $1")
        .bind(org.as_str())
        .fetch_optional(conn)
        .await?
        .map(Row::into_api)
        .transpose()
}

/// The oldest organization with this name (names are not unique; the bootstrap command uses it).
pub async fn find_by_name(conn: &mut Conn, name: &str) -> Result<Option<Organization>, StoreError> {
    sqlx::query_as::<_, Row>(
        "SELECT id, name, created_at FROM organizations WHERE name = $1 ORDER BY id LIMIT 1",
    )
    .bind(name)
    .fetch_optional(conn)
    .await?
    .map(Row::into_api)
    .transpose()
}

pub async fn list(
    conn: &mut Conn,
    page: &PageQuery,
) -> Result<(Vec<Organization>, bool), StoreError> {
    let rows = sqlx::query_as::<_, Row>(
        "SELECT id, name, created_at FROM organizations
         WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
    )
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

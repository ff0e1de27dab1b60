//! `compute_pools` (spec, written by the API) and `compute_pool_status` (observed, by the reconciler).

use chrono::{DateTime, Utc};
use sluice_api_types::{Admission, ComputePool, ComputePoolStatus, OrgId, PoolId};

use super::{Conn, PageQuery, StoreError, id, split_page};

const SELECT: &str = "SELECT p.id, p.name, p.region, p.max_kpu, p.admission, p.version, p.created_at, \
     p.updated_at, COALESCE(s.current_kpu_milli, 0) AS current_kpu_milli, \
     COALESCE(s.pending_applications, 0) AS pending_applications \
     FROM compute_pools p LEFT JOIN compute_pool_status s ON s.pool_id = p.id";

#[derive(sqlx::FromRow, Clone)]
pub struct PoolRow {
    pub id: String,
    pub name: String,
    pub region: String,
    pub max_kpu: i32,
    pub admission: String,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub current_kpu_milli: i64,
    pub pending_applications: i32,
}

pub fn admission_str(a: Admission) -> &'static str {
    match a {
        Admission::Reject => "reject",
        Admission::Queue => "queue",
    }
}

impl PoolRow {
    pub fn to_api(&self) -> Result<ComputePool, StoreError> {
        Ok(ComputePool {
            id: id(&self.id)?,
            name: self.name.clone(),
            region: self.region.clone(),
            max_kpu: u32::try_from(self.max_kpu).map_err(|_| {
                StoreError::Corrupt(format!("pool {} max_kpu {}", self.id, self.max_kpu))
            })?,
            admission: match self.admission.as_str() {
                "reject" => Admission::Reject,
                "queue" => Admission::Queue,
                other => return Err(StoreError::Corrupt(format!("pool admission '{other}'"))),
            },
            status: ComputePoolStatus {
                current_kpu_milli: self.current_kpu_milli.max(0) as u64,
                pending_applications: self.pending_applications.max(0) as u32,
            },
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub async fn insert(
    conn: &mut Conn,
    org: &OrgId,
    pool: &PoolId,
    name: &str,
    region: &str,
    max_kpu: u32,
    admission: Admission,
) -> Result<ComputePool, StoreError> {
    sqlx::query(
        "INSERT INTO compute_pools (id, org_id, name, region, max_kpu, admission)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(pool.as_str())
    .bind(org.as_str())
    .bind(name)
    .bind(region)
    .bind(max_kpu as i32)
    .bind(admission_str(admission))
    .execute(&mut *conn)
    .await?;
    sqlx::query("INSERT INTO compute_pool_status (pool_id, org_id) VALUES ($1, $2)")
        .bind(pool.as_str())
        .bind(org.as_str())
        .execute(&mut *conn)
        .await?;
    get(conn, org, pool, false)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("pool {pool} vanished after insert")))?
        .to_api()
}

/// `for_update` locks the pool row: admission, capacity changes and deletion
/// serialise on it.
pub async fn get(
    conn: &mut Conn,
    org: &OrgId,
    pool: &PoolId,
    for_update: bool,
) -> Result<Option<PoolRow>, StoreError> {
    let lock = if for_update { " FOR UPDATE OF p" } else { "" };
    Ok(sqlx::query_as::<_, PoolRow>(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE p.id = $1 AND p.org_id = $2{lock}"
    )))
    .bind(pool.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?)
}

/// `only`, when given, restricts the list to one pool (a pool-scoped API key).
pub async fn list(
    conn: &mut Conn,
    org: &OrgId,
    only: Option<&PoolId>,
    page: &PageQuery,
) -> Result<(Vec<ComputePool>, bool), StoreError> {
    let rows = sqlx::query_as::<_, PoolRow>(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE p.org_id = $1 AND ($2::text IS NULL OR p.id = $2)
         AND ($3::text IS NULL OR p.id > $3) ORDER BY p.id LIMIT $4"
    )))
    .bind(org.as_str())
    .bind(only.map(PoolId::as_str))
    .bind(page.after.as_deref())
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    let (rows, more) = split_page(rows, page.limit);
    Ok((
        rows.iter().map(PoolRow::to_api).collect::<Result<_, _>>()?,
        more,
    ))
}

/// Writes the mutable fields of a row read with `get(.., true)` and bumps its version.
pub async fn save(conn: &mut Conn, org: &OrgId, row: &PoolRow) -> Result<ComputePool, StoreError> {
    sqlx::query(
        "UPDATE compute_pools SET name = $3, max_kpu = $4, admission = $5,
                version = version + 1, updated_at = now()
         WHERE id = $1 AND org_id = $2",
    )
    .bind(&row.id)
    .bind(org.as_str())
    .bind(&row.name)
    .bind(row.max_kpu)
    .bind(&row.admission)
    .execute(&mut *conn)
    .await?;
    let pool: PoolId = id(&row.id)?;
    get(conn, org, &pool, false)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("pool {pool} vanished during update")))?
        .to_api()
}

pub async fn count_applications(
    conn: &mut Conn,
    org: &OrgId,
    pool: &PoolId,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM applications WHERE pool_id = $1 AND org_id = $2")
            .bind(pool.as_str())
            .bind(org.as_str())
            .fetch_one(conn)
            .await?,
    )
}

pub async fn delete(conn: &mut Conn, org: &OrgId, pool: &PoolId) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM compute_pools WHERE id = $1 AND org_id = $2")
        .bind(pool.as_str())
        .bind(org.as_str())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

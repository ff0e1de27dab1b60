//! `applications` (current spec), `application_versions` (immutable history) and
//! `application_status` (observed; read here, written by the reconciler).

use chrono::{DateTime, Utc};
use sluice_api_types::{
    AppId, Application, ApplicationSpec, ApplicationStatus, ApplicationVersion, LastCheckpoint,
    OrgId, Phase, PoolId,
};

use super::{Conn, PageQuery, StoreError, id, split_page};

const SELECT: &str = "SELECT a.id, a.pool_id, a.spec, a.version, a.created_at, a.updated_at, \
     s.phase, s.reason, s.message, s.observed_version, s.current_kpu_milli, s.run_id, s.generation, \
     s.last_checkpoint, s.started_at, s.queue_position \
     FROM applications a LEFT JOIN application_status s ON s.application_id = a.id";

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    spec: serde_json::Value,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    phase: Option<String>,
    reason: Option<String>,
    message: Option<String>,
    observed_version: Option<i64>,
    current_kpu_milli: Option<i64>,
    run_id: Option<String>,
    generation: Option<i64>,
    last_checkpoint: Option<serde_json::Value>,
    started_at: Option<DateTime<Utc>>,
    queue_position: Option<i32>,
}

fn parse_spec(app: &str, v: serde_json::Value) -> Result<ApplicationSpec, StoreError> {
    serde_json::from_value(v).map_err(|e| StoreError::Corrupt(format!("spec of {app}: {e}")))
}

impl Row {
    fn into_api(self) -> Result<Application, StoreError> {
        let status = match self.phase {
            None => ApplicationStatus::initial(),
            Some(phase) => ApplicationStatus {
                phase: serde_json::from_value::<Phase>(serde_json::Value::String(phase.clone()))
                    .map_err(|_| StoreError::Corrupt(format!("phase '{phase}' of {}", self.id)))?,
                reason: self.reason,
                message: self.message,
                observed_version: self.observed_version,
                current_kpu_milli: self.current_kpu_milli.unwrap_or(0).max(0) as u64,
                run_id: self.run_id,
                generation: self.generation.unwrap_or(0),
                last_checkpoint: self
                    .last_checkpoint
                    .map(serde_json::from_value::<LastCheckpoint>)
                    .transpose()
                    .map_err(|e| {
                        StoreError::Corrupt(format!("last_checkpoint of {}: {e}", self.id))
                    })?,
                started_at: self.started_at,
                queue_position: self.queue_position.map(|p| p.max(0) as u32),
            },
        };
        Ok(Application {
            spec: parse_spec(&self.id, self.spec)?,
            id: id(&self.id)?,
            version: self.version,
            status,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

fn spec_json(spec: &ApplicationSpec) -> Result<serde_json::Value, StoreError> {
    serde_json::to_value(spec).map_err(|e| StoreError::Corrupt(format!("serialise spec: {e}")))
}

/// Inserts the application with version 1 and its first immutable version.
pub async fn insert(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    spec: &ApplicationSpec,
    created_by: &str,
) -> Result<Application, StoreError> {
    let json = spec_json(spec)?;
    sqlx::query(
        "INSERT INTO applications (id, org_id, pool_id, name, spec, version) VALUES ($1, $2, $3, $4, $5, 1)",
    )
    .bind(app.as_str())
    .bind(org.as_str())
    .bind(spec.compute_pool_id.as_str())
    .bind(&spec.name)
    .bind(&json)
    .execute(&mut *conn)
    .await?;
    insert_version(conn, org, app, 1, &json, created_by).await?;
    get(conn, org, app, false)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("application {app} vanished after insert")))
}

async fn insert_version(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    version: i64,
    spec: &serde_json::Value,
    created_by: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO application_versions (application_id, version, org_id, spec, created_by)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(app.as_str())
    .bind(version)
    .bind(org.as_str())
    .bind(spec)
    .bind(created_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// `for_update` locks the application row, so version checks and the new
/// version number are decided by one writer at a time.
pub async fn get(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    for_update: bool,
) -> Result<Option<Application>, StoreError> {
    let lock = if for_update { " FOR UPDATE OF a" } else { "" };
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE a.id = $1 AND a.org_id = $2{lock}"
    )))
    .bind(app.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?
    .map(Row::into_api)
    .transpose()
}

/// `pool`, when given, restricts the list to one pool.
pub async fn list(
    conn: &mut Conn,
    org: &OrgId,
    pool: Option<&PoolId>,
    page: &PageQuery,
) -> Result<(Vec<Application>, bool), StoreError> {
    let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "{SELECT} WHERE a.org_id = $1 AND ($2::text IS NULL OR a.pool_id = $2)
         AND ($3::text IS NULL OR a.id > $3) ORDER BY a.id LIMIT $4"
    )))
    .bind(org.as_str())
    .bind(pool.map(PoolId::as_str))
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

/// Makes `spec` the current spec as version `new_version` (the caller holds the row lock
/// and checked that `new_version` is the current version + 1).
pub async fn save_version(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    new_version: i64,
    spec: &ApplicationSpec,
    created_by: &str,
) -> Result<Application, StoreError> {
    let json = spec_json(spec)?;
    sqlx::query(
        "UPDATE applications SET spec = $3, version = $4, updated_at = now()
         WHERE id = $1 AND org_id = $2 AND version = $4 - 1",
    )
    .bind(app.as_str())
    .bind(org.as_str())
    .bind(&json)
    .bind(new_version)
    .execute(&mut *conn)
    .await?;
    insert_version(conn, org, app, new_version, &json, created_by).await?;
    get(conn, org, app, false)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("application {app} vanished during update")))
}

pub async fn delete(conn: &mut Conn, org: &OrgId, app: &AppId) -> Result<bool, StoreError> {
    let r = sqlx::query("DELETE FROM applications WHERE id = $1 AND org_id = $2")
        .bind(app.as_str())
        .bind(org.as_str())
        .execute(conn)
        .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(sqlx::FromRow)]
struct VersionRow {
    application_id: String,
    version: i64,
    spec: serde_json::Value,
    created_by: String,
    created_at: DateTime<Utc>,
}

impl VersionRow {
    fn into_api(self) -> Result<ApplicationVersion, StoreError> {
        Ok(ApplicationVersion {
            spec: parse_spec(&self.application_id, self.spec)?,
            application_id: id(&self.application_id)?,
            version: self.version,
            created_by: self.created_by,
            created_at: self.created_at,
            diff: Vec::new(),
        })
    }
}

/// Versions in ascending order after `after` (a version number), at most `limit`,
/// plus the version just before the first one so the caller can diff it.
pub async fn versions(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    after: i64,
    limit: i64,
) -> Result<(Option<ApplicationVersion>, Vec<ApplicationVersion>, bool), StoreError> {
    let rows = sqlx::query_as::<_, VersionRow>(
        "SELECT application_id, version, spec, created_by, created_at FROM application_versions
         WHERE application_id = $1 AND org_id = $2 AND version >= $3 ORDER BY version LIMIT $4",
    )
    .bind(app.as_str())
    .bind(org.as_str())
    .bind(after.max(1))
    .bind(limit + 2)
    .fetch_all(conn)
    .await?;
    let mut all: Vec<ApplicationVersion> = rows
        .into_iter()
        .map(VersionRow::into_api)
        .collect::<Result<_, _>>()?;
    let prev = if after >= 1 && all.first().is_some_and(|v| v.version == after) {
        Some(all.remove(0))
    } else {
        None
    };
    let (page, more) = split_page(all, limit);
    Ok((prev, page, more))
}

pub async fn version(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    version: i64,
) -> Result<Option<ApplicationVersion>, StoreError> {
    sqlx::query_as::<_, VersionRow>(
        "SELECT application_id, version, spec, created_by, created_at FROM application_versions
         WHERE application_id = $1 AND org_id = $2 AND version = $3",
    )
    .bind(app.as_str())
    .bind(org.as_str())
    .bind(version)
    .fetch_optional(conn)
    .await?
    .map(VersionRow::into_api)
    .transpose()
}

/// Marks the application for deletion (the reconciler removes cluster, storage, then the row).
pub async fn request_delete(conn: &mut Conn, org: &OrgId, app: &AppId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE applications SET delete_requested_at = COALESCE(delete_requested_at, now())
         WHERE id = $1 AND org_id = $2",
    )
    .bind(app.as_str())
    .bind(org.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn delete_requested(conn: &mut Conn, app: &AppId) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar(
            "SELECT delete_requested_at IS NOT NULL FROM applications WHERE id = $1",
        )
        .bind(app.as_str())
        .fetch_optional(conn)
        .await?
        .unwrap_or(false),
    )
}

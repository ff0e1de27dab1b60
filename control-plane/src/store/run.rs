//! `runs` (one provisioned cluster lifetime each) and the billing ledger `usage_spans`.
//!
//! Written by the reconciler only. Span times are the provisioner's evidence (observed
//! process start and exit); opening and closing are idempotent so that a leader that died
//! half-way can redo them without a second or a duplicate span.

use chrono::{DateTime, Utc};

use super::{Conn, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub pool_id: String,
    pub region: String,
    pub generation: i64,
    pub application_version: i64,
    pub kpu_milli: i64,
    pub restore: String,
    pub created_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
}

const COLUMNS: &str = "id, org_id, application_id, pool_id, region, generation, application_version, \
     kpu_milli, restore, created_at, ended_at, end_reason";

pub struct NewRun<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub application_id: &'a str,
    pub pool_id: &'a str,
    pub region: &'a str,
    pub generation: i64,
    pub application_version: i64,
    pub kpu_milli: i64,
    pub restore: &'a str,
}

pub async fn insert(conn: &mut Conn, r: &NewRun<'_>) -> Result<Run, StoreError> {
    Ok(sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO runs (id, org_id, application_id, pool_id, region, generation,
                           application_version, kpu_milli, restore)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLUMNS}"
    )))
    .bind(r.id)
    .bind(r.org_id)
    .bind(r.application_id)
    .bind(r.pool_id)
    .bind(r.region)
    .bind(r.generation)
    .bind(r.application_version)
    .bind(r.kpu_milli)
    .bind(r.restore)
    .fetch_one(conn)
    .await?)
}

/// The application's open run (at most one by construction: a new run is only made
/// after the previous one ended).
pub async fn open_run(conn: &mut Conn, app: &str) -> Result<Option<Run>, StoreError> {
    Ok(sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM runs WHERE application_id = $1 AND ended_at IS NULL
         ORDER BY generation DESC LIMIT 1"
    )))
    .bind(app)
    .fetch_optional(conn)
    .await?)
}

pub async fn get(conn: &mut Conn, id: &str) -> Result<Option<Run>, StoreError> {
    Ok(sqlx::query_as::<_, Run>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM runs WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// The highest generation the application ever had (0 when none).
pub async fn max_generation(conn: &mut Conn, app: &str) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(max(generation), 0)::bigint FROM runs WHERE application_id = $1",
    )
    .bind(app)
    .fetch_one(conn)
    .await?)
}

/// Applications with an open run (including runs of applications already deleted).
pub async fn apps_with_open_runs(conn: &mut Conn) -> Result<Vec<(String, String)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT application_id, org_id FROM runs WHERE ended_at IS NULL")
            .fetch_all(conn)
            .await?,
    )
}

/// When the application's latest run ended.
pub async fn last_ended_at(
    conn: &mut Conn,
    app: &str,
) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT max(ended_at) FROM runs WHERE application_id = $1")
            .bind(app)
            .fetch_one(conn)
            .await?,
    )
}

pub async fn end(
    conn: &mut Conn,
    id: &str,
    ended_at: DateTime<Utc>,
    reason: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE runs SET ended_at = $2, end_reason = $3 WHERE id = $1 AND ended_at IS NULL",
    )
    .bind(id)
    .bind(ended_at)
    .bind(reason)
    .execute(conn)
    .await?;
    Ok(())
}

/// Opens the run's span at the observed start (idempotent: the same start is the same span).
pub async fn open_span(
    conn: &mut Conn,
    run: &Run,
    started_at: DateTime<Utc>,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "INSERT INTO usage_spans (org_id, run_id, application_id, pool_id, region, kpu_milli, started_at)
         SELECT $1, $2, $3, $4, $5, $6, $7
         WHERE NOT EXISTS (SELECT 1 FROM usage_spans WHERE run_id = $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(&run.org_id)
    .bind(&run.id)
    .bind(&run.application_id)
    .bind(&run.pool_id)
    .bind(&run.region)
    .bind(run.kpu_milli)
    .bind(started_at)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Closes the run's open span at the observed exit.
pub async fn close_span(
    conn: &mut Conn,
    run_id: &str,
    ended_at: DateTime<Utc>,
    closed_by: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE usage_spans SET ended_at = GREATEST($2, started_at), closed_by = $3
         WHERE run_id = $1 AND ended_at IS NULL",
    )
    .bind(run_id)
    .bind(ended_at)
    .bind(closed_by)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Span {
    pub run_id: String,
    pub kpu_milli: i64,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub closed_by: Option<String>,
}

pub async fn spans_of_app(conn: &mut Conn, app: &str) -> Result<Vec<Span>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT run_id, kpu_milli, started_at, ended_at, closed_by FROM usage_spans
         WHERE application_id = $1 ORDER BY started_at",
    )
    .bind(app)
    .fetch_all(conn)
    .await?)
}

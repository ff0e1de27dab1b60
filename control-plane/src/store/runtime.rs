//! `application_runtime`: admission reservations, the FIFO queue of a pool, and the
//! reconciler's bookkeeping (job id, the stage of a multi-step action, the last savepoint).
//!
//! Admission functions expect the caller to hold the pool's row lock
//! ([`super::compute_pool::get`] with `for_update`): that lock is what makes the cap hold
//! under concurrency (DESIGN §6), never a count taken before an insert.

use sluice_api_types::{AppId, OrgId, PoolId};

use super::{Conn, StoreError};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Runtime {
    pub application_id: String,
    pub org_id: String,
    pub pool_id: String,
    pub job_id: String,
    pub reserved_kpu_milli: i64,
    pub queued_seq: Option<i64>,
    pub queued_kpu_milli: Option<i64>,
    pub stage: Option<serde_json::Value>,
    pub last_savepoint_uri: Option<String>,
    pub last_savepoint_generation: Option<i64>,
    pub failures: i32,
    pub stop_force: bool,
    pub next_restore: Option<String>,
}

const COLUMNS: &str = "application_id, org_id, pool_id, job_id, reserved_kpu_milli, queued_seq, \
     queued_kpu_milli, stage, last_savepoint_uri, last_savepoint_generation, failures, stop_force, next_restore";

/// A new job id: 32 lowercase hex digits.
pub fn new_job_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// The application's runtime row, created on first use.
pub async fn ensure(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    pool: &PoolId,
) -> Result<Runtime, StoreError> {
    sqlx::query(
        "INSERT INTO application_runtime (application_id, org_id, pool_id, job_id)
         VALUES ($1, $2, $3, $4) ON CONFLICT (application_id) DO NOTHING",
    )
    .bind(app.as_str())
    .bind(org.as_str())
    .bind(pool.as_str())
    .bind(new_job_id())
    .execute(&mut *conn)
    .await?;
    get(conn, app)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("runtime of {app} vanished after insert")))
}

pub async fn get(conn: &mut Conn, app: &AppId) -> Result<Option<Runtime>, StoreError> {
    Ok(sqlx::query_as::<_, Runtime>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM application_runtime WHERE application_id = $1"
    )))
    .bind(app.as_str())
    .fetch_optional(conn)
    .await?)
}

/// KPUs reserved in the pool by every application but `except`.
pub async fn reserved_in_pool(
    conn: &mut Conn,
    pool: &PoolId,
    except: Option<&AppId>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COALESCE(sum(reserved_kpu_milli), 0)::bigint FROM application_runtime
         WHERE pool_id = $1 AND ($2::text IS NULL OR application_id <> $2)",
    )
    .bind(pool.as_str())
    .bind(except.map(AppId::as_str))
    .fetch_one(conn)
    .await?)
}

/// Whether another application of the pool waits in its queue.
pub async fn others_queued(
    conn: &mut Conn,
    pool: &PoolId,
    app: &AppId,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM application_runtime
         WHERE pool_id = $1 AND application_id <> $2 AND queued_seq IS NOT NULL)",
    )
    .bind(pool.as_str())
    .bind(app.as_str())
    .fetch_one(conn)
    .await?)
}

/// Sets the reservation and leaves the queue.
pub async fn reserve(conn: &mut Conn, app: &AppId, kpu_milli: i64) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE application_runtime SET reserved_kpu_milli = $2, queued_seq = NULL,
                queued_kpu_milli = NULL, updated_at = now()
         WHERE application_id = $1",
    )
    .bind(app.as_str())
    .bind(kpu_milli)
    .execute(conn)
    .await?;
    Ok(())
}

/// Joins the pool's queue (keeping an earlier place) for `kpu_milli`; returns the sequence.
pub async fn enqueue(conn: &mut Conn, app: &AppId, kpu_milli: i64) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "UPDATE application_runtime
         SET queued_seq = COALESCE(queued_seq, nextval('admission_queue_seq')),
             queued_kpu_milli = $2, updated_at = now()
         WHERE application_id = $1 RETURNING queued_seq",
    )
    .bind(app.as_str())
    .bind(kpu_milli)
    .fetch_one(conn)
    .await?)
}

pub async fn dequeue(conn: &mut Conn, app: &AppId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE application_runtime SET queued_seq = NULL, queued_kpu_milli = NULL, updated_at = now()
         WHERE application_id = $1",
    )
    .bind(app.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

/// 1-based FIFO position in the pool's queue.
pub async fn queue_position(conn: &mut Conn, pool: &PoolId, seq: i64) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM application_runtime WHERE pool_id = $1 AND queued_seq <= $2",
    )
    .bind(pool.as_str())
    .bind(seq)
    .fetch_one(conn)
    .await?)
}

/// The queue of a pool, oldest first: (application, org, KPUs asked).
pub async fn queue(
    conn: &mut Conn,
    pool: &PoolId,
) -> Result<Vec<(String, String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT application_id, org_id, COALESCE(queued_kpu_milli, 0) FROM application_runtime
         WHERE pool_id = $1 AND queued_seq IS NOT NULL ORDER BY queued_seq",
    )
    .bind(pool.as_str())
    .fetch_all(conn)
    .await?)
}

/// Writes the pool's observed usage: the sum of reservations and the queue length.
pub async fn sync_pool_status(conn: &mut Conn, pool: &PoolId) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE compute_pool_status SET
            current_kpu_milli = (SELECT COALESCE(sum(reserved_kpu_milli), 0) FROM application_runtime WHERE pool_id = $1),
            pending_applications = (SELECT count(*) FROM application_runtime WHERE pool_id = $1 AND queued_seq IS NOT NULL),
            updated_at = now()
         WHERE pool_id = $1",
    )
    .bind(pool.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_stage(
    conn: &mut Conn,
    app: &AppId,
    stage: Option<&serde_json::Value>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE application_runtime SET stage = $2, updated_at = now() WHERE application_id = $1",
    )
    .bind(app.as_str())
    .bind(stage)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_last_savepoint(
    conn: &mut Conn,
    app: &AppId,
    uri: &str,
    generation: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE application_runtime SET last_savepoint_uri = $2, last_savepoint_generation = $3,
                updated_at = now() WHERE application_id = $1",
    )
    .bind(app.as_str())
    .bind(uri)
    .bind(generation)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_failures(conn: &mut Conn, app: &AppId, failures: i32) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE application_runtime SET failures = $2, updated_at = now() WHERE application_id = $1",
    )
    .bind(app.as_str())
    .bind(failures)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_stop_force(conn: &mut Conn, app: &AppId, force: bool) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE application_runtime SET stop_force = $2, updated_at = now() WHERE application_id = $1",
    )
    .bind(app.as_str())
    .bind(force)
    .execute(conn)
    .await?;
    Ok(())
}

pub async fn set_next_restore(
    conn: &mut Conn,
    app: &AppId,
    restore: Option<&str>,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE application_runtime SET next_restore = $2, updated_at = now() WHERE application_id = $1",
    )
    .bind(app.as_str())
    .bind(restore)
    .execute(conn)
    .await?;
    Ok(())
}

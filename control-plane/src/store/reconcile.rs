//! The reconciler's reads across organizations (as the tables' owner: the reconciler is
//! the system, not a tenant) and its writes to operations.

use sluice_api_types::Problem;

use super::{Conn, StoreError};

/// (application, organization) of every application that may need work: being deleted,
/// meant to run, not STOPPED, queued, with an open run or an operation in progress; plus
/// open runs of applications already gone. Stopped applications with nothing pending are
/// not read, so a pass stays cheap with many of them.
pub async fn candidates(conn: &mut Conn) -> Result<Vec<(String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT a.id, a.org_id FROM applications a
         LEFT JOIN application_status s ON s.application_id = a.id
         WHERE a.delete_requested_at IS NOT NULL
            OR a.spec->>'desired_state' = 'running'
            OR COALESCE(s.phase, 'STOPPED') <> 'STOPPED'
            OR EXISTS (SELECT 1 FROM operations o WHERE o.application_id = a.id AND o.state = 'IN_PROGRESS')
            OR EXISTS (SELECT 1 FROM application_runtime r WHERE r.application_id = a.id
                       AND (r.reserved_kpu_milli > 0 OR r.queued_seq IS NOT NULL))
         UNION
         SELECT r.application_id, r.org_id FROM runs r WHERE r.ended_at IS NULL
         ORDER BY 1",
    )
    .fetch_all(conn)
    .await?)
}

/// Moves in-progress operations of `kinds` with `target_version <= up_to` to `state`.
pub async fn settle_operations(
    conn: &mut Conn,
    app: &str,
    kinds: &[&str],
    up_to: i64,
    state: &str,
    error: Option<&Problem>,
) -> Result<u64, StoreError> {
    let error = error
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let kinds: Vec<String> = kinds.iter().map(|k| (*k).to_owned()).collect();
    let r = sqlx::query(
        "UPDATE operations SET state = $4, error = $5, updated_at = now()
         WHERE application_id = $1 AND state = 'IN_PROGRESS' AND kind = ANY($2)
           AND target_version <= $3",
    )
    .bind(app)
    .bind(&kinds)
    .bind(up_to)
    .bind(state)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

/// The kind of the newest in-progress operation (what the current transition is for).
pub async fn current_operation_kind(
    conn: &mut Conn,
    app: &str,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT kind FROM operations WHERE application_id = $1 AND state = 'IN_PROGRESS'
         ORDER BY id DESC LIMIT 1",
    )
    .bind(app)
    .fetch_optional(conn)
    .await?)
}

/// Removes the application's row (versions, status and runtime cascade); runs, spans,
/// events and operations stay.
pub async fn delete_application(conn: &mut Conn, app: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM applications WHERE id = $1")
        .bind(app)
        .execute(conn)
        .await?;
    Ok(())
}

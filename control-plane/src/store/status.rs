//! Writes of `application_status` (the reconciler's only): a row is written only when it
//! differs from what is stored, so a status write never triggers another pass by itself.

use sluice_api_types::{ApplicationStatus, Phase};

use super::event::phase_str;
use super::{Conn, StoreError};

/// Upserts the status; returns whether anything changed.
pub async fn write(
    conn: &mut Conn,
    org: &str,
    app: &str,
    s: &ApplicationStatus,
) -> Result<bool, StoreError> {
    let last_checkpoint = s
        .last_checkpoint
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let r = sqlx::query(
        "INSERT INTO application_status AS s (application_id, org_id, phase, reason, message,
             observed_version, current_kpu_milli, run_id, generation, last_checkpoint, started_at,
             queue_position)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
         ON CONFLICT (application_id) DO UPDATE SET phase = EXCLUDED.phase, reason = EXCLUDED.reason,
             message = EXCLUDED.message, observed_version = EXCLUDED.observed_version,
             current_kpu_milli = EXCLUDED.current_kpu_milli, run_id = EXCLUDED.run_id,
             generation = EXCLUDED.generation, last_checkpoint = EXCLUDED.last_checkpoint,
             started_at = EXCLUDED.started_at, queue_position = EXCLUDED.queue_position,
             leader_epoch = EXCLUDED.leader_epoch, updated_at = now()
         WHERE (s.phase, s.reason, s.message, s.observed_version, s.current_kpu_milli, s.run_id,
                s.generation, s.last_checkpoint, s.started_at, s.queue_position)
               IS DISTINCT FROM
               (EXCLUDED.phase, EXCLUDED.reason, EXCLUDED.message, EXCLUDED.observed_version,
                EXCLUDED.current_kpu_milli, EXCLUDED.run_id, EXCLUDED.generation,
                EXCLUDED.last_checkpoint, EXCLUDED.started_at, EXCLUDED.queue_position)",
    )
    .bind(app)
    .bind(org)
    .bind(phase_str(s.phase))
    .bind(&s.reason)
    .bind(&s.message)
    .bind(s.observed_version)
    .bind(i64::try_from(s.current_kpu_milli).unwrap_or(i64::MAX))
    .bind(&s.run_id)
    .bind(s.generation)
    .bind(last_checkpoint)
    .bind(s.started_at)
    .bind(s.queue_position.map(|p| p as i32))
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub fn is_terminal_for_ops(p: Phase) -> bool {
    matches!(p, Phase::Running | Phase::Stopped | Phase::Failed)
}

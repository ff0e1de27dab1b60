//! `savepoint_schedules`: one per application (the API's PUT/GET/DELETE), and the
//! scheduler's claim of due schedules.

use chrono::{DateTime, Utc};
use sluice_api_types::{AppId, OrgId, SavepointRetention, SavepointSchedule};

use super::{Conn, StoreError, id};

const COLUMNS: &str = "application_id, cron, timezone, interval_s, max_count, max_age_s, \
     dispose_on_delete, enabled, next_run_at, last_run_at, last_outcome, version, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct Row {
    application_id: String,
    cron: Option<String>,
    timezone: Option<String>,
    interval_s: Option<i64>,
    max_count: Option<i32>,
    max_age_s: Option<i64>,
    dispose_on_delete: bool,
    enabled: bool,
    next_run_at: Option<DateTime<Utc>>,
    last_run_at: Option<DateTime<Utc>>,
    last_outcome: Option<String>,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_api(self) -> Result<SavepointSchedule, StoreError> {
        Ok(SavepointSchedule {
            application_id: id(&self.application_id)?,
            cron: self.cron,
            timezone: self.timezone,
            interval_s: self.interval_s.map(|v| v.max(0) as u64),
            retention: SavepointRetention {
                max_count: self.max_count.map(|v| v.max(0) as u32),
                max_age_s: self.max_age_s.map(|v| v.max(0) as u64),
                dispose_on_delete: self.dispose_on_delete,
            },
            enabled: self.enabled,
            next_run_at: self.next_run_at,
            last_run_at: self.last_run_at,
            last_outcome: self.last_outcome,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub async fn get(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    for_update: bool,
) -> Result<Option<SavepointSchedule>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM savepoint_schedules WHERE application_id = $1 AND org_id = $2{lock}"
    )))
    .bind(app.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?
    .map(Row::into_api)
    .transpose()
}

/// What a PUT stores (validated by the service).
pub struct Put<'a> {
    pub cron: Option<&'a str>,
    pub timezone: Option<&'a str>,
    pub interval_s: Option<u64>,
    pub retention: &'a SavepointRetention,
    pub enabled: bool,
    pub next_run_at: Option<DateTime<Utc>>,
}

/// Creates or replaces the schedule (the version goes up by one on a replace).
pub async fn upsert(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    p: &Put<'_>,
) -> Result<SavepointSchedule, StoreError> {
    let to_i64 = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO savepoint_schedules (application_id, org_id, cron, timezone, interval_s,
                max_count, max_age_s, dispose_on_delete, enabled, next_run_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
         ON CONFLICT (application_id) DO UPDATE SET cron = $3, timezone = $4, interval_s = $5,
                max_count = $6, max_age_s = $7, dispose_on_delete = $8, enabled = $9,
                next_run_at = $10, version = savepoint_schedules.version + 1, updated_at = now()
         RETURNING {COLUMNS}"
    )))
    .bind(app.as_str())
    .bind(org.as_str())
    .bind(p.cron)
    .bind(p.timezone)
    .bind(p.interval_s.map(to_i64))
    .bind(
        p.retention
            .max_count
            .map(|v| i32::try_from(v).unwrap_or(i32::MAX)),
    )
    .bind(p.retention.max_age_s.map(to_i64))
    .bind(p.retention.dispose_on_delete)
    .bind(p.enabled)
    .bind(p.next_run_at)
    .fetch_one(conn)
    .await?
    .into_api()
}

pub async fn delete(conn: &mut Conn, org: &OrgId, app: &AppId) -> Result<bool, StoreError> {
    let r =
        sqlx::query("DELETE FROM savepoint_schedules WHERE application_id = $1 AND org_id = $2")
            .bind(app.as_str())
            .bind(org.as_str())
            .execute(conn)
            .await?;
    Ok(r.rows_affected() == 1)
}

/// A due schedule, locked by the scheduler's transaction.
#[derive(sqlx::FromRow, Debug)]
pub struct Due {
    pub application_id: String,
    pub org_id: String,
    pub cron: Option<String>,
    pub timezone: Option<String>,
    pub interval_s: Option<i64>,
    pub next_run_at: DateTime<Utc>,
    /// None once the application is deleted.
    pub desired_state: Option<String>,
    pub app_version: Option<i64>,
    /// The database's clock: every replica computes due times from the same one.
    pub db_now: DateTime<Utc>,
}

/// Up to `limit` enabled schedules whose time has come, locked; rows another
/// scheduler holds are skipped, so each due time is handled by one scheduler.
pub async fn claim_due(conn: &mut Conn, limit: i64) -> Result<Vec<Due>, StoreError> {
    Ok(sqlx::query_as::<_, Due>(
        "SELECT s.application_id, s.org_id, s.cron, s.timezone, s.interval_s, s.next_run_at,
                a.spec->>'desired_state' AS desired_state, a.version AS app_version, now() AS db_now
         FROM savepoint_schedules s LEFT JOIN applications a ON a.id = s.application_id
         WHERE s.enabled AND s.next_run_at <= now()
         ORDER BY s.next_run_at LIMIT $1
         FOR UPDATE OF s SKIP LOCKED",
    )
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// What the scheduler decided for one due schedule.
pub struct Handled {
    pub application_id: String,
    pub org_id: String,
    pub due: DateTime<Utc>,
    pub next_run_at: Option<DateTime<Utc>>,
    pub outcome: String,
    /// Some: a savepoint to request for `due` (its id and the application version).
    pub savepoint: Option<(String, i64)>,
}

/// Records the scheduler's decisions and inserts the savepoints, in the claiming
/// transaction. Returns how many savepoints were inserted; a due time that already had
/// its savepoint (which the claim makes impossible) is not inserted twice.
pub async fn record(conn: &mut Conn, handled: &[Handled]) -> Result<u64, StoreError> {
    if handled.is_empty() {
        return Ok(0);
    }
    let apps: Vec<&str> = handled.iter().map(|h| h.application_id.as_str()).collect();
    let next: Vec<Option<DateTime<Utc>>> = handled.iter().map(|h| h.next_run_at).collect();
    let due: Vec<DateTime<Utc>> = handled.iter().map(|h| h.due).collect();
    let outcome: Vec<&str> = handled.iter().map(|h| h.outcome.as_str()).collect();
    sqlx::query(
        "UPDATE savepoint_schedules s SET next_run_at = u.next, last_run_at = u.due, last_outcome = u.outcome
         FROM UNNEST($1::text[], $2::timestamptz[], $3::timestamptz[], $4::text[]) AS u(app, next, due, outcome)
         WHERE s.application_id = u.app",
    )
    .bind(&apps)
    .bind(&next)
    .bind(&due)
    .bind(&outcome)
    .execute(&mut *conn)
    .await?;
    let take: Vec<&Handled> = handled.iter().filter(|h| h.savepoint.is_some()).collect();
    if take.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = take
        .iter()
        .filter_map(|h| h.savepoint.as_ref().map(|s| s.0.as_str()))
        .collect();
    let orgs: Vec<&str> = take.iter().map(|h| h.org_id.as_str()).collect();
    let apps: Vec<&str> = take.iter().map(|h| h.application_id.as_str()).collect();
    let versions: Vec<i64> = take
        .iter()
        .filter_map(|h| h.savepoint.as_ref().map(|s| s.1))
        .collect();
    let due: Vec<DateTime<Utc>> = take.iter().map(|h| h.due).collect();
    let r = sqlx::query(
        "INSERT INTO savepoints (id, org_id, application_id, origin, status, application_version, scheduled_for)
         SELECT u.id, u.org, u.app, 'scheduled', 'PENDING', u.v, u.due
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[], $5::timestamptz[]) AS u(id, org, app, v, due)
         ON CONFLICT (application_id, scheduled_for) WHERE origin = 'scheduled' DO NOTHING",
    )
    .bind(&ids)
    .bind(&orgs)
    .bind(&apps)
    .bind(&versions)
    .bind(&due)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

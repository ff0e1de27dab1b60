//! `savepoints` and `savepoint_exports`: the API's reads and writes (tenant
//! connections) and the work queue of the savepoint workers (owner connections).
//!
//! The work queue: a worker claims rows whose `next_attempt_at` has passed with
//! `FOR UPDATE SKIP LOCKED` and moves `next_attempt_at` past a lease in the same
//! statement, so another replica takes the row only once that lease ran out (this
//! one died); a failed attempt sets it to the retry time.

use chrono::{DateTime, Utc};
use sluice_api_types::{
    AppId, OperationId, OrgId, Savepoint, SavepointError, SavepointId, SavepointOrigin,
    SavepointStatus, SavepointUsage,
};

use super::{Conn, PageQuery, StoreError, id, split_page};

const COLUMNS: &str = "id, org_id, application_id, origin, status, label, pinned, location, \
     source_uri, size_bytes, application_version, scheduled_for, error_code, error_message, \
     job_id, trigger_id, attempts, version, created_at, updated_at, completed_at, deleted_at";

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct Row {
    pub id: String,
    pub org_id: String,
    pub application_id: String,
    pub origin: String,
    pub status: String,
    pub label: Option<String>,
    pub pinned: bool,
    pub location: Option<String>,
    pub source_uri: Option<String>,
    pub size_bytes: Option<i64>,
    pub application_version: Option<i64>,
    pub scheduled_for: Option<DateTime<Utc>>,
    pub error_code: Option<String>,
    pub error_message: Option<String>,
    pub job_id: Option<String>,
    pub trigger_id: Option<String>,
    pub attempts: i32,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub deleted_at: Option<DateTime<Utc>>,
}

impl Row {
    pub fn status(&self) -> Result<SavepointStatus, StoreError> {
        SavepointStatus::parse(&self.status).ok_or_else(|| {
            StoreError::Corrupt(format!("status '{}' of savepoint {}", self.status, self.id))
        })
    }

    pub fn origin(&self) -> Result<SavepointOrigin, StoreError> {
        SavepointOrigin::parse(&self.origin).ok_or_else(|| {
            StoreError::Corrupt(format!("origin '{}' of savepoint {}", self.origin, self.id))
        })
    }

    pub fn into_api(self) -> Result<Savepoint, StoreError> {
        Ok(Savepoint {
            status: self.status()?,
            origin: self.origin()?,
            id: id(&self.id)?,
            application_id: id(&self.application_id)?,
            label: self.label,
            pinned: self.pinned,
            location: self.location,
            size_bytes: self.size_bytes.map(|b| b.max(0) as u64),
            application_version: self.application_version,
            source_uri: self.source_uri,
            scheduled_for: self.scheduled_for,
            error: self.error_code.map(|code| SavepointError {
                code,
                message: self.error_message.unwrap_or_default(),
            }),
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            completed_at: self.completed_at,
            deleted_at: self.deleted_at,
        })
    }
}

/// A savepoint to record.
pub struct NewSavepoint<'a> {
    pub id: &'a SavepointId,
    pub org: &'a OrgId,
    pub app: &'a AppId,
    pub origin: SavepointOrigin,
    pub label: Option<&'a str>,
    pub pinned: bool,
    pub source_uri: Option<&'a str>,
    pub application_version: Option<i64>,
}

pub async fn insert(conn: &mut Conn, n: &NewSavepoint<'_>) -> Result<Savepoint, StoreError> {
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO savepoints (id, org_id, application_id, origin, status, label, pinned,
                                 source_uri, application_version)
         VALUES ($1, $2, $3, $4, 'PENDING', $5, $6, $7, $8) RETURNING {COLUMNS}"
    )))
    .bind(n.id.as_str())
    .bind(n.org.as_str())
    .bind(n.app.as_str())
    .bind(n.origin.as_str())
    .bind(n.label)
    .bind(n.pinned)
    .bind(n.source_uri)
    .bind(n.application_version)
    .fetch_one(conn)
    .await?
    .into_api()
}

pub async fn get_row(
    conn: &mut Conn,
    org: &OrgId,
    sp: &SavepointId,
    for_update: bool,
) -> Result<Option<Row>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM savepoints WHERE id = $1 AND org_id = $2{lock}"
    )))
    .bind(sp.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?)
}

/// Filters of a list.
#[derive(Debug, Default)]
pub struct Filter {
    pub status: Option<SavepointStatus>,
    pub origin: Option<SavepointOrigin>,
    pub include_deleted: bool,
}

pub async fn list(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    f: &Filter,
    page: &PageQuery,
) -> Result<(Vec<Savepoint>, bool), StoreError> {
    let rows = sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM savepoints WHERE org_id = $1 AND application_id = $2
         AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR origin = $4)
         AND ($5 OR status <> 'DELETED' OR $3::text = 'DELETED')
         AND ($6::text IS NULL OR id > $6) ORDER BY id LIMIT $7"
    )))
    .bind(org.as_str())
    .bind(app.as_str())
    .bind(f.status.map(SavepointStatus::as_str))
    .bind(f.origin.map(SavepointOrigin::as_str))
    .bind(f.include_deleted)
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

/// Relabels and/or pins (compare-and-swap on `version`, which the caller checked under the row lock).
pub async fn update_meta(
    conn: &mut Conn,
    org: &OrgId,
    sp: &SavepointId,
    label: Option<&str>,
    pinned: bool,
) -> Result<Savepoint, StoreError> {
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "UPDATE savepoints SET label = $3, pinned = $4, version = version + 1, updated_at = now()
         WHERE id = $1 AND org_id = $2 RETURNING {COLUMNS}"
    )))
    .bind(sp.as_str())
    .bind(org.as_str())
    .bind(label)
    .bind(pinned)
    .fetch_one(conn)
    .await?
    .into_api()
}

/// → DELETING, due for disposal after `after_s` seconds.
pub async fn mark_deleting(
    conn: &mut Conn,
    org: &OrgId,
    sp: &SavepointId,
    after_s: f64,
) -> Result<Savepoint, StoreError> {
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "UPDATE savepoints SET status = 'DELETING', next_attempt_at = now() + make_interval(secs => $3), attempts = 0,
                error_code = NULL, error_message = NULL, version = version + 1, updated_at = now()
         WHERE id = $1 AND org_id = $2 RETURNING {COLUMNS}"
    )))
    .bind(sp.as_str())
    .bind(org.as_str())
    .bind(after_s)
    .fetch_one(conn)
    .await?
    .into_api()
}

/// Savepoint ids the application's current spec, or the spec of the version its
/// cluster runs, restores from: never disposed of.
pub async fn restore_references(conn: &mut Conn, app: &AppId) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT a.spec->'restore'->>'savepoint_id' FROM applications a
         WHERE a.id = $1 AND a.spec->'restore'->>'savepoint_id' IS NOT NULL
         UNION
         SELECT v.spec->'restore'->>'savepoint_id' FROM application_status st
         JOIN application_versions v ON v.application_id = st.application_id AND v.version = st.observed_version
         WHERE st.application_id = $1 AND v.spec->'restore'->>'savepoint_id' IS NOT NULL",
    )
    .bind(app.as_str())
    .fetch_all(conn)
    .await?)
}

pub async fn usage(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    month_start: DateTime<Utc>,
) -> Result<SavepointUsage, StoreError> {
    let (completed_count, completed_bytes, deleting_count, deleting_bytes): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE status = 'COMPLETED'),
                    coalesce(sum(size_bytes) FILTER (WHERE status = 'COMPLETED'), 0)::bigint,
                    count(*) FILTER (WHERE status = 'DELETING'),
                    coalesce(sum(size_bytes) FILTER (WHERE status = 'DELETING'), 0)::bigint
             FROM savepoints WHERE org_id = $1 AND application_id = $2",
        )
        .bind(org.as_str())
        .bind(app.as_str())
        .fetch_one(&mut *conn)
        .await?;
    let byte_seconds = storage_byte_seconds(conn, org, Some(app), month_start, Utc::now()).await?;
    let n = |v: i64| v.max(0) as u64;
    Ok(SavepointUsage {
        application_id: app.clone(),
        completed_count: n(completed_count),
        completed_bytes: n(completed_bytes),
        deleting_count: n(deleting_count),
        deleting_bytes: n(deleting_bytes),
        month_to_date_byte_seconds: n(byte_seconds),
    })
}

/// Savepoint storage held in `[from, to)`, in byte-seconds, for billing (GiB-month =
/// byte-seconds / 2^30 / seconds of the month). A savepoint holds its bytes from
/// completion until its files are gone (`deleted_at`): a disposal that is retried keeps
/// billing its bytes until it succeeded. `app` narrows it to one application.
pub async fn storage_byte_seconds(
    conn: &mut Conn,
    org: &OrgId,
    app: Option<&AppId>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(size_bytes::numeric * floor(extract(epoch FROM
                    least(coalesce(deleted_at, $4), $4) - greatest(completed_at, $3)))), 0)::bigint
         FROM savepoints
         WHERE org_id = $1 AND ($2::text IS NULL OR application_id = $2)
           AND completed_at IS NOT NULL AND size_bytes IS NOT NULL
           AND completed_at < $4 AND coalesce(deleted_at, 'infinity') > $3",
    )
    .bind(org.as_str())
    .bind(app.map(AppId::as_str))
    .bind(from)
    .bind(to)
    .fetch_one(conn)
    .await?)
}

pub async fn insert_export(
    conn: &mut Conn,
    org: &OrgId,
    op: &OperationId,
    sp: &SavepointId,
    target_uri: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO savepoint_exports (operation_id, org_id, savepoint_id, target_uri)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(op.as_str())
    .bind(org.as_str())
    .bind(sp.as_str())
    .bind(target_uri)
    .execute(conn)
    .await?;
    Ok(())
}

// ---- the workers (owner connections) ----

/// Claims up to `limit` rows in one of `statuses` that are due, leasing them for `lease_s`.
/// With `one_per_app`, rows of an application that has a savepoint being taken (in
/// progress, or pending under another worker's lease) are left alone: a JobManager takes
/// one savepoint at a time.
pub async fn claim(
    conn: &mut Conn,
    statuses: &[&str],
    limit: i64,
    lease_s: f64,
    one_per_app: bool,
) -> Result<Vec<Row>, StoreError> {
    let statuses: Vec<String> = statuses.iter().map(|s| s.to_string()).collect();
    Ok(sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "UPDATE savepoints s SET next_attempt_at = now() + make_interval(secs => $2),
                attempts = s.attempts + 1
         FROM (SELECT id FROM savepoints w WHERE status = ANY($1) AND next_attempt_at <= now()
               AND (NOT $4 OR NOT EXISTS (
                   SELECT 1 FROM savepoints o WHERE o.application_id = w.application_id AND o.id <> w.id
                   AND (o.status = 'IN_PROGRESS'
                        OR (o.status = 'PENDING' AND o.attempts > 0 AND o.next_attempt_at > now()))))
               ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) c
         WHERE s.id = c.id RETURNING {}",
        COLUMNS
            .split(", ")
            .map(|c| format!("s.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ")
    )))
    .bind(&statuses)
    .bind(lease_s)
    .bind(limit)
    .bind(one_per_app)
    .fetch_all(conn)
    .await?)
}

/// Gives claimed rows back (due now, the attempt not counted).
pub async fn release(conn: &mut Conn, ids: &[String]) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE savepoints SET next_attempt_at = now(), attempts = greatest(attempts - 1, 0)
         WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(conn)
    .await?;
    Ok(())
}

/// The application's desired state and version (None once it is deleted).
pub async fn app_state(conn: &mut Conn, app: &str) -> Result<Option<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT coalesce(spec->>'desired_state', 'stopped'), version FROM applications WHERE id = $1",
    )
    .bind(app)
    .fetch_optional(conn)
    .await?)
}

/// PENDING → IN_PROGRESS with the JobManager's trigger (only from PENDING: a delete or
/// another worker that moved it on wins).
pub async fn set_in_progress(
    conn: &mut Conn,
    sp: &str,
    job_id: &str,
    trigger_id: &str,
    location: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE savepoints SET status = 'IN_PROGRESS', job_id = $2, trigger_id = $3, location = $4,
                error_code = NULL, error_message = NULL, version = version + 1, updated_at = now()
         WHERE id = $1 AND status = 'PENDING'",
    )
    .bind(sp)
    .bind(job_id)
    .bind(trigger_id)
    .bind(location)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// → COMPLETED (from PENDING or IN_PROGRESS only).
pub async fn complete(
    conn: &mut Conn,
    sp: &str,
    location: &str,
    size_bytes: u64,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE savepoints SET status = 'COMPLETED', location = $2, size_bytes = $3,
                completed_at = now(), error_code = NULL, error_message = NULL,
                version = version + 1, updated_at = now()
         WHERE id = $1 AND status IN ('PENDING', 'IN_PROGRESS')",
    )
    .bind(sp)
    .bind(location)
    .bind(i64::try_from(size_bytes).unwrap_or(i64::MAX))
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// → FAILED (from PENDING or IN_PROGRESS only).
pub async fn fail(
    conn: &mut Conn,
    sp: &str,
    code: &str,
    message: &str,
) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE savepoints SET status = 'FAILED', error_code = $2, error_message = $3,
                version = version + 1, updated_at = now()
         WHERE id = $1 AND status IN ('PENDING', 'IN_PROGRESS')",
    )
    .bind(sp)
    .bind(code)
    .bind(message)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Keeps the row's status, records the error and makes it due again after `delay_ms`.
/// `back_to_pending` forgets a trigger the JobManager no longer knows.
pub async fn retry_later(
    conn: &mut Conn,
    sp: &str,
    delay_ms: u64,
    code: &str,
    message: &str,
    back_to_pending: bool,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE savepoints SET next_attempt_at = now() + make_interval(secs => $2),
                error_code = $3, error_message = $4, updated_at = now(),
                status = CASE WHEN $5 AND status = 'IN_PROGRESS' THEN 'PENDING' ELSE status END,
                trigger_id = CASE WHEN $5 THEN NULL ELSE trigger_id END
         WHERE id = $1",
    )
    .bind(sp)
    .bind(delay_ms as f64 / 1000.0)
    .bind(code)
    .bind(message)
    .bind(back_to_pending)
    .execute(conn)
    .await?;
    Ok(())
}

/// DELETING → DELETED once every object under the prefix is gone.
pub async fn mark_deleted(conn: &mut Conn, sp: &str) -> Result<bool, StoreError> {
    let r = sqlx::query(
        "UPDATE savepoints SET status = 'DELETED', deleted_at = now(), error_code = NULL,
                error_message = NULL, version = version + 1, updated_at = now()
         WHERE id = $1 AND status = 'DELETING'",
    )
    .bind(sp)
    .execute(conn)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records a savepoint the reconciler needs (on stop, before an upgrade): PENDING, due now.
pub async fn insert_system(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    origin: SavepointOrigin,
    application_version: i64,
) -> Result<Savepoint, StoreError> {
    insert(
        conn,
        &NewSavepoint {
            id: &SavepointId::new(),
            org,
            app,
            origin,
            label: None,
            pinned: false,
            source_uri: None,
            application_version: Some(application_version),
        },
    )
    .await
}

/// Records a savepoint some other part took (the reconciler's stop-with-savepoint before a
/// stop or an upgrade) as COMPLETED, so that it is listed, billed and retained like the others.
/// Idempotent on `id`.
#[allow(clippy::too_many_arguments)]
pub async fn insert_completed(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    id: &SavepointId,
    origin: SavepointOrigin,
    application_version: i64,
    location: &str,
    size_bytes: u64,
) -> Result<Savepoint, StoreError> {
    sqlx::query(
        "INSERT INTO savepoints (id, org_id, application_id, origin, status, location, size_bytes,
                                 application_version, completed_at)
         VALUES ($1, $2, $3, $4, 'COMPLETED', $5, $6, $7, now()) ON CONFLICT (id) DO NOTHING",
    )
    .bind(id.as_str())
    .bind(org.as_str())
    .bind(app.as_str())
    .bind(origin.as_str())
    .bind(location)
    .bind(i64::try_from(size_bytes).unwrap_or(i64::MAX))
    .bind(application_version)
    .execute(&mut *conn)
    .await?;
    get_any(conn, id)
        .await?
        .ok_or_else(|| StoreError::Corrupt(format!("savepoint {id} vanished after insert")))
}

/// Any savepoint by id, outside a tenant (the reconciler waits on the ones it asked for).
pub async fn get_any(conn: &mut Conn, sp: &SavepointId) -> Result<Option<Savepoint>, StoreError> {
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM savepoints WHERE id = $1"
    )))
    .bind(sp.as_str())
    .fetch_optional(conn)
    .await?
    .map(Row::into_api)
    .transpose()
}

/// Marks for disposal what retention expired, and what belongs to deleted applications
/// whose policy disposes; returns `(org, application, savepoint)` of each.
///
/// Retention (a schedule with `max_count` and/or `max_age_s`) expires completed,
/// unpinned savepoints beyond the newest `max_count` or older than `max_age_s`, and
/// failed unpinned ones older than `max_age_s`; it never expires the newest completed
/// savepoint of the application nor one the current spec or the running version restores from.
pub async fn expire(conn: &mut Conn) -> Result<Vec<(String, String, String)>, StoreError> {
    let mut out: Vec<(String, String, String)> = sqlx::query_as(
        "WITH sched AS (
            SELECT application_id, max_count, max_age_s::double precision AS max_age_s
            FROM savepoint_schedules WHERE max_count IS NOT NULL OR max_age_s IS NOT NULL
         ), latest AS (
            SELECT DISTINCT ON (sp.application_id) sp.id FROM savepoints sp
            JOIN sched USING (application_id)
            WHERE sp.status = 'COMPLETED' ORDER BY sp.application_id, sp.completed_at DESC, sp.id DESC
         ), protected AS (
            SELECT a.spec->'restore'->>'savepoint_id' AS id FROM applications a
            JOIN sched ON sched.application_id = a.id
            UNION
            SELECT v.spec->'restore'->>'savepoint_id' FROM application_status st
            JOIN sched ON sched.application_id = st.application_id
            JOIN application_versions v ON v.application_id = st.application_id AND v.version = st.observed_version
         ), ranked AS (
            SELECT sp.id, sp.application_id, sp.completed_at,
                   row_number() OVER (PARTITION BY sp.application_id
                                      ORDER BY sp.completed_at DESC, sp.id DESC) AS rn
            FROM savepoints sp JOIN sched USING (application_id)
            WHERE sp.status = 'COMPLETED' AND NOT sp.pinned
         ), expired AS (
            SELECT r.id FROM ranked r JOIN sched s USING (application_id)
            WHERE (r.rn > s.max_count OR r.completed_at < now() - make_interval(secs => s.max_age_s))
            UNION ALL
            SELECT sp.id FROM savepoints sp JOIN sched s USING (application_id)
            WHERE sp.status = 'FAILED' AND NOT sp.pinned
              AND sp.updated_at < now() - make_interval(secs => s.max_age_s)
         )
         UPDATE savepoints SET status = 'DELETING', next_attempt_at = now(), attempts = 0,
                error_code = NULL, error_message = NULL, version = version + 1, updated_at = now()
         WHERE id IN (SELECT id FROM expired)
           AND id NOT IN (SELECT id FROM latest)
           AND id NOT IN (SELECT id FROM protected WHERE id IS NOT NULL)
           AND status IN ('COMPLETED', 'FAILED') AND NOT pinned
         RETURNING org_id, application_id, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    let orphans: Vec<(String, String, String)> = sqlx::query_as(
        "UPDATE savepoints sp SET status = 'DELETING', next_attempt_at = now(), attempts = 0,
                error_code = NULL, error_message = NULL, version = version + 1, updated_at = now()
         WHERE sp.status IN ('COMPLETED', 'FAILED') AND NOT sp.pinned
           AND NOT EXISTS (SELECT 1 FROM applications a WHERE a.id = sp.application_id)
           AND NOT EXISTS (SELECT 1 FROM savepoint_schedules s
                           WHERE s.application_id = sp.application_id AND NOT s.dispose_on_delete)
         RETURNING org_id, application_id, id",
    )
    .fetch_all(&mut *conn)
    .await?;
    out.extend(orphans);
    // The policy of a deleted application is kept while any of its savepoints is.
    sqlx::query(
        "DELETE FROM savepoint_schedules s
         WHERE NOT EXISTS (SELECT 1 FROM applications a WHERE a.id = s.application_id)
           AND NOT EXISTS (SELECT 1 FROM savepoints sp
                           WHERE sp.application_id = s.application_id AND sp.status <> 'DELETED')",
    )
    .execute(&mut *conn)
    .await?;
    Ok(out)
}

/// Audit events of system actions (retention), in the caller's transaction.
pub async fn audit_system(
    conn: &mut Conn,
    action: &str,
    rows: &[(String, String, String)],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = rows
        .iter()
        .map(|_| sluice_api_types::AuditEventId::new().as_str().to_owned())
        .collect();
    let orgs: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    let apps: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
    let sps: Vec<&str> = rows.iter().map(|r| r.2.as_str()).collect();
    sqlx::query(
        "INSERT INTO audit_events (id, org_id, actor, action, resource_type, resource_id, details)
         SELECT u.id, u.org, 'system', $5, 'savepoint', u.sp, jsonb_build_object('application_id', u.app)
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) AS u(id, org, app, sp)",
    )
    .bind(&ids)
    .bind(&orgs)
    .bind(&apps)
    .bind(&sps)
    .bind(action)
    .execute(conn)
    .await?;
    Ok(())
}

/// An export claimed by a worker.
#[derive(sqlx::FromRow, Debug, Clone)]
pub struct ExportRow {
    pub operation_id: String,
    pub org_id: String,
    pub savepoint_id: String,
    pub target_uri: String,
    pub attempts: i32,
}

pub async fn claim_exports(
    conn: &mut Conn,
    limit: i64,
    lease_s: f64,
) -> Result<Vec<ExportRow>, StoreError> {
    Ok(sqlx::query_as::<_, ExportRow>(
        "UPDATE savepoint_exports e SET next_attempt_at = now() + make_interval(secs => $2),
                attempts = e.attempts + 1
         FROM (SELECT operation_id FROM savepoint_exports WHERE NOT done AND next_attempt_at <= now()
               ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) c
         WHERE e.operation_id = c.operation_id
         RETURNING e.operation_id, e.org_id, e.savepoint_id, e.target_uri, e.attempts",
    )
    .bind(limit)
    .bind(lease_s)
    .fetch_all(conn)
    .await?)
}

pub async fn export_retry_later(
    conn: &mut Conn,
    op: &str,
    delay_ms: u64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE savepoint_exports SET next_attempt_at = now() + make_interval(secs => $2)
         WHERE operation_id = $1",
    )
    .bind(op)
    .bind(delay_ms as f64 / 1000.0)
    .execute(conn)
    .await?;
    Ok(())
}

/// Ends an export: the operation SUCCEEDED, or FAILED with `error` (a problem+json body).
pub async fn finish_export(
    conn: &mut Conn,
    op: &str,
    error: Option<serde_json::Value>,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE savepoint_exports SET done = true WHERE operation_id = $1")
        .bind(op)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "UPDATE operations SET state = CASE WHEN $2::jsonb IS NULL THEN 'SUCCEEDED' ELSE 'FAILED' END,
                error = $2, updated_at = now()
         WHERE id = $1 AND state = 'IN_PROGRESS'",
    )
    .bind(op)
    .bind(error)
    .execute(conn)
    .await?;
    Ok(())
}

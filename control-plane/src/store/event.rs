//! `events`: what happened to an application (written by the reconciler, read by its owner).

use chrono::{DateTime, Utc};
use sluice_api_types::{AppId, ApplicationEvent, EventId, OrgId, Phase};

use super::{Conn, PageQuery, StoreError, id, split_page};

pub struct NewEvent<'a> {
    pub org_id: &'a str,
    pub application_id: &'a str,
    pub event_type: &'a str,
    pub phase: Option<Phase>,
    pub reason: Option<&'a str>,
    pub message: Option<&'a str>,
}

pub fn phase_str(p: Phase) -> String {
    serde_json::to_value(p)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

pub fn parse_phase(s: &str) -> Option<Phase> {
    serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
}

pub async fn insert(conn: &mut Conn, e: &NewEvent<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO events (id, org_id, application_id, type, phase, reason, message)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(EventId::new().as_str())
    .bind(e.org_id)
    .bind(e.application_id)
    .bind(e.event_type)
    .bind(e.phase.map(phase_str))
    .bind(e.reason)
    .bind(e.message)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    application_id: String,
    at: DateTime<Utc>,
    r#type: String,
    phase: Option<String>,
    reason: Option<String>,
    message: Option<String>,
}

/// Oldest first (ids are time-ordered), after the page token.
pub async fn list(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    page: &PageQuery,
) -> Result<(Vec<ApplicationEvent>, bool), StoreError> {
    let rows = sqlx::query_as::<_, Row>(
        "SELECT id, application_id, at, type, phase, reason, message FROM events
         WHERE org_id = $1 AND application_id = $2 AND ($3::text IS NULL OR id > $3)
         ORDER BY id LIMIT $4",
    )
    .bind(org.as_str())
    .bind(app.as_str())
    .bind(page.after.as_deref())
    .bind(page.limit + 1)
    .fetch_all(conn)
    .await?;
    let (rows, more) = split_page(rows, page.limit);
    let items = rows
        .into_iter()
        .map(|r| {
            Ok(ApplicationEvent {
                id: id(&r.id)?,
                application_id: id(&r.application_id)?,
                at: r.at,
                event_type: r.r#type,
                phase: r.phase.as_deref().and_then(parse_phase),
                reason: r.reason,
                message: r.message,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((items, more))
}

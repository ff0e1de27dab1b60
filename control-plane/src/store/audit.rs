//! `audit_events`: written in the transaction of the mutation it records.

use chrono::{DateTime, Utc};
use sluice_api_types::{AuditEvent, AuditEventFilter, AuditEventId, OrgId};

use super::{Conn, StoreError, id, split_page};

pub struct NewEvent<'a> {
    pub org_id: &'a OrgId,
    pub actor: &'a str,
    pub api_key_id: Option<&'a str>,
    pub action: &'a str,
    pub resource_type: &'a str,
    pub resource_id: &'a str,
    pub request_id: Option<&'a str>,
    pub details: serde_json::Value,
}

pub async fn insert(conn: &mut Conn, e: &NewEvent<'_>) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit_events (id, org_id, actor, api_key_id, action, resource_type, resource_id,
                                   request_id, details)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(AuditEventId::new().as_str())
    .bind(e.org_id.as_str())
    .bind(e.actor)
    .bind(e.api_key_id)
    .bind(e.action)
    .bind(e.resource_type)
    .bind(e.resource_id)
    .bind(e.request_id)
    .bind(&e.details)
    .execute(conn)
    .await?;
    Ok(())
}

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    actor: String,
    api_key_id: Option<String>,
    action: String,
    resource_type: String,
    resource_id: String,
    request_id: Option<String>,
    details: serde_json::Value,
    at: DateTime<Utc>,
}

pub async fn list(
    conn: &mut Conn,
    org: &OrgId,
    f: &AuditEventFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<(Vec<AuditEvent>, bool), StoreError> {
    let rows = sqlx::query_as::<_, Row>(
        "SELECT id, actor, api_key_id, action, resource_type, resource_id, request_id, details, at
         FROM audit_events WHERE org_id = $1
         AND ($2::text IS NULL OR actor = $2)
         AND ($3::text IS NULL OR resource_type = $3)
         AND ($4::text IS NULL OR resource_id = $4)
         AND ($5::timestamptz IS NULL OR at >= $5)
         AND ($6::timestamptz IS NULL OR at < $6)
         AND ($7::text IS NULL OR id > $7)
         ORDER BY id LIMIT $8",
    )
    .bind(org.as_str())
    .bind(f.actor.as_deref())
    .bind(f.resource_type.as_deref())
    .bind(f.resource_id.as_deref())
    .bind(f.since)
    .bind(f.until)
    .bind(after)
    .bind(limit + 1)
    .fetch_all(conn)
    .await?;
    let (rows, more) = split_page(rows, limit);
    let items = rows
        .into_iter()
        .map(|r| {
            Ok(AuditEvent {
                id: id(&r.id)?,
                actor: r.actor,
                api_key_id: r.api_key_id,
                action: r.action,
                resource_type: r.resource_type,
                resource_id: r.resource_id,
                request_id: r.request_id,
                details: r.details,
                at: r.at,
            })
        })
        .collect::<Result<_, StoreError>>()?;
    Ok((items, more))
}

//! `operations`: the log of asynchronous actions.

use chrono::{DateTime, Utc};
use sluice_api_types::{
    AppId, Operation, OperationId, OperationKind, OperationState, OrgId, Problem,
};

use super::{Conn, StoreError, id};

const COLUMNS: &str =
    "id, application_id, kind, target_version, state, error, created_at, updated_at";

#[derive(sqlx::FromRow)]
struct Row {
    id: String,
    application_id: String,
    kind: String,
    target_version: i64,
    state: String,
    error: Option<serde_json::Value>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl Row {
    fn into_api(self) -> Result<Operation, StoreError> {
        Ok(Operation {
            kind: OperationKind::parse(&self.kind)
                .ok_or_else(|| StoreError::Corrupt(format!("operation kind '{}'", self.kind)))?,
            state: OperationState::parse(&self.state)
                .ok_or_else(|| StoreError::Corrupt(format!("operation state '{}'", self.state)))?,
            error: self
                .error
                .map(serde_json::from_value::<Problem>)
                .transpose()
                .map_err(|e| StoreError::Corrupt(format!("error of operation {}: {e}", self.id)))?,
            id: id(&self.id)?,
            application_id: id(&self.application_id)?,
            target_version: self.target_version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

pub async fn insert(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    kind: OperationKind,
    target_version: i64,
    state: OperationState,
) -> Result<Operation, StoreError> {
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO operations (id, org_id, application_id, kind, target_version, state)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    )))
    .bind(OperationId::new().as_str())
    .bind(org.as_str())
    .bind(app.as_str())
    .bind(kind.as_str())
    .bind(target_version)
    .bind(state.as_str())
    .fetch_one(conn)
    .await?
    .into_api()
}

/// Fails every operation of the application still in progress: a newer intent replaced it.
pub async fn supersede(
    conn: &mut Conn,
    org: &OrgId,
    app: &AppId,
    error: &Problem,
) -> Result<u64, StoreError> {
    let error = serde_json::to_value(error).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let r = sqlx::query(
        "UPDATE operations SET state = 'FAILED', error = $3, updated_at = now()
         WHERE application_id = $1 AND org_id = $2 AND state = 'IN_PROGRESS'",
    )
    .bind(app.as_str())
    .bind(org.as_str())
    .bind(error)
    .execute(conn)
    .await?;
    Ok(r.rows_affected())
}

pub async fn get(
    conn: &mut Conn,
    org: &OrgId,
    op: &OperationId,
) -> Result<Option<Operation>, StoreError> {
    sqlx::query_as::<_, Row>(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM operations WHERE id = $1 AND org_id = $2"
    )))
    .bind(op.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?
    .map(Row::into_api)
    .transpose()
}

/// The pool of the operation's application (pool-scoped keys may only see their pool's operations).
pub async fn pool_of(
    conn: &mut Conn,
    org: &OrgId,
    op: &OperationId,
) -> Result<Option<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT a.pool_id FROM operations o JOIN applications a ON a.id = o.application_id
         WHERE o.id = $1 AND o.org_id = $2",
    )
    .bind(op.as_str())
    .bind(org.as_str())
    .fetch_optional(conn)
    .await?)
}

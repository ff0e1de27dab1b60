//! `/healthz` (the process serves) and `/readyz` (it can do useful work: the
//! database answers and its schema is what this binary expects).

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

use super::AppState;
use crate::store::{self, SchemaState};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let check = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        store::schema_state(&state.db),
    )
    .await;
    match check {
        Ok(Ok(SchemaState::Current { version })) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok", "schema_version": version })),
        ),
        Ok(Ok(schema)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "database": "ok", "schema": schema })),
        ),
        Ok(Err(e)) => {
            tracing::warn!(error = %format!("{e:#}"), "readiness: database check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "not_ready", "database": "unavailable" })),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "database": "timeout" })),
        ),
    }
}

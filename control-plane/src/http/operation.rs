//! `/v1/operations/{id}` and `/v1/audit-events`.

use axum::Json;
use axum::extract::State;
use sluice_api_types::{AuditEventFilter, AuditEventList, Operation, OperationId, Problem};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiQuery, PathId};
use crate::service::{Ctx, audit, operation};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get))
        .routes(routes!(audit_events))
}

/// An asynchronous operation and its result.
#[utoipa::path(get, path = "/v1/operations/{id}", operation_id = "get_operation", tag = "operations", params(("id" = OperationId, Path)),
    responses((status = 200, body = Operation), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn get(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<OperationId>,
) -> Result<Json<Operation>, ApiError> {
    Ok(Json(operation::get(&s.svc, &ctx, &id).await?))
}

/// The organization's audit log (org_admin), oldest first, filterable by actor, resource and time.
#[utoipa::path(get, path = "/v1/audit-events", operation_id = "list_audit_events", tag = "audit", params(AuditEventFilter),
    responses((status = 200, body = AuditEventList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn audit_events(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiQuery(f): ApiQuery<AuditEventFilter>,
) -> Result<Json<AuditEventList>, ApiError> {
    Ok(Json(audit::list(&s.svc, &ctx, &f).await?))
}

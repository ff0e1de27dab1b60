//! `/v1/budget`: the organization's monthly budget.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use sluice_api_types::{Budget, Problem, PutBudget};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiJson, IfMatch, with_etag};
use crate::service::{Ctx, budget};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get, put, delete))
}

/// The budget with the current month's spend (org_admin, billing_admin, viewer); 404 when none.
#[utoipa::path(get, path = "/v1/budget", operation_id = "get_budget", tag = "billing",
    responses((status = 200, body = Budget, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 429, body = Problem)))]
async fn get(State(s): State<AppState>, ctx: Ctx) -> Result<Response, ApiError> {
    let b = budget::get(&s.svc, &ctx).await?;
    Ok(with_etag(StatusCode::OK, b.version, b))
}

/// Create or replace the budget (org_admin, billing_admin). Thresholds raise one audit event
/// (`budget.threshold_reached`) per month when first reached; `hard_stop` stops the running
/// applications (with savepoints) once the month's spend reaches the budget.
#[utoipa::path(put, path = "/v1/budget", operation_id = "put_budget", tag = "billing", request_body = PutBudget,
    params(("If-Match" = Option<String>, Header, description = "ETag of the version this change is based on")),
    responses((status = 200, body = Budget, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn put(
    State(s): State<AppState>,
    ctx: Ctx,
    IfMatch(v): IfMatch,
    ApiJson(req): ApiJson<PutBudget>,
) -> Result<Response, ApiError> {
    let b = budget::put(&s.svc, &ctx, v, &req).await?;
    Ok(with_etag(StatusCode::OK, b.version, b))
}

/// Remove the budget (org_admin, billing_admin).
#[utoipa::path(delete, path = "/v1/budget", operation_id = "delete_budget", tag = "billing",
    params(("If-Match" = Option<String>, Header, description = "ETag of the version to delete")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 412, body = Problem), (status = 429, body = Problem)))]
async fn delete(
    State(s): State<AppState>,
    ctx: Ctx,
    IfMatch(v): IfMatch,
) -> Result<StatusCode, ApiError> {
    budget::delete(&s.svc, &ctx, v).await?;
    Ok(StatusCode::NO_CONTENT)
}

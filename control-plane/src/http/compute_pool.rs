//! `/v1/compute-pools`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use sluice_api_types::{
    ComputePool, ComputePoolList, CreateComputePool, PageParams, PoolId, Problem, UpdateComputePool,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, IfMatch, PathId, with_etag};
use crate::service::{Ctx, compute_pool};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
}

/// Create a compute pool (org_admin).
#[utoipa::path(post, path = "/v1/compute-pools", operation_id = "create_compute_pool", tag = "compute-pools", request_body = CreateComputePool,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key return the first response")),
    responses((status = 201, body = ComputePool, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn create(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiJson(req): ApiJson<CreateComputePool>,
) -> Result<Response, ApiError> {
    let pool = compute_pool::create(&s.svc, &ctx, &req).await?;
    Ok(with_etag(StatusCode::CREATED, pool.version, pool))
}

/// List compute pools (a pool-scoped key sees its pool only).
#[utoipa::path(get, path = "/v1/compute-pools", operation_id = "list_compute_pools", tag = "compute-pools", params(PageParams),
    responses((status = 200, body = ComputePoolList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn list(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<ComputePoolList>, ApiError> {
    Ok(Json(compute_pool::list(&s.svc, &ctx, &p).await?))
}

/// Get a compute pool with its observed usage.
#[utoipa::path(get, path = "/v1/compute-pools/{id}", operation_id = "get_compute_pool", tag = "compute-pools", params(("id" = PoolId, Path)),
    responses((status = 200, body = ComputePool, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn get(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<PoolId>,
) -> Result<Response, ApiError> {
    let pool = compute_pool::get(&s.svc, &ctx, &id).await?;
    Ok(with_etag(StatusCode::OK, pool.version, pool))
}

/// Change name, max_kpu or admission (org_admin). Lowering max_kpu below what is in use is 409.
#[utoipa::path(patch, path = "/v1/compute-pools/{id}", operation_id = "update_compute_pool", tag = "compute-pools", request_body = UpdateComputePool,
    params(("id" = PoolId, Path), ("If-Match" = Option<String>, Header, description = "ETag of the version this change is based on")),
    responses((status = 200, body = ComputePool, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn update(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<PoolId>,
    IfMatch(v): IfMatch,
    ApiJson(req): ApiJson<UpdateComputePool>,
) -> Result<Response, ApiError> {
    let pool = compute_pool::update(&s.svc, &ctx, &id, v, &req).await?;
    Ok(with_etag(StatusCode::OK, pool.version, pool))
}

/// Delete a compute pool (org_admin); 409 while it has applications.
#[utoipa::path(delete, path = "/v1/compute-pools/{id}", operation_id = "delete_compute_pool", tag = "compute-pools",
    params(("id" = PoolId, Path), ("If-Match" = Option<String>, Header, description = "ETag of the version to delete")),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 412, body = Problem), (status = 429, body = Problem)))]
async fn delete(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<PoolId>,
    IfMatch(v): IfMatch,
) -> Result<StatusCode, ApiError> {
    compute_pool::delete(&s.svc, &ctx, &id, v).await?;
    Ok(StatusCode::NO_CONTENT)
}

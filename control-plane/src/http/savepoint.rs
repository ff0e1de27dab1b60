//! `/v1/applications/{id}/savepoints`, `/v1/savepoints/{id}` (+ `:export`),
//! `/v1/applications/{id}/savepoint-schedule` and `/v1/applications/{id}/savepoint-usage`.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_api_types::{
    AppId, CreateSavepoint, ExportSavepoint, Operation, Problem, PutSavepointSchedule, Savepoint,
    SavepointId, SavepointList, SavepointSchedule, SavepointUsage, UpdateSavepoint,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, IfMatch, PathId, decode_json, with_etag};
use crate::service::savepoint::{self, ListSavepoints};
use crate::service::{Ctx, ServiceError, savepoint_schedule};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
        .routes(routes!(usage))
        .routes(routes!(put_schedule, get_schedule, delete_schedule))
        // `{id}:export` is served like the application actions (see `http::application`).
        .route("/v1/savepoints/{id}", axum::routing::post(action))
}

/// Take a savepoint of the running application (or import one with `source_uri`): 202
/// with the savepoint PENDING; poll it until COMPLETED or FAILED.
#[utoipa::path(post, path = "/v1/applications/{id}/savepoints", operation_id = "create_savepoint", tag = "savepoints", request_body = CreateSavepoint,
    params(("id" = AppId, Path), ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key return the first response")),
    responses((status = 202, body = Savepoint, headers(("ETag" = String))), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem, description = "Invalid fields; an import names what is wrong with `source_uri`"),
        (status = 429, body = Problem)))]
async fn create(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
    ApiJson(req): ApiJson<CreateSavepoint>,
) -> Result<Response, ApiError> {
    let sp = savepoint::create(&s.svc, &ctx, &id, req).await?;
    Ok(with_etag(StatusCode::ACCEPTED, sp.version, sp))
}

/// The application's savepoints, oldest first (DELETED ones only with `include_deleted`).
#[utoipa::path(get, path = "/v1/applications/{id}/savepoints", operation_id = "list_savepoints", tag = "savepoints", params(("id" = AppId, Path), ListSavepoints),
    responses((status = 200, body = SavepointList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn list(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
    ApiQuery(q): ApiQuery<ListSavepoints>,
) -> Result<Json<SavepointList>, ApiError> {
    Ok(Json(savepoint::list(&s.svc, &ctx, &id, &q).await?))
}

#[utoipa::path(get, path = "/v1/savepoints/{id}", operation_id = "get_savepoint", tag = "savepoints", params(("id" = SavepointId, Path)),
    responses((status = 200, body = Savepoint, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn get(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<SavepointId>,
) -> Result<Response, ApiError> {
    let sp = savepoint::get(&s.svc, &ctx, &id).await?;
    Ok(with_etag(StatusCode::OK, sp.version, sp))
}

/// Pin, unpin or relabel. Pinned savepoints never expire.
#[utoipa::path(patch, path = "/v1/savepoints/{id}", operation_id = "update_savepoint", tag = "savepoints", request_body = UpdateSavepoint,
    params(("id" = SavepointId, Path), ("If-Match" = Option<String>, Header, description = "ETag of the savepoint this change is based on")),
    responses((status = 200, body = Savepoint, headers(("ETag" = String))), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn update(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<SavepointId>,
    IfMatch(v): IfMatch,
    ApiJson(req): ApiJson<UpdateSavepoint>,
) -> Result<Response, ApiError> {
    let sp = savepoint::update(&s.svc, &ctx, &id, v, req).await?;
    Ok(with_etag(StatusCode::OK, sp.version, sp))
}

/// Dispose of a savepoint: 202 with it DELETING; its files are deleted, then it is DELETED.
#[utoipa::path(delete, path = "/v1/savepoints/{id}", operation_id = "delete_savepoint", tag = "savepoints",
    params(("id" = SavepointId, Path), ("If-Match" = Option<String>, Header, description = "ETag of the savepoint to delete")),
    responses((status = 202, body = Savepoint, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem, description = "Pinned, still being taken, or the application restores from it"),
        (status = 412, body = Problem), (status = 429, body = Problem)))]
async fn delete(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<SavepointId>,
    IfMatch(v): IfMatch,
) -> Result<Response, ApiError> {
    let sp = savepoint::delete(&s.svc, &ctx, &id, v).await?;
    Ok(with_etag(StatusCode::ACCEPTED, sp.version, sp))
}

/// Savepoint storage of the application (bytes now, byte-seconds this month), as billed.
#[utoipa::path(get, path = "/v1/applications/{id}/savepoint-usage", operation_id = "get_savepoint_usage", tag = "savepoints", params(("id" = AppId, Path)),
    responses((status = 200, body = SavepointUsage), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn usage(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
) -> Result<Json<SavepointUsage>, ApiError> {
    Ok(Json(savepoint::usage(&s.svc, &ctx, &id).await?))
}

/// Create or replace the schedule: a cron expression in an IANA time zone, or an interval; and retention.
#[utoipa::path(put, path = "/v1/applications/{id}/savepoint-schedule", operation_id = "put_savepoint_schedule", tag = "savepoints", request_body = PutSavepointSchedule,
    params(("id" = AppId, Path), ("If-Match" = Option<String>, Header, description = "ETag of the schedule this change replaces")),
    responses((status = 200, body = SavepointSchedule, headers(("ETag" = String))), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem, description = "Names the bad field: cron, timezone, interval_s, retention.*"),
        (status = 429, body = Problem)))]
async fn put_schedule(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
    IfMatch(v): IfMatch,
    ApiJson(req): ApiJson<PutSavepointSchedule>,
) -> Result<Response, ApiError> {
    let sch = savepoint_schedule::put(&s.svc, &ctx, &id, v, req).await?;
    Ok(with_etag(StatusCode::OK, sch.version, sch))
}

#[utoipa::path(get, path = "/v1/applications/{id}/savepoint-schedule", operation_id = "get_savepoint_schedule", tag = "savepoints", params(("id" = AppId, Path)),
    responses((status = 200, body = SavepointSchedule, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn get_schedule(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
) -> Result<Response, ApiError> {
    let sch = savepoint_schedule::get(&s.svc, &ctx, &id).await?;
    Ok(with_etag(StatusCode::OK, sch.version, sch))
}

/// Remove the schedule and its retention; existing savepoints stay.
#[utoipa::path(delete, path = "/v1/applications/{id}/savepoint-schedule", operation_id = "delete_savepoint_schedule", tag = "savepoints",
    params(("id" = AppId, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 412, body = Problem), (status = 429, body = Problem)))]
async fn delete_schedule(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
    IfMatch(v): IfMatch,
) -> Result<StatusCode, ApiError> {
    savepoint_schedule::delete(&s.svc, &ctx, &id, v).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn action(
    State(s): State<AppState>,
    ctx: Ctx,
    Path(id_action): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::from(ServiceError::not_found("resource", &id_action));
    let (id, verb) = id_action.rsplit_once(':').ok_or_else(not_found)?;
    let id: SavepointId = id.parse().map_err(|_| not_found())?;
    match verb {
        "export" => {
            let req: ExportSavepoint = decode_json(&body)?;
            let op = savepoint::export(&s.svc, &ctx, &id, &req).await?;
            Ok((StatusCode::ACCEPTED, Json(op)).into_response())
        }
        _ => Err(not_found()),
    }
}

/// The action's documentation (the router serves it through [`action`]).
#[allow(
    dead_code,
    reason = "documentation-only operation: `action` serves this path"
)]
pub mod action_docs {
    use super::*;

    /// Export: copy a COMPLETED savepoint to an empty directory URI; returns the operation.
    #[utoipa::path(post, path = "/v1/savepoints/{id}:export", operation_id = "export_savepoint", tag = "savepoints", request_body = ExportSavepoint,
        params(("id" = SavepointId, Path), ("Idempotency-Key" = Option<String>, Header)),
        responses((status = 202, body = Operation), (status = 401, body = Problem), (status = 403, body = Problem),
            (status = 404, body = Problem), (status = 409, body = Problem), (status = 422, body = Problem),
            (status = 429, body = Problem)))]
    pub async fn export() {}
}

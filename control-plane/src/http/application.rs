//! `/v1/applications`, their versions and the `:start` / `:stop` / `:rollback` actions.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_api_types::{
    AppId, Application, ApplicationEventList, ApplicationList, ApplicationMetrics,
    ApplicationVersion, ApplicationVersionList, CreateApplication, DesiredState, Operation,
    PageParams, Problem, RollbackRequest, StopRequest, UpdateApplication,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, IfMatch, PathId, decode_json, with_etag};
use crate::service::application::{self, ListApplications};
use crate::service::{Ctx, ServiceError};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create, list))
        .routes(routes!(get, update, delete))
        .routes(routes!(versions))
        .routes(routes!(version))
        .routes(routes!(events))
        .routes(routes!(metrics))
        // `{id}:start` is not a pattern the router can match (a parameter must fill its
        // segment), so one POST handler takes the segment and dispatches on the suffix;
        // the three actions are documented on their own paths (see `action_docs`).
        .route("/v1/applications/{id}", axum::routing::post(action))
}

/// Create an application; version 1 of its spec. `desired_state: running` also starts it.
#[utoipa::path(post, path = "/v1/applications", operation_id = "create_application", tag = "applications", request_body = CreateApplication,
    params(("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key return the first response")),
    responses((status = 201, body = Application, headers(("ETag" = String))), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 413, body = Problem),
        (status = 422, body = Problem, description = "Invalid fields; SQL errors carry line and column"),
        (status = 429, body = Problem)))]
async fn create(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiJson(req): ApiJson<CreateApplication>,
) -> Result<Response, ApiError> {
    let app = application::create(&s.svc, &ctx, req).await?;
    Ok(with_etag(StatusCode::CREATED, app.version, app))
}

#[utoipa::path(get, path = "/v1/applications", operation_id = "list_applications", tag = "applications", params(ListApplications),
    responses((status = 200, body = ApplicationList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn list(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiQuery(q): ApiQuery<ListApplications>,
) -> Result<Json<ApplicationList>, ApiError> {
    Ok(Json(application::list(&s.svc, &ctx, &q).await?))
}

#[utoipa::path(get, path = "/v1/applications/{id}", operation_id = "get_application", tag = "applications", params(("id" = AppId, Path)),
    responses((status = 200, body = Application, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn get(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
) -> Result<Response, ApiError> {
    let app = application::get(&s.svc, &ctx, &id).await?;
    Ok(with_etag(StatusCode::OK, app.version, app))
}

/// Change the spec; every accepted change is a new immutable version.
#[utoipa::path(patch, path = "/v1/applications/{id}", operation_id = "update_application", tag = "applications", request_body = UpdateApplication,
    params(("id" = AppId, Path), ("If-Match" = Option<String>, Header, description = "ETag of the version this change is based on")),
    responses((status = 200, body = Application, headers(("ETag" = String))), (status = 400, body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn update(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
    IfMatch(v): IfMatch,
    ApiJson(req): ApiJson<UpdateApplication>,
) -> Result<Response, ApiError> {
    let app = application::update(&s.svc, &ctx, &id, v, req).await?;
    Ok(with_etag(StatusCode::OK, app.version, app))
}

/// Delete the application; returns the delete operation.
#[utoipa::path(delete, path = "/v1/applications/{id}", operation_id = "delete_application", tag = "applications",
    params(("id" = AppId, Path), ("If-Match" = Option<String>, Header, description = "ETag of the version to delete")),
    responses((status = 202, body = Operation), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 412, body = Problem), (status = 429, body = Problem)))]
async fn delete(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
    IfMatch(v): IfMatch,
) -> Result<(StatusCode, Json<Operation>), ApiError> {
    Ok((
        StatusCode::ACCEPTED,
        Json(application::delete(&s.svc, &ctx, &id, v).await?),
    ))
}

/// The immutable versions of the spec, oldest first, each with its diff against the one before.
#[utoipa::path(get, path = "/v1/applications/{id}/versions", operation_id = "list_application_versions", tag = "applications", params(("id" = AppId, Path), PageParams),
    responses((status = 200, body = ApplicationVersionList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn versions(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<ApplicationVersionList>, ApiError> {
    Ok(Json(application::versions(&s.svc, &ctx, &id, &p).await?))
}

/// What happened to the application (phase changes, cluster starts and stops, savepoints), oldest first.
#[utoipa::path(get, path = "/v1/applications/{id}/events", operation_id = "list_application_events", tag = "applications", params(("id" = AppId, Path), PageParams),
    responses((status = 200, body = ApplicationEventList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn events(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<ApplicationEventList>, ApiError> {
    Ok(Json(
        crate::service::event::list(&s.svc, &ctx, &id, &p).await?,
    ))
}

/// What the engine reports for the current run: throughput, restarts, the last checkpoint.
#[utoipa::path(get, path = "/v1/applications/{id}/metrics", operation_id = "get_application_metrics", tag = "applications", params(("id" = AppId, Path)),
    responses((status = 200, body = ApplicationMetrics), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem, description = "No running cluster (`not_running`)"),
        (status = 429, body = Problem)))]
async fn metrics(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<AppId>,
) -> Result<Json<ApplicationMetrics>, ApiError> {
    Ok(Json(
        crate::service::event::metrics(&s.svc, &ctx, &id).await?,
    ))
}

/// One version of the spec with its diff against the previous version.
#[utoipa::path(get, path = "/v1/applications/{id}/versions/{n}", operation_id = "get_application_version", tag = "applications",
    params(("id" = AppId, Path), ("n" = i64, Path, description = "Version number, from 1")),
    responses((status = 200, body = ApplicationVersion), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn version(
    State(s): State<AppState>,
    ctx: Ctx,
    Path((id, n)): Path<(String, String)>,
) -> Result<Json<ApplicationVersion>, ApiError> {
    let nf = || {
        ApiError::from(ServiceError::not_found(
            "application version",
            format!("{id}/versions/{n}"),
        ))
    };
    let app: AppId = id.parse().map_err(|_| nf())?;
    let n: i64 = n.parse().map_err(|_| nf())?;
    Ok(Json(application::version(&s.svc, &ctx, &app, n).await?))
}

async fn action(
    State(s): State<AppState>,
    ctx: Ctx,
    Path(id_action): Path<String>,
    IfMatch(v): IfMatch,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let not_found = || ApiError::from(ServiceError::not_found("resource", &id_action));
    let (id, verb) = id_action.rsplit_once(':').ok_or_else(not_found)?;
    let id: AppId = id.parse().map_err(|_| not_found())?;
    let op = match verb {
        "start" => {
            application::set_desired_state(
                &s.svc,
                &ctx,
                &id,
                v,
                DesiredState::Running,
                &StopRequest::default(),
            )
            .await?
        }
        "stop" => {
            let req: StopRequest = if body.iter().all(u8::is_ascii_whitespace) {
                StopRequest::default()
            } else {
                decode_json(&body)?
            };
            application::set_desired_state(&s.svc, &ctx, &id, v, DesiredState::Stopped, &req)
                .await?
        }
        "rollback" => {
            let req: RollbackRequest = if body.iter().all(u8::is_ascii_whitespace) {
                RollbackRequest::default()
            } else {
                decode_json(&body)?
            };
            application::rollback(&s.svc, &ctx, &id, v, &req).await?
        }
        _ => return Err(not_found()),
    };
    Ok((StatusCode::ACCEPTED, Json(op)).into_response())
}

/// The actions' documentation (the router serves them through [`action`]).
#[allow(
    dead_code,
    reason = "documentation-only operations: `action` serves these paths"
)]
pub mod action_docs {
    use super::*;

    /// Start: set `desired_state` to running (a new version) and return the operation.
    #[utoipa::path(post, path = "/v1/applications/{id}:start", operation_id = "start_application", tag = "applications",
        params(("id" = AppId, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
        responses((status = 202, body = Operation), (status = 401, body = Problem), (status = 403, body = Problem),
            (status = 404, body = Problem), (status = 409, body = Problem, description = "Already running, being deleted, or `compute_pool_exhausted` (with free and requested KPUs)"),
            (status = 412, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
    pub async fn start() {}

    /// Stop: set `desired_state` to stopped (a new version) and return the operation. The
    /// cluster stops with a savepoint unless `force`.
    #[utoipa::path(post, path = "/v1/applications/{id}:stop", operation_id = "stop_application", tag = "applications", request_body(content = Option<StopRequest>),
        params(("id" = AppId, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
        responses((status = 202, body = Operation), (status = 401, body = Problem), (status = 403, body = Problem),
            (status = 404, body = Problem), (status = 409, body = Problem), (status = 412, body = Problem),
            (status = 429, body = Problem)))]
    pub async fn stop() {}

    /// Roll back: an earlier version's spec becomes the next version.
    #[utoipa::path(post, path = "/v1/applications/{id}:rollback", operation_id = "rollback_application", tag = "applications", request_body(content = Option<RollbackRequest>),
        params(("id" = AppId, Path), ("If-Match" = Option<String>, Header), ("Idempotency-Key" = Option<String>, Header)),
        responses((status = 202, body = Operation), (status = 401, body = Problem), (status = 403, body = Problem),
            (status = 404, body = Problem), (status = 412, body = Problem), (status = 422, body = Problem),
            (status = 429, body = Problem)))]
    pub async fn rollback() {}
}

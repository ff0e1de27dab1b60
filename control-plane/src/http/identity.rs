//! `/v1/me`, `/v1/users`, `/v1/service-accounts`, `/v1/api-keys`.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use sluice_api_types::{
    ApiKey, ApiKeyCreated, ApiKeyId, ApiKeyList, CreateApiKey, CreateServiceAccount, CreateUser,
    Me, PageParams, Problem, ServiceAccount, ServiceAccountId, ServiceAccountList, UpdateUser,
    User, UserId, UserList,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, IfMatch, PathId, with_etag};
use crate::service::{Ctx, api_key, organization, service_account, user};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(me))
        .routes(routes!(create_user, list_users))
        .routes(routes!(get_user, update_user, delete_user))
        .routes(routes!(create_service_account, list_service_accounts))
        .routes(routes!(get_service_account, delete_service_account))
        .routes(routes!(create_api_key, list_api_keys))
        .routes(routes!(get_api_key, revoke_api_key))
}

/// The caller: organization, principal, role, and the key's pool scope if any.
#[utoipa::path(get, path = "/v1/me", tag = "identity",
    responses((status = 200, body = Me), (status = 401, body = Problem), (status = 429, body = Problem)))]
async fn me(State(s): State<AppState>, ctx: Ctx) -> Result<Json<Me>, ApiError> {
    Ok(Json(organization::me(&s.svc, &ctx).await?))
}

/// Create a user (org_admin).
#[utoipa::path(post, path = "/v1/users", tag = "identity", request_body = CreateUser,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = User, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn create_user(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiJson(req): ApiJson<CreateUser>,
) -> Result<Response, ApiError> {
    let u = user::create(&s.svc, &ctx, &req).await?;
    Ok(with_etag(StatusCode::CREATED, u.version, u))
}

/// List users (org_admin).
#[utoipa::path(get, path = "/v1/users", tag = "identity", params(PageParams),
    responses((status = 200, body = UserList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn list_users(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<UserList>, ApiError> {
    Ok(Json(user::list(&s.svc, &ctx, &p).await?))
}

/// A user (org_admin, or the user themselves).
#[utoipa::path(get, path = "/v1/users/{id}", tag = "identity", params(("id" = UserId, Path)),
    responses((status = 200, body = User, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn get_user(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<UserId>,
) -> Result<Response, ApiError> {
    let u = user::get(&s.svc, &ctx, &id).await?;
    Ok(with_etag(StatusCode::OK, u.version, u))
}

/// Change name or password (the user or org_admin) or role (org_admin).
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "identity", request_body = UpdateUser,
    params(("id" = UserId, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 200, body = User, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 412, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn update_user(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<UserId>,
    IfMatch(v): IfMatch,
    ApiJson(req): ApiJson<UpdateUser>,
) -> Result<Response, ApiError> {
    let u = user::update(&s.svc, &ctx, &id, v, &req).await?;
    Ok(with_etag(StatusCode::OK, u.version, u))
}

/// Delete a user (org_admin): its keys are revoked and its tokens stop working at once.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "identity", params(("id" = UserId, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 429, body = Problem)))]
async fn delete_user(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<UserId>,
) -> Result<StatusCode, ApiError> {
    user::delete(&s.svc, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create a service account (org_admin).
#[utoipa::path(post, path = "/v1/service-accounts", tag = "identity", request_body = CreateServiceAccount,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = ServiceAccount, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn create_service_account(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiJson(req): ApiJson<CreateServiceAccount>,
) -> Result<Response, ApiError> {
    let sa = service_account::create(&s.svc, &ctx, &req).await?;
    Ok(with_etag(StatusCode::CREATED, sa.version, sa))
}

/// List service accounts (org_admin).
#[utoipa::path(get, path = "/v1/service-accounts", tag = "identity", params(PageParams),
    responses((status = 200, body = ServiceAccountList), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn list_service_accounts(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<ServiceAccountList>, ApiError> {
    Ok(Json(service_account::list(&s.svc, &ctx, &p).await?))
}

#[utoipa::path(get, path = "/v1/service-accounts/{id}", tag = "identity", params(("id" = ServiceAccountId, Path)),
    responses((status = 200, body = ServiceAccount, headers(("ETag" = String))), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn get_service_account(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<ServiceAccountId>,
) -> Result<Response, ApiError> {
    let sa = service_account::get(&s.svc, &ctx, &id).await?;
    Ok(with_etag(StatusCode::OK, sa.version, sa))
}

/// Delete a service account (org_admin); its keys are revoked.
#[utoipa::path(delete, path = "/v1/service-accounts/{id}", tag = "identity", params(("id" = ServiceAccountId, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 429, body = Problem)))]
async fn delete_service_account(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<ServiceAccountId>,
) -> Result<StatusCode, ApiError> {
    service_account::delete(&s.svc, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Create an API key; the response is the only place its secret ever appears.
///
/// With an `Idempotency-Key`, a retry does not get the secret again (it is
/// never stored in the clear): it gets 409 `idempotency_secret_not_replayed`
/// naming the key that was created.
#[utoipa::path(post, path = "/v1/api-keys", tag = "identity", request_body = CreateApiKey,
    params(("Idempotency-Key" = Option<String>, Header)),
    responses((status = 201, body = ApiKeyCreated), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
async fn create_api_key(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiJson(req): ApiJson<CreateApiKey>,
) -> Result<Response, ApiError> {
    let created = api_key::create(&s.svc, &ctx, &req).await?;
    let detail = format!(
        "this Idempotency-Key already created API key {}; its secret is shown only once and is not stored: revoke the key if the secret was lost, and create another",
        created.api_key.id
    );
    let mut response = (StatusCode::CREATED, Json(created)).into_response();
    response
        .extensions_mut()
        .insert(super::idempotency::SecretResponse { detail });
    Ok(response)
}

/// API keys: all of the organization for org_admin, the caller's own otherwise.
#[utoipa::path(get, path = "/v1/api-keys", tag = "identity", params(PageParams),
    responses((status = 200, body = ApiKeyList), (status = 401, body = Problem), (status = 422, body = Problem),
        (status = 429, body = Problem)))]
async fn list_api_keys(
    State(s): State<AppState>,
    ctx: Ctx,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<ApiKeyList>, ApiError> {
    Ok(Json(api_key::list(&s.svc, &ctx, &p).await?))
}

#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "identity", params(("id" = ApiKeyId, Path)),
    responses((status = 200, body = ApiKey), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 429, body = Problem)))]
async fn get_api_key(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<ApiKeyId>,
) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(api_key::get(&s.svc, &ctx, &id).await?))
}

/// Revoke an API key (its owner or org_admin); tokens exchanged for it stop working at once.
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "identity", params(("id" = ApiKeyId, Path)),
    responses((status = 204), (status = 401, body = Problem), (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn revoke_api_key(
    State(s): State<AppState>,
    ctx: Ctx,
    PathId(id): PathId<ApiKeyId>,
) -> Result<StatusCode, ApiError> {
    api_key::revoke(&s.svc, &ctx, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

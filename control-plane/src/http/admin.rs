//! `/admin/v1`: the platform operator's API (its own bearer credential, `auth.admin_token`).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use sluice_api_types::{
    CreateOrganization, OrganizationCreated, OrganizationList, PageParams, Problem,
};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiJson, ApiQuery, current_request_id};
use crate::service::organization;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(create_organization, list_organizations))
        .routes(routes!(rotate_signing_key))
}

/// Create an organization and its first org_admin.
#[utoipa::path(post, path = "/admin/v1/organizations", tag = "admin", request_body = CreateOrganization,
    security(("admin_token" = [])),
    responses((status = 201, body = OrganizationCreated), (status = 401, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)))]
async fn create_organization(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<CreateOrganization>,
) -> Result<(StatusCode, Json<OrganizationCreated>), ApiError> {
    let created = organization::create(&s.svc, &req, current_request_id().as_deref()).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/admin/v1/organizations", tag = "admin", params(PageParams), security(("admin_token" = [])),
    responses((status = 200, body = OrganizationList), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn list_organizations(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> Result<Json<OrganizationList>, ApiError> {
    Ok(Json(organization::list(&s.svc, &p).await?))
}

/// Retire the active token signing key and make a new one. Tokens signed with
/// the old key keep verifying until they expire.
#[utoipa::path(post, path = "/admin/v1/signing-keys/rotate", tag = "admin", security(("admin_token" = [])),
    responses((status = 200, description = "The new key id", body = Object), (status = 401, body = Problem)))]
async fn rotate_signing_key(
    State(s): State<AppState>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let kid = s
        .svc
        .keys
        .rotate_now()
        .await
        .map_err(crate::service::ServiceError::Internal)?;
    Ok(Json(serde_json::json!({ "kid": kid })))
}

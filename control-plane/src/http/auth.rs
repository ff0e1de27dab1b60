//! Authentication: the bearer-token middleware of `/v1`, the token endpoints
//! and the JWKS document.

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sluice_api_types::{LoginRequest, Problem, SignupRequest, TokenRequest, TokenResponse};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::error::{ApiError, ApiJson, current_request_id};
use crate::service::{Ctx, ServiceError, auth, organization};

/// Verifies the bearer token, applies the credential's rate limit and puts the
/// caller's [`Ctx`] into the request.
pub async fn require_bearer(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .map(str::to_owned);
    let Some(token) = token else {
        return ApiError::from(ServiceError::Unauthenticated(
            "this endpoint needs Authorization: Bearer <access token> (see POST /v1/auth/token)"
                .into(),
        ))
        .into_response();
    };
    let ctx = match &state.svc.oidc {
        Some(oidc) if oidc.is_issuer_of(&token) => {
            crate::service::oidc::authenticate(&state.svc, oidc, &token, current_request_id()).await
        }
        _ => state
            .svc
            .keys
            .verify(&token)
            .await
            .and_then(|claims| auth::authenticate(claims, current_request_id())),
    };
    let ctx = match ctx {
        Ok(c) => c,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let credential = match &ctx.api_key_id {
        Some(k) => k.to_string(),
        None => ctx.actor().to_owned(),
    };
    if let Err(retry_after_s) = state.limiter.check(&credential).await {
        return ApiError::RateLimited { retry_after_s }.into_response();
    }
    req.extensions_mut().insert(ctx);
    next.run(req).await
}

impl<S: Send + Sync> FromRequestParts<S> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Ctx>().cloned().ok_or_else(|| {
            ServiceError::Unauthenticated("no credential was presented".into()).into()
        })
    }
}

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(token))
        .routes(routes!(login))
        .routes(routes!(signup))
        .routes(routes!(jwks))
}

/// Exchange an API key (id + secret) for a short-lived access token.
///
/// `Idempotency-Key` is not needed here: issuing a token changes nothing.
#[utoipa::path(post, path = "/v1/auth/token", tag = "auth", request_body = TokenRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn token(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<TokenRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    Ok(Json(
        auth::exchange_api_key(&s.svc, &req.key_id, &req.secret).await?,
    ))
}

/// Console login: email + password for a short-lived access token.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = Problem), (status = 422, body = Problem)))]
async fn login(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    if let Err(retry_after_s) = s
        .limiter
        .check(&format!("login:{}", req.email.to_ascii_lowercase()))
        .await
    {
        return Err(ApiError::RateLimited { retry_after_s });
    }
    Ok(Json(auth::login(&s.svc, &req.email, &req.password).await?))
}

/// Self-service signup (only when the server enables it): a new organization
/// with the caller as its org_admin, logged in.
#[utoipa::path(post, path = "/v1/signup", tag = "auth", request_body = SignupRequest,
    responses((status = 201, body = TokenResponse), (status = 403, body = Problem), (status = 409, body = Problem),
        (status = 422, body = Problem)))]
async fn signup(
    State(s): State<AppState>,
    ApiJson(req): ApiJson<SignupRequest>,
) -> Result<(StatusCode, Json<TokenResponse>), ApiError> {
    let t = organization::signup(&s.svc, &req, current_request_id().as_deref()).await?;
    Ok((StatusCode::CREATED, Json(t)))
}

/// The public keys that verify this server's access tokens (JWKS, RFC 7517).
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "auth",
    responses((status = 200, description = "JWK set of Ed25519 keys (kty OKP)", body = Object)))]
async fn jwks(State(s): State<AppState>) -> Json<serde_json::Value> {
    Json(s.svc.keys.jwks().await)
}

/// `Authorization: Bearer <token>` of the platform operator (`auth.admin_token`).
pub async fn require_admin(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let configured = &state.svc.cfg.auth.admin_token;
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = !configured.is_empty()
        && aws_lc_rs::constant_time::verify_slices_are_equal(
            given.as_bytes(),
            configured.as_bytes(),
        )
        .is_ok();
    if !ok {
        return ApiError::from(ServiceError::Unauthenticated(if configured.is_empty() {
            "the admin API is disabled (auth.admin_token is not set)".into()
        } else {
            "the admin API needs the platform operator's token".into()
        }))
        .into_response();
    }
    next.run(req).await
}

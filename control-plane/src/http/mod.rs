//! The HTTP surface: routes (registered with their OpenAPI docs), middleware
//! and the server loop. Handlers are thin: extract → one service call → response.

mod admin;
mod application;
mod auth;
mod budget;
mod compute_pool;
pub mod error;
mod health;
mod idempotency;
mod identity;
mod invoice;
mod operation;
mod price_book;
pub mod rate_limit;
mod savepoint;
mod usage;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::HeaderName;
use axum::middleware::{Next, from_fn, from_fn_with_state};
use axum::response::Response;
use sqlx::PgPool;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;

use crate::service::Service;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
    pub svc: Service,
    pub limiter: Arc<rate_limit::RateLimiter>,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

#[derive(OpenApi)]
#[openapi(
    info(title = "Sluice API", version = "1", description = "Managed stream processing: organizations, identity, compute pools and applications. Errors are application/problem+json (RFC 9457)."),
    paths(application::action_docs::start, application::action_docs::stop, application::action_docs::rollback, savepoint::action_docs::export),
    modifiers(&Security),
    tags(
        (name = "auth", description = "Tokens, login, signup and the JWKS"),
        (name = "identity", description = "The caller, users, service accounts and API keys"),
        (name = "compute-pools", description = "KPU budgets applications are admitted against"),
        (name = "applications", description = "Streaming jobs: spec, versions, intents"),
        (name = "operations", description = "Asynchronous actions"),
        (name = "savepoints", description = "Savepoint backups: taken, scheduled, retained, imported, exported, disposed of"),
        (name = "audit", description = "Every accepted mutation"),
        (name = "billing", description = "Usage, invoices and budgets"),
        (name = "admin", description = "The platform operator's API"),
    )
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let jwt = Http::builder()
            .scheme(HttpAuthScheme::Bearer)
            .bearer_format("JWT")
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(jwt));
        components.add_security_scheme(
            "admin_token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        // Every /v1 route needs a bearer token except the ones that hand tokens out.
        for (path, item) in openapi.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") || path.starts_with("/v1/auth/") || path == "/v1/signup" {
                continue;
            }
            for op in [
                &mut item.get,
                &mut item.post,
                &mut item.patch,
                &mut item.put,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                op.security = Some(vec![SecurityRequirement::new(
                    "bearer",
                    Vec::<String>::new(),
                )]);
            }
        }
    }
}

fn tenant_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(identity::routes())
        .merge(compute_pool::routes())
        .merge(application::routes())
        .merge(operation::routes())
        .merge(savepoint::routes())
        .merge(usage::routes())
        .merge(invoice::routes())
        .merge(budget::routes())
}

/// The OpenAPI document of every route (what `/openapi.json` serves and
/// `openapi/openapi.json` commits).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .merge(tenant_routes())
        .merge(auth::routes())
        .merge(admin::routes())
        .merge(price_book::routes())
        .into_openapi();
    // Modifiers ran on the base document only; run the security pass over the merged paths.
    utoipa::Modify::modify(&Security, &mut doc);
    doc
}

pub fn router(state: AppState) -> Router {
    let (tenant, _) = tenant_routes().split_for_parts();
    let tenant = tenant
        .layer(from_fn_with_state(
            state.clone(),
            idempotency::idempotent_post,
        ))
        .layer(from_fn_with_state(state.clone(), auth::require_bearer));
    let (admin, _) = admin::routes()
        .merge(price_book::routes())
        .split_for_parts();
    let admin = admin.layer(from_fn_with_state(state.clone(), auth::require_admin));
    let (public, _) = auth::routes().split_for_parts();
    let body_limit = state.svc.cfg.limits.max_body_bytes;
    Router::new()
        .merge(health::routes())
        .merge(tenant)
        .merge(admin)
        .merge(public)
        .fallback(error::not_found_fallback)
        .method_not_allowed_fallback(error::method_not_allowed_fallback)
        .with_state(state)
        .merge(utoipa_swagger_ui::SwaggerUi::new("/docs").url("/openapi.json", openapi()))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(
            tower::ServiceBuilder::new()
                .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                        let id = req
                            .headers()
                            .get(REQUEST_ID)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("-");
                        tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
                    }),
                )
                .layer(PropagateRequestIdLayer::new(REQUEST_ID))
                .layer(from_fn(scope_request_id)),
        )
}

/// Makes the request id available to error responses (`problem.request_id`).
async fn scope_request_id(req: Request, next: Next) -> Response {
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_owned();
    error::REQUEST_ID.scope(id, next.run(req)).await
}

/// Serves until `shutdown` is cancelled, then lets in-flight requests finish
/// for at most `grace`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: tokio_util::sync::CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let drained = shutdown.clone();
    let server = axum::serve(listener, app)
        .with_graceful_shutdown(async move { drained.cancelled().await })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        r = &mut server => return r.map_err(Into::into),
        _ = shutdown.cancelled() => {}
    }
    match tokio::time::timeout(grace, server).await {
        Ok(r) => r.map_err(Into::into),
        Err(_) => {
            tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "requests still open after the shutdown grace period; closing them"
            );
            Ok(())
        }
    }
}

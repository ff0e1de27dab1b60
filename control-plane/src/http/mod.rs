//! The HTTP surface: routes, middleware and the server loop.

mod health;

use std::time::Duration;

use axum::Router;
use axum::http::HeaderName;
use sqlx::PgPool;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState {
    pub db: PgPool,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(health::routes())
        .with_state(state)
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
                .layer(PropagateRequestIdLayer::new(REQUEST_ID)),
        )
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

//! Process lifecycle of `sluice server`: connect, migrate, serve, shut down in order.

use std::time::Duration;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::http::{self, AppState};
use crate::service::{Service, auth::KeyRing};
use crate::store;

/// A started server: its address and the token that stops it.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub shutdown: CancellationToken,
    pub task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

/// Connects to the database, applies migrations when configured to, binds the
/// listener and serves in a background task.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    // sqlx brings ring and reqwest aws-lc-rs into rustls: with two providers
    // compiled in, rustls needs one chosen before the first TLS client is built.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let db = store::connect(&cfg.database).await?;
    let tenant_db = store::connect_tenant(&cfg.database)?;
    if cfg.database.migrate_on_start {
        store::migrate(&db).await?;
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("bind {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let keys = KeyRing::load(db.clone(), cfg.auth.clone()).await;
    let limiter = std::sync::Arc::new(http::rate_limit::RateLimiter::new(
        cfg.limits.requests_per_second,
        cfg.limits.burst,
    ));
    let oidc = match &cfg.auth.oidc {
        Some(o) => Some(std::sync::Arc::new(crate::service::oidc::Oidc::new(
            o.clone(),
        )?)),
        None => None,
    };
    let svc = Service {
        db: db.clone(),
        tenant_db: tenant_db.clone(),
        cfg: std::sync::Arc::new(cfg.clone()),
        keys,
        oidc,
    };
    let app = http::router(AppState {
        db: db.clone(),
        svc,
        limiter,
    });
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = http::serve(listener, app, token, grace).await;
        // The pools close last, after every request that could use them is done.
        tenant_db.close().await;
        db.close().await;
        served
    });
    Ok(Running {
        addr,
        shutdown,
        task,
    })
}

/// Resolves on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() -> anyhow::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

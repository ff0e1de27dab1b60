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

/// What the server uses but the library does not build itself (storage clients and
/// provisioners that link heavy crates): the binary injects them.
#[derive(Clone, Default)]
pub struct Injected {
    /// Provisioner and storage of applications; None serves the API only (intents are
    /// recorded, no cluster is started).
    pub engine: Option<std::sync::Arc<crate::reconcile::Engine>>,
}

/// Connects to the database, applies migrations when configured to, binds the
/// listener and serves in a background task.
pub async fn start(cfg: Config) -> anyhow::Result<Running> {
    start_with(cfg, Injected::default()).await
}

/// [`start`] with injected dependencies.
pub async fn start_with(cfg: Config, injected: Injected) -> anyhow::Result<Running> {
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
    let limiter = std::sync::Arc::new(http::rate_limit::RateLimiter::shared(
        db.clone(),
        cfg.limits.requests_per_second,
        cfg.limits.burst,
    ));
    let oidc = match &cfg.auth.oidc {
        Some(o) => Some(std::sync::Arc::new(crate::service::oidc::Oidc::new(
            o.clone(),
        )?)),
        None => None,
    };
    // Savepoints use the engine's provisioner and storage; without both they are recorded, not taken.
    let savepoints = match &injected.engine {
        Some(e) => crate::service::savepoint_runtime::SavepointBackend::from_engine(e)
            .await?
            .map(std::sync::Arc::new),
        None => None,
    };
    let svc = Service {
        db: db.clone(),
        tenant_db: tenant_db.clone(),
        cfg: std::sync::Arc::new(cfg.clone()),
        keys,
        oidc,
        savepoints: savepoints.clone(),
        engine: injected
            .engine
            .clone()
            .unwrap_or_else(|| std::sync::Arc::new(crate::reconcile::Engine::disabled())),
    };
    // The reconciler (a standby until it holds the leader lock): stops with the server and
    // is awaited before the pools close.
    let reconciler = injected
        .engine
        .clone()
        .filter(|e| cfg.reconciler.enabled && e.provisioner.is_some())
        .map(|engine| {
            let r = std::sync::Arc::new(crate::reconcile::Reconciler::new(
                db.clone(),
                cfg.database.url.clone(),
                engine,
                cfg.reconciler.clone(),
            ));
            tokio::spawn(r.run(shutdown.clone()))
        });
    // Savepoint scheduler, retention and workers: stop with the server, awaited before the pools close.
    let savepoint_loops = savepoints.filter(|_| cfg.savepoints.enabled).map(|b| {
        crate::service::savepoint_runtime::spawn(
            db.clone(),
            b,
            cfg.savepoints.clone(),
            shutdown.clone(),
        )
    });
    // The budget pass stops with the server (its token) and is awaited before the pools close.
    let budget_pass = (cfg.billing.budget_interval_ms > 0).then(|| {
        crate::service::budget::spawn(
            svc.clone(),
            Duration::from_millis(cfg.billing.budget_interval_ms),
            shutdown.clone(),
        )
    });
    // Keys older than their lifetime name new requests (store::idempotency): purged hourly.
    let idempotency_purge = {
        let db = db.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tick.tick() => {}
                }
                match crate::store::idempotency::purge(&db).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "expired idempotency keys purged"),
                    Err(e) => tracing::warn!(error = %e, "purging idempotency keys failed"),
                }
            }
        })
    };
    let app = http::router(AppState {
        db: db.clone(),
        svc,
        limiter,
    });
    let grace = Duration::from_millis(cfg.shutdown_grace_ms);
    let token = shutdown.clone();
    let task = tokio::spawn(async move {
        let served = http::serve(listener, app, token.clone(), grace).await;
        token.cancel();
        if let Err(e) = idempotency_purge.await {
            tracing::error!(error = %e, "the idempotency purge task failed");
        }
        if let Some(pass) = budget_pass
            && let Err(e) = pass.await
        {
            tracing::error!(error = %e, "the budget pass task failed");
        }
        if let Some(r) = reconciler
            && let Err(e) = r.await
        {
            tracing::error!(error = %e, "the reconciler task failed");
        }
        if let Some(loops) = savepoint_loops
            && let Err(e) = loops.await
        {
            tracing::error!(error = %e, "the savepoint task failed");
        }
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

/// Registers the SIGTERM and SIGINT handlers now and returns what resolves on the first of
/// them (register before serving, so an early signal never meets the default action).
pub fn shutdown_signals() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
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

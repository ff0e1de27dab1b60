//! The reconciler: drives every application's cluster toward its spec (DESIGN §3, §9).
//!
//! - **One leader.** Only the process holding a PostgreSQL advisory lock acts; the lock is
//!   held by a dedicated connection, so a dead leader's lock goes with its connection and a
//!   standby (polling every `interval_ms`) takes over within seconds. The leader re-checks
//!   that it still holds the lock before every pass, and writes nothing otherwise.
//! - **Level-triggered.** A pass lists the applications that may need work (desired
//!   running, not STOPPED, an open run, an operation in progress, being deleted) and takes
//!   idempotent steps for each from what it reads (spec, status, runs) and what the
//!   provisioner observes, never from remembered events. A restarted leader re-adopts the
//!   clusters it finds.
//! - **Bounded.** At most `concurrency` applications at once; an application whose step
//!   failed waits an exponential backoff with jitter before its next attempt.
//! - **Status only on change** ([`crate::store::status::write`]); every phase change is an
//!   event.
//!
//! Failpoints (`--features failpoints`, environment `SLUICE_DEV_FAILPOINTS=name,…`) abort the
//! process at named points between a side effect and its record, for the crash tests.

mod app;
pub mod jobmanager;
pub mod storage;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use sluice_provisioner::{ClusterPhase, Provisioner};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ReconcilerConfig;
pub use storage::{BlobOpener, fs_opener};

/// What the API and the reconciler share about running applications: the provisioner, the
/// blob store opener and a wake-up for the reconciler after an accepted intent.
pub struct Engine {
    pub provisioner: Option<Arc<dyn Provisioner>>,
    pub blobs: BlobOpener,
    /// `{storage.root}`: job roots are `{root}/{org}/{app}`.
    pub storage_root: String,
    /// Environment of the engine processes (S3 endpoint and credentials).
    pub engine_env: BTreeMap<String, String>,
    pub http: reqwest::Client,
    wake: Notify,
}

impl Engine {
    pub fn new(
        provisioner: Option<Arc<dyn Provisioner>>,
        blobs: BlobOpener,
        storage_root: String,
        engine_env: BTreeMap<String, String>,
    ) -> Self {
        Engine {
            provisioner,
            blobs,
            storage_root,
            engine_env,
            http: reqwest::Client::new(),
            wake: Notify::new(),
        }
    }

    /// A server without provisioning (API only).
    pub fn disabled() -> Self {
        Engine::new(None, fs_opener(), String::new(), BTreeMap::new())
    }

    /// Asks the reconciler (if this process leads) for a pass now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }
}

/// The engine of a server configured by `cfg`: its provisioner (local processes, or none),
/// the storage root (created when it is a directory) and `blobs` to open it. The `sluice`
/// binary passes an opener that also knows `s3://`; a Kubernetes provisioner is passed in
/// by the binary as `provisioner`.
pub async fn engine_from_config(
    cfg: &crate::config::Config,
    blobs: BlobOpener,
    provisioner: Option<Arc<dyn Provisioner>>,
) -> Result<Arc<Engine>> {
    use crate::config::ProvisionerKind;
    let root = cfg.storage_root();
    if let Some(dir) = root.strip_prefix("file://") {
        tokio::fs::create_dir_all(dir)
            .await
            .with_context(|| format!("create the storage root {dir}"))?;
    }
    let provisioner: Option<Arc<dyn Provisioner>> = match (cfg.provisioner.kind, provisioner) {
        (_, Some(p)) => Some(p),
        (ProvisionerKind::None, None) => None,
        (ProvisionerKind::Kubernetes, None) => {
            anyhow::bail!(
                "provisioner.kind is kubernetes but this binary has no Kubernetes provisioner"
            )
        }
        (ProvisionerKind::Local, None) => {
            let engine = match &cfg.engine.binary {
                Some(b) => b.clone(),
                None => std::env::current_exe()
                    .context("locate the sluice executable")?
                    .with_file_name("sluice-engine"),
            };
            let mut opts =
                sluice_provisioner::local::LocalOptions::new(cfg.provisioner_root(), engine);
            opts.stop_grace = Duration::from_millis(cfg.provisioner.stop_grace_ms);
            let local = sluice_provisioner::local::LocalProvisioner::open(opts)
                .await
                .context("open the local provisioner")?;
            Some(local as Arc<dyn Provisioner>)
        }
    };
    Ok(Arc::new(Engine::new(
        provisioner,
        blobs,
        root,
        cfg.storage.engine_env.clone(),
    )))
}

/// Aborts the process at a named point when that failpoint is armed.
#[cfg(feature = "failpoints")]
pub fn failpoint(name: &str) {
    if std::env::var("SLUICE_DEV_FAILPOINTS").is_ok_and(|v| v.split(',').any(|f| f.trim() == name))
    {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn failpoint(_name: &str) {}

pub struct Reconciler {
    db: PgPool,
    db_url: String,
    engine: Arc<Engine>,
    cfg: ReconcilerConfig,
    backoff: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Reconciler {
    pub fn new(db: PgPool, db_url: String, engine: Arc<Engine>, cfg: ReconcilerConfig) -> Self {
        Reconciler {
            db,
            db_url,
            engine,
            cfg,
            backoff: Mutex::new(HashMap::new()),
        }
    }

    /// Runs until `shutdown`: waits for leadership, then reconciles every `interval_ms`
    /// (or at once when woken) while it holds it.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let interval = Duration::from_millis(self.cfg.interval_ms.max(10));
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown, interval).await {
                Ok(()) => {}
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "reconciler: not leading")
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }

    /// Takes the lock if free and reconciles while holding it; returns when the lock is not
    /// (or no longer) held.
    async fn lead(&self, shutdown: &CancellationToken, interval: Duration) -> Result<()> {
        let mut conn = PgConnection::connect(&self.db_url)
            .await
            .context("connect the leader-lock session")?;
        let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.cfg.leader_lock_key)
            .fetch_one(&mut conn)
            .await?;
        if !got {
            conn.close().await.ok();
            return Ok(());
        }
        tracing::info!("reconciler: elected leader");
        loop {
            let held: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory'
                 AND pid = pg_backend_pid() AND granted
                 AND ((classid::bigint << 32) | objid::bigint) = $1)",
            )
            .bind(self.cfg.leader_lock_key)
            .fetch_one(&mut conn)
            .await
            .context("re-check leadership")?;
            if !held {
                anyhow::bail!("the leader lock was lost");
            }
            let started = Instant::now();
            match self.pass().await {
                Ok(n) => tracing::debug!(
                    applications = n,
                    ms = started.elapsed().as_millis() as u64,
                    "reconciler pass"
                ),
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "reconciler pass failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => {
                    // Closing the session releases the lock for a standby at once.
                    conn.close().await.ok();
                    return Ok(());
                }
                _ = tokio::time::sleep(interval) => {}
                _ = self.engine.wake.notified() => {}
            }
        }
    }

    /// One pass over every application that may need work; returns how many were looked at.
    pub async fn pass(&self) -> Result<usize> {
        let Some(prov) = self.engine.provisioner.clone() else {
            return Ok(0);
        };
        let mut conn = self.db.acquire().await?;
        let ids = crate::store::reconcile::candidates(&mut conn).await?;
        drop(conn);
        self.delete_orphans(prov.as_ref()).await?;
        let n = ids.len();
        futures::stream::iter(ids)
            .for_each_concurrent(self.cfg.concurrency.max(1), |(app, org)| async move {
                if !self.due(&app) {
                    return;
                }
                match app::reconcile(self, &org, &app).await {
                    Ok(()) => self.succeeded(&app),
                    Err(e) => {
                        let delay = self.failed(&app);
                        tracing::warn!(application = %app, retry_in_ms = delay.as_millis() as u64,
                            error = %format!("{e:#}"), "reconciling an application failed");
                    }
                }
            })
            .await;
        Ok(n)
    }

    /// Clusters no open run accounts for (a crash after a run ended but before its cluster
    /// went, or a run row lost with its database) are deleted.
    async fn delete_orphans(&self, prov: &dyn Provisioner) -> Result<()> {
        let clusters = prov.list().await?;
        let mut conn = self.db.acquire().await?;
        for c in clusters {
            if matches!(c.phase, ClusterPhase::Absent | ClusterPhase::Terminated) {
                continue;
            }
            let Some(run_id) = &c.run_id else { continue };
            let open = crate::store::run::get(&mut conn, run_id)
                .await?
                .is_some_and(|r| r.ended_at.is_none());
            if !open {
                tracing::warn!(cluster = %c.id, run = %run_id, "deleting a cluster no open run accounts for");
                prov.delete(&c.id).await?;
            }
        }
        Ok(())
    }

    fn due(&self, app: &str) -> bool {
        let map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        map.get(app).is_none_or(|(_, at)| Instant::now() >= *at)
    }

    fn succeeded(&self, app: &str) {
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(app);
    }

    fn failed(&self, app: &str) -> Duration {
        let mut map = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.entry(app.to_owned()).or_insert((0, Instant::now()));
        entry.0 = entry.0.saturating_add(1);
        let base = self
            .cfg
            .backoff_initial_ms
            .saturating_mul(1u64 << entry.0.min(20).saturating_sub(1))
            .min(self.cfg.backoff_max_ms);
        // Full jitter in [base/2, base]: retries of many applications do not line up.
        let delay = Duration::from_millis(base / 2 + rand::random_range(0..=base / 2));
        entry.1 = Instant::now() + delay;
        delay
    }
}

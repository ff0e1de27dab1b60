//! The reconciler: drives every application's cluster toward its spec (DESIGN §3, §9).
//!
//! - **One leader, fenced.** Only the process holding a PostgreSQL advisory lock acts; the
//!   lock is held by a dedicated connection, so a dead leader's lock goes with its connection
//!   and a standby (polling every `interval_ms`) takes over within seconds. Each election
//!   increments a leader epoch; every write runs in a transaction fenced by it, so a deposed
//!   leader that has not noticed yet writes nothing and steps down ([`leader`]). The leader
//!   re-checks lock and epoch before every pass. The provisioner acts only under the term:
//!   activated at the epoch (re-reading and re-adopting what a predecessor left), deactivated
//!   when the term ends, so a standby never supervises or restarts a process.
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
pub mod leader;
pub mod storage;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use sluice_provisioner::{ClusterPhase, Provisioner};
use sqlx::PgPool;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::ReconcilerConfig;
pub use leader::{Deposed, FencedTx, Leadership};
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
            // A standby until this process's reconciler is elected (other control planes
            // of this host may share the root).
            let local = sluice_provisioner::local::LocalProvisioner::open_standby(opts)
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
    term: Mutex<Option<leader::Term>>,
}

impl Reconciler {
    pub fn new(db: PgPool, db_url: String, engine: Arc<Engine>, cfg: ReconcilerConfig) -> Self {
        Reconciler {
            db,
            db_url,
            engine,
            cfg,
            backoff: Mutex::new(HashMap::new()),
            term: Mutex::new(None),
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
    /// (or no longer) held, or the term was deposed.
    async fn lead(&self, shutdown: &CancellationToken, interval: Duration) -> Result<()> {
        let Some(mut l) = self.elect().await? else {
            return Ok(());
        };
        let result = self.lead_term(&mut l, shutdown, interval).await;
        // Also on shutdown: closing the session releases the lock for a standby at once.
        self.step_down(l).await;
        result
    }

    async fn lead_term(
        &self,
        l: &mut Leadership,
        shutdown: &CancellationToken,
        interval: Duration,
    ) -> Result<()> {
        let Some((_, deposed)) = self.term_token() else {
            anyhow::bail!("elected without a term");
        };
        loop {
            if !self.still_leads(l).await? {
                anyhow::bail!("the leader lock or epoch {} was lost", l.epoch());
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
            if deposed.is_cancelled() {
                anyhow::bail!("deposed at epoch {}: a newer leader was elected", l.epoch());
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = deposed.cancelled() => {}
                _ = tokio::time::sleep(interval) => {}
                _ = self.engine.wake.notified() => {}
            }
        }
    }

    /// Fails unless this process leads at the current epoch.
    pub(crate) async fn check_fence(&self) -> Result<()> {
        self.fenced().await?.commit().await?;
        Ok(())
    }

    /// One pass over every application that may need work; returns how many were looked at.
    /// Only under leadership (see [`Reconciler::elect`]); refused with [`Deposed`] when a
    /// newer leader was elected.
    pub async fn pass(&self) -> Result<usize> {
        let Some(prov) = self.engine.provisioner.clone() else {
            return Ok(0);
        };
        // Nothing, not even an orphan's deletion, happens outside the term.
        self.check_fence().await?;
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
        if let Some((mine, deposed)) = self.term_token()
            && deposed.is_cancelled()
        {
            let mut c = self.db.acquire().await?;
            let current: i64 =
                sqlx::query_scalar("SELECT epoch FROM reconciler_leader WHERE lock_key = $1")
                    .bind(self.cfg.leader_lock_key)
                    .fetch_optional(&mut *c)
                    .await?
                    .unwrap_or(0);
            return Err(Deposed { mine, current }.into());
        }
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

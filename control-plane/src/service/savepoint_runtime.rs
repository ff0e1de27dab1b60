//! The savepoint background work every control-plane replica runs (DESIGN §8):
//!
//! - the **scheduler** claims due schedules (`FOR UPDATE SKIP LOCKED`), requests one
//!   savepoint per due time and moves the schedule to its next due time in the same
//!   transaction, so each due time is handled once across replicas; after downtime the
//!   missed due times collapse into one savepoint;
//! - **retention** marks expired savepoints DELETING (one replica at a time);
//! - **workers** take PENDING savepoints through the running cluster's JobManager, import
//!   and export them, and dispose of DELETING ones — files first, every object under the
//!   prefix, then the record — retried with backoff until done. None of this needs the
//!   application to be running, except taking a savepoint.
//!
//! Work is shared through the database: a worker leases a row, so another replica
//! resumes it only when this one died.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_trait::async_trait;
use sluice_api_types::{Problem, SavepointId, SavepointOrigin, SavepointStatus};
use sluice_blob::checkpoint::{self, SAVEPOINTS_DIR};
use sluice_blob::savepoints::{copy_snapshot, prefix_size, split_dir_uri};
use sluice_blob::{BlobError, BlobLocation, BlobPath, BlobStore, FsStore};
use sluice_provisioner::{ClusterId, ClusterPhase, Provisioner};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::savepoint_jm::{JmError, JobManager, TriggerState};
use super::savepoint_schedule::When;
use crate::config::SavepointConfig;
use crate::store::{self, StoreError};

/// Opens blob stores by URI (`file://`, `s3://`). The control-plane library links no S3
/// client: the binary injects an opener that can (see `sluice-blob-s3::open`).
#[async_trait]
pub trait BlobOpener: Send + Sync {
    async fn open(&self, uri: &str) -> Result<Arc<dyn BlobStore>, BlobError>;
}

/// Opens `file://` URIs only.
pub struct FsOpener;

#[async_trait]
impl BlobOpener for FsOpener {
    async fn open(&self, uri: &str) -> Result<Arc<dyn BlobStore>, BlobError> {
        match BlobLocation::parse(uri)? {
            loc @ BlobLocation::File { .. } => Ok(Arc::new(FsStore::open_location(&loc).await?)),
            BlobLocation::S3 { .. } => Err(BlobError::InvalidUri {
                uri: uri.to_owned(),
                reason: "this server opens file:// storage only".into(),
            }),
        }
    }
}

/// Where savepoints live and how to reach the clusters that take them: the engine's
/// provisioner and storage (see [`crate::reconcile::Engine`]).
pub struct SavepointBackend {
    /// The platform's storage root: savepoints go to `{root}/{org}/{app}/savepoints/{id}`.
    pub root_uri: String,
    pub root: Arc<dyn BlobStore>,
    /// Opens other stores (import sources, export targets).
    pub opener: crate::reconcile::BlobOpener,
    pub provisioner: Arc<dyn Provisioner>,
}

impl std::fmt::Debug for SavepointBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SavepointBackend")
            .field("root_uri", &self.root_uri)
            .field("provisioner", &self.provisioner.kind())
            .finish()
    }
}

impl SavepointBackend {
    /// None when the engine has no provisioner or no storage root (an API-only server).
    pub async fn from_engine(engine: &crate::reconcile::Engine) -> anyhow::Result<Option<Self>> {
        let Some(provisioner) = engine.provisioner.clone() else {
            return Ok(None);
        };
        if engine.storage_root.is_empty() {
            return Ok(None);
        }
        let root = engine
            .blobs
            .open(&engine.storage_root)
            .await
            .with_context(|| format!("open the savepoint storage {}", engine.storage_root))?;
        Ok(Some(SavepointBackend {
            root_uri: engine.storage_root.trim_end_matches('/').to_owned(),
            root,
            opener: engine.blobs.clone(),
            provisioner,
        }))
    }

    /// Opens the store at `uri` (an import source or export target's parent).
    pub async fn open(&self, uri: &str) -> Result<Arc<dyn BlobStore>, BlobError> {
        self.opener.open(uri).await
    }

    /// The savepoint's prefix in [`root`](Self::root).
    pub fn key(&self, org: &str, app: &str, sp: &str) -> Result<BlobPath, BlobError> {
        BlobPath::new(format!("{org}/{app}/{SAVEPOINTS_DIR}/{sp}"))
    }

    /// The URI of a key of the root store.
    pub fn uri_of(&self, key: &BlobPath) -> String {
        format!("{}/{key}", self.root_uri)
    }
}

/// What one scheduler pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PassReport {
    /// Due schedules this pass claimed.
    pub claimed: u64,
    /// Savepoints it requested.
    pub requested: u64,
    /// Due times it skipped (application stopped or deleted).
    pub skipped: u64,
    /// Due times whose savepoint already existed (the unique index caught a second
    /// scheduler): zero unless the claim is broken.
    pub duplicates: u64,
}

/// Claims every due schedule, `batch` per transaction, and requests their savepoints.
pub async fn scheduler_pass(db: &PgPool, batch: u32) -> Result<PassReport, StoreError> {
    let batch = i64::from(batch.max(1));
    let mut report = PassReport::default();
    // Schedules share few distinct expressions: parse each once per pass.
    type Key = (Option<String>, Option<String>, Option<i64>);
    let mut cache: HashMap<Key, Result<When, String>> = HashMap::new();
    loop {
        let mut tx = db.begin().await?;
        let due = store::savepoint_schedule::claim_due(&mut tx, batch).await?;
        let claimed = due.len() as i64;
        let mut handled = Vec::with_capacity(due.len());
        for d in due {
            let when = cache
                .entry((d.cron.clone(), d.timezone.clone(), d.interval_s))
                .or_insert_with(|| {
                    When::from_stored(d.cron.as_deref(), d.timezone.as_deref(), d.interval_s)
                });
            let (next_run_at, bad) = match when {
                Ok(w) => (w.next_after(Some(d.next_run_at), d.db_now), None),
                Err(e) => (None, Some(e.clone())),
            };
            let (outcome, savepoint) = match (bad, d.desired_state.as_deref(), d.app_version) {
                (Some(e), _, _) => (format!("schedule disabled: {e}"), None),
                (None, None, _) | (None, _, None) => {
                    ("skipped: the application was deleted".to_owned(), None)
                }
                (None, Some("running"), Some(v)) => {
                    let id = SavepointId::new();
                    (
                        format!("savepoint {id} requested"),
                        Some((id.to_string(), v)),
                    )
                }
                (None, Some(state), _) => (format!("skipped: the application is {state}"), None),
            };
            if savepoint.is_none() {
                report.skipped += 1;
            }
            handled.push(store::savepoint_schedule::Handled {
                application_id: d.application_id,
                org_id: d.org_id,
                due: d.next_run_at,
                next_run_at: if d.desired_state.is_none() {
                    None
                } else {
                    next_run_at
                },
                outcome,
                savepoint,
            });
        }
        let wanted = handled.iter().filter(|h| h.savepoint.is_some()).count() as u64;
        let inserted = store::savepoint_schedule::record(&mut tx, &handled).await?;
        tx.commit().await?;
        report.claimed += claimed as u64;
        report.requested += inserted;
        report.duplicates += wanted - inserted.min(wanted);
        if claimed < batch {
            return Ok(report);
        }
    }
}

/// Marks expired savepoints (and those of deleted applications whose policy disposes)
/// DELETING. One replica at a time: the others skip the pass rather than wait.
pub async fn retention_pass(db: &PgPool) -> Result<usize, StoreError> {
    let mut tx = db.begin().await?;
    let mine: bool = sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtext('sluice.savepoint.retention'))",
    )
    .fetch_one(&mut *tx)
    .await?;
    if !mine {
        return Ok(0);
    }
    let rows = store::savepoint::expire(&mut tx).await?;
    store::savepoint::audit_system(&mut tx, "savepoint.expire", &rows).await?;
    tx.commit().await?;
    if !rows.is_empty() {
        tracing::info!(
            savepoints = rows.len(),
            "retention: savepoints marked for disposal"
        );
    }
    Ok(rows.len())
}

/// Runs the savepoint loops until `shutdown`; in-flight work is abandoned on shutdown
/// (its lease runs out and a replica resumes it).
pub fn spawn(
    db: PgPool,
    backend: Arc<SavepointBackend>,
    cfg: SavepointConfig,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let rt = Arc::new(Runtime {
            db,
            backend,
            http: reqwest::Client::new(),
            permits: Arc::new(Semaphore::new(cfg.concurrency.max(1))),
            in_flight: std::sync::Mutex::new(HashSet::new()),
            cfg,
        });
        let mut tasks = tokio::task::JoinSet::new();
        let tick = Duration::from_millis(rt.cfg.tick_ms.max(10));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(jitter(tick)) => {}
            }
            while tasks.try_join_next().is_some() {}
            match scheduler_pass(&rt.db, rt.cfg.scheduler_batch).await {
                Ok(r) if r.duplicates > 0 => {
                    tracing::error!(?r, "scheduler: a due time already had its savepoint")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %format!("{e:#}"), "scheduler pass failed"),
            }
            if let Err(e) = retention_pass(&rt.db).await {
                tracing::warn!(error = %format!("{e:#}"), "retention pass failed");
            }
            if let Err(e) = rt.clone().dispatch(&mut tasks).await {
                tracing::warn!(error = %format!("{e:#}"), "claiming savepoint work failed");
            }
        }
        tasks.shutdown().await;
        // Hand the leases of abandoned work back, so that another replica resumes it now
        // rather than when the lease runs out (a take resumes polling its trigger).
        let abandoned: Vec<String> = rt
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .collect();
        if !abandoned.is_empty() {
            let released = match rt.db.acquire().await {
                Ok(mut c) => store::savepoint::release(&mut c, &abandoned).await,
                Err(e) => Err(e.into()),
            };
            match released {
                Ok(()) => tracing::info!(
                    savepoints = abandoned.len(),
                    "savepoint work handed back on shutdown"
                ),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "handing savepoint work back failed; its leases will run out")
                }
            }
        }
    })
}

struct Runtime {
    db: PgPool,
    backend: Arc<SavepointBackend>,
    http: reqwest::Client,
    permits: Arc<Semaphore>,
    /// Savepoints this process works on (leased), to hand back on shutdown.
    in_flight: std::sync::Mutex<HashSet<String>>,
    cfg: SavepointConfig,
}

/// `d` ± 10 %, so replicas started together do not poll in lockstep.
fn jitter(d: Duration) -> Duration {
    let r = (uuid::Uuid::new_v4().as_u128() % 2001) as f64 / 10_000.0 - 0.1;
    d.mul_f64(1.0 + r)
}

/// A step that may succeed later: the row is retried after a backoff.
struct Retry {
    code: &'static str,
    message: String,
    /// The JobManager lost the trigger: take the savepoint again.
    back_to_pending: bool,
}

fn retry(code: &'static str, e: impl std::fmt::Display) -> Retry {
    Retry {
        code,
        message: e.to_string(),
        back_to_pending: false,
    }
}

/// Retryable storage failures (the store is down or throttling) as opposed to a
/// missing or malformed snapshot.
fn blob_transient(e: &BlobError) -> bool {
    matches!(e, BlobError::Backend { .. } | BlobError::Io { .. })
}

impl Runtime {
    fn track(&self, id: &str, working: bool) {
        let mut set = self
            .in_flight
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if working {
            set.insert(id.to_owned());
        } else {
            set.remove(id);
        }
    }

    fn backoff_ms(&self, attempts: i32) -> u64 {
        let exp = u32::try_from(attempts.clamp(1, 30) - 1).unwrap_or(0);
        let base = self
            .cfg
            .backoff_initial_ms
            .saturating_mul(1u64 << exp.min(20))
            .min(self.cfg.backoff_max_ms.max(1));
        // Full jitter on the upper half, so a failing store is not hit by every row at once.
        base / 2 + (uuid::Uuid::new_v4().as_u128() % u128::from(base / 2 + 1)) as u64
    }

    /// Claims as much work as there are free permits and starts it.
    async fn dispatch(
        self: Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Result<(), StoreError> {
        let lease_take = (self.cfg.take_timeout_s + 60) as f64;
        // Disposal and copies hold their lease for as long as a large savepoint may take.
        let lease_io = 600.0;
        let mut conn = self.db.acquire().await?;
        let free = self.permits.available_permits() as i64;
        if free > 0 {
            let mut claimed = store::savepoint::claim(
                &mut conn,
                &["PENDING", "IN_PROGRESS"],
                free,
                lease_take,
                true,
            )
            .await?;
            // Two rows of one application in the same claim: take the oldest, give the rest back.
            claimed.sort_by(|a, b| a.id.cmp(&b.id));
            let mut apps = std::collections::HashSet::new();
            let (mine, back): (Vec<_>, Vec<_>) = claimed
                .into_iter()
                .partition(|r| apps.insert(r.application_id.clone()));
            if !back.is_empty() {
                let ids: Vec<String> = back.into_iter().map(|r| r.id).collect();
                store::savepoint::release(&mut conn, &ids).await?;
            }
            for row in mine {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return Ok(());
                };
                let rt = self.clone();
                let id = row.id.clone();
                rt.track(&id, true);
                tasks.spawn(async move {
                    rt.take(row).await;
                    rt.track(&id, false);
                    drop(permit);
                });
            }
        }
        let free = self.permits.available_permits() as i64;
        if free > 0 {
            for row in
                store::savepoint::claim(&mut conn, &["DELETING"], free, lease_io, false).await?
            {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return Ok(());
                };
                let rt = self.clone();
                let id = row.id.clone();
                rt.track(&id, true);
                tasks.spawn(async move {
                    rt.dispose(row).await;
                    rt.track(&id, false);
                    drop(permit);
                });
            }
        }
        let free = self.permits.available_permits() as i64;
        if free > 0 {
            for row in store::savepoint::claim_exports(&mut conn, free, lease_io).await? {
                let Ok(permit) = self.permits.clone().acquire_owned().await else {
                    return Ok(());
                };
                let rt = self.clone();
                tasks.spawn(async move {
                    rt.export(row).await;
                    drop(permit);
                });
            }
        }
        Ok(())
    }

    /// Runs one store write on its own connection; a failure is logged and the lease
    /// makes the row due again.
    async fn write<F, T>(&self, what: &str, f: F) -> Option<T>
    where
        F: for<'c> FnOnce(
            &'c mut sqlx::PgConnection,
        ) -> futures::future::BoxFuture<'c, Result<T, StoreError>>,
    {
        let r = match self.db.acquire().await {
            Ok(mut c) => f(&mut c).await,
            Err(e) => Err(e.into()),
        };
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), what, "savepoint store write failed; the lease will retry it");
                None
            }
        }
    }

    async fn fail(&self, id: &str, code: &str, message: &str) {
        tracing::info!(savepoint = id, code, message, "savepoint failed");
        let (id, code, message) = (id.to_owned(), code.to_owned(), message.to_owned());
        self.write("fail savepoint", move |c| {
            Box::pin(async move { store::savepoint::fail(c, &id, &code, &message).await })
        })
        .await;
    }

    async fn take(&self, row: store::savepoint::Row) {
        let id = row.id.clone();
        let attempts = row.attempts;
        let result = match row.origin() {
            Ok(SavepointOrigin::Imported) => self.import(&row).await,
            Ok(origin) => self.take_from_cluster(&row, origin).await,
            Err(e) => Err(retry("corrupt_row", e)),
        };
        if let Err(r) = result {
            if attempts >= i32::try_from(self.cfg.max_attempts).unwrap_or(i32::MAX) {
                self.fail(
                    &id,
                    r.code,
                    &format!("gave up after {attempts} attempts: {}", r.message),
                )
                .await;
                return;
            }
            let delay = self.backoff_ms(attempts);
            tracing::info!(savepoint = %id, attempts, delay_ms = delay, code = r.code, message = %r.message, "savepoint attempt failed; retrying");
            self.write("schedule savepoint retry", move |c| {
                Box::pin(async move {
                    store::savepoint::retry_later(
                        c,
                        &id,
                        delay,
                        r.code,
                        &r.message,
                        r.back_to_pending,
                    )
                    .await
                })
            })
            .await;
        }
    }

    async fn take_from_cluster(
        &self,
        row: &store::savepoint::Row,
        origin: SavepointOrigin,
    ) -> Result<(), Retry> {
        let key = self
            .backend
            .key(&row.org_id, &row.application_id, &row.id)
            .map_err(|e| retry("invalid_key", e))?;
        let location = self.backend.uri_of(&key);
        let app = row.application_id.clone();
        let state = self
            .write("read application", move |c| {
                Box::pin(async move { store::savepoint::app_state(c, &app).await })
            })
            .await
            .ok_or_else(|| retry("database_error", "reading the application failed"))?;
        let Some((desired, _)) = state else {
            self.fail(
                &row.id,
                "application_deleted",
                "the application was deleted before the savepoint was taken",
            )
            .await;
            return Ok(());
        };
        let cluster = ClusterId {
            org_id: row.org_id.clone(),
            application_id: row.application_id.clone(),
        };
        let obs = self
            .backend
            .provisioner
            .observe(&cluster)
            .await
            .map_err(|e| retry("provisioner_error", e))?;
        let (ClusterPhase::Running, Some(rest)) = (obs.phase, obs.rest_url.as_deref()) else {
            self.fail(
                &row.id,
                "application_not_running",
                &format!(
                    "no savepoint was taken: the application is not running (desired state {desired}, cluster {})",
                    obs.phase.as_str()
                ),
            )
            .await;
            return Ok(());
        };
        let jm = JobManager::new(self.http.clone(), rest, obs.auth_token.clone());
        let jm_err = |e: JmError| match e {
            JmError::UnknownTrigger { .. } => Retry {
                code: "trigger_lost",
                message: e.to_string(),
                back_to_pending: true,
            },
            e => retry("jobmanager_unavailable", e),
        };
        let in_progress = row.status().ok() == Some(SavepointStatus::InProgress);
        let (job, trigger) = match (in_progress, &row.job_id, &row.trigger_id) {
            (true, Some(j), Some(t)) => (j.clone(), t.clone()),
            _ => {
                let job = match jm.job().await {
                    Ok(Some((job, status))) if status == "RUNNING" => job,
                    // Starting or restarting: worth another attempt shortly.
                    Ok(Some((_, status)))
                        if matches!(status.as_str(), "CREATED" | "RESTARTING" | "INITIALIZING") =>
                    {
                        return Err(retry(
                            "job_not_running",
                            format!("the job is {status}, not RUNNING yet"),
                        ));
                    }
                    Ok(other) => {
                        let what =
                            other.map_or("no job".to_owned(), |(_, s)| format!("its job {s}"));
                        self.fail(
                            &row.id,
                            "job_not_running",
                            &format!(
                                "no savepoint was taken: the application's cluster runs {what}"
                            ),
                        )
                        .await;
                        return Ok(());
                    }
                    Err(JmError::Rejected { url, detail }) => {
                        self.fail(&row.id, "jobmanager_rejected", &format!("{url}: {detail}"))
                            .await;
                        return Ok(());
                    }
                    Err(e) => return Err(jm_err(e)),
                };
                let cancel = origin == SavepointOrigin::OnStop;
                // A refusal (one savepoint at a time, job restarting) is retried until
                // the attempts run out.
                let trigger = jm
                    .trigger(&job, &location, cancel)
                    .await
                    .map_err(|e| match e {
                        JmError::Rejected { .. } => retry("jobmanager_rejected", e),
                        e => jm_err(e),
                    })?;
                let (id, j, t, l) = (
                    row.id.clone(),
                    job.clone(),
                    trigger.clone(),
                    location.clone(),
                );
                let moved = self
                    .write("record trigger", move |c| {
                        Box::pin(async move {
                            store::savepoint::set_in_progress(c, &id, &j, &t, &l).await
                        })
                    })
                    .await;
                if moved != Some(true) {
                    // Deleted or failed meanwhile: nothing more to do with it here.
                    return Ok(());
                }
                (job, trigger)
            }
        };
        let deadline = Instant::now() + Duration::from_secs(self.cfg.take_timeout_s.max(1));
        let poll = Duration::from_millis(self.cfg.poll_ms.max(10));
        loop {
            match jm.poll(&job, &trigger).await {
                Ok(TriggerState::InProgress) => {
                    if Instant::now() > deadline {
                        self.fail(
                            &row.id,
                            "timeout",
                            &format!(
                                "the savepoint was still in progress after {} s",
                                self.cfg.take_timeout_s
                            ),
                        )
                        .await;
                        return Ok(());
                    }
                    tokio::time::sleep(poll).await;
                }
                Ok(TriggerState::Completed { location: reported }) => {
                    // Like Flink, a JobManager may write into a new directory below the
                    // target; it must stay under the savepoint's prefix, which disposal deletes.
                    let base = format!("{}/", self.backend.root_uri);
                    let Some(at) = reported
                        .trim_end_matches('/')
                        .strip_prefix(&base)
                        .and_then(|k| BlobPath::new(k).ok())
                        .filter(|k| *k == key || k.is_under(&key))
                    else {
                        self.fail(
                            &row.id,
                            "savepoint_outside_prefix",
                            &format!("the JobManager wrote the savepoint to {reported}, outside {location}"),
                        )
                        .await;
                        return Ok(());
                    };
                    let meta = at
                        .join(checkpoint::METADATA_FILE)
                        .map_err(|e| retry("invalid_key", e))?;
                    match self.backend.root.head(&meta).await {
                        Ok(_) => {}
                        Err(e) if e.is_not_found() => {
                            self.fail(
                                &row.id,
                                "savepoint_incomplete",
                                &format!("the JobManager reported {reported} complete but it has no _metadata"),
                            )
                            .await;
                            return Ok(());
                        }
                        Err(e) => return Err(retry("storage_error", e)),
                    }
                    let size = prefix_size(self.backend.root.as_ref(), &key)
                        .await
                        .map_err(|e| retry("storage_error", e))?;
                    let (id, l) = (row.id.clone(), self.backend.uri_of(&at));
                    self.write("complete savepoint", move |c| {
                        Box::pin(
                            async move { store::savepoint::complete(c, &id, &l, size.bytes).await },
                        )
                    })
                    .await;
                    tracing::info!(savepoint = %row.id, bytes = size.bytes, objects = size.objects, "savepoint completed");
                    return Ok(());
                }
                Ok(TriggerState::Failed { cause }) => {
                    self.fail(&row.id, "savepoint_failed", &cause).await;
                    return Ok(());
                }
                Err(JmError::Rejected { url, detail }) => {
                    self.fail(&row.id, "jobmanager_rejected", &format!("{url}: {detail}"))
                        .await;
                    return Ok(());
                }
                Err(e) => return Err(jm_err(e)),
            }
        }
    }

    /// Copies an imported savepoint under the application's prefix, `_metadata` last.
    async fn import(&self, row: &store::savepoint::Row) -> Result<(), Retry> {
        let Some(source) = row.source_uri.as_deref() else {
            self.fail(
                &row.id,
                "invalid_source",
                "an imported savepoint without a source_uri",
            )
            .await;
            return Ok(());
        };
        let key = self
            .backend
            .key(&row.org_id, &row.application_id, &row.id)
            .map_err(|e| retry("invalid_key", e))?;
        let src = match split_dir_uri(source) {
            Ok(s) => s,
            Err(e) => {
                self.fail(&row.id, "invalid_source", &e.to_string()).await;
                return Ok(());
            }
        };
        let store = self
            .backend
            .open(&src.parent)
            .await
            .map_err(|e| retry("storage_error", format!("{e:#}")))?;
        match checkpoint::inspect_snapshot(store.as_ref(), &src.dir).await {
            Ok(_) => {}
            Err(checkpoint::CheckpointError::Blob(e)) if blob_transient(&e) => {
                return Err(retry("storage_error", e));
            }
            Err(e) => {
                self.fail(&row.id, "invalid_source", &e.to_string()).await;
                return Ok(());
            }
        }
        copy_snapshot(store.as_ref(), &src.dir, self.backend.root.as_ref(), &key)
            .await
            .map_err(|e| retry("storage_error", e))?;
        let size = prefix_size(self.backend.root.as_ref(), &key)
            .await
            .map_err(|e| retry("storage_error", e))?;
        let (id, l) = (row.id.clone(), self.backend.uri_of(&key));
        self.write("complete import", move |c| {
            Box::pin(async move { store::savepoint::complete(c, &id, &l, size.bytes).await })
        })
        .await;
        Ok(())
    }

    /// Deletes every object under the savepoint's prefix (`_metadata` first), then marks
    /// it DELETED; on failure retries later, without limit.
    async fn dispose(&self, row: store::savepoint::Row) {
        let result = match self.backend.key(&row.org_id, &row.application_id, &row.id) {
            Ok(key) => checkpoint::dispose(self.backend.root.as_ref(), &key)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let id = row.id.clone();
        match result {
            Ok(report) => {
                tracing::info!(savepoint = %id, objects = report.objects(), bytes = report.bytes(), "savepoint disposed of");
                self.write("mark savepoint deleted", move |c| {
                    Box::pin(async move { store::savepoint::mark_deleted(c, &id).await })
                })
                .await;
            }
            Err(message) => {
                let delay = self.backoff_ms(row.attempts);
                tracing::warn!(savepoint = %id, attempts = row.attempts, delay_ms = delay, error = %message, "disposing of a savepoint failed; retrying");
                self.write("schedule disposal retry", move |c| {
                    Box::pin(async move {
                        store::savepoint::retry_later(
                            c,
                            &id,
                            delay,
                            "storage_error",
                            &message,
                            false,
                        )
                        .await
                    })
                })
                .await;
            }
        }
    }

    async fn export(&self, row: store::savepoint::ExportRow) {
        let op = row.operation_id.clone();
        let outcome = self.export_inner(&row).await;
        let error = match outcome {
            Ok(()) => None,
            Err((code, detail, retryable))
                if retryable
                    && row.attempts < i32::try_from(self.cfg.max_attempts).unwrap_or(i32::MAX) =>
            {
                let delay = self.backoff_ms(row.attempts);
                tracing::info!(operation = %op, delay_ms = delay, code, detail = %detail, "savepoint export failed; retrying");
                self.write("schedule export retry", move |c| {
                    Box::pin(
                        async move { store::savepoint::export_retry_later(c, &op, delay).await },
                    )
                })
                .await;
                return;
            }
            Err((code, detail, _)) => Some(
                serde_json::to_value(Problem {
                    type_uri: format!("urn:sluice:problem:{code}"),
                    title: "Export failed".into(),
                    status: 409,
                    code: code.into(),
                    detail,
                    request_id: None,
                    errors: Vec::new(),
                    free_kpu_milli: None,
                    requested_kpu_milli: None,
                })
                .unwrap_or_default(),
            ),
        };
        self.write("finish export", move |c| {
            Box::pin(async move { store::savepoint::finish_export(c, &op, error).await })
        })
        .await;
    }

    async fn export_inner(
        &self,
        row: &store::savepoint::ExportRow,
    ) -> Result<(), (&'static str, String, bool)> {
        let sp: SavepointId = row
            .savepoint_id
            .parse()
            .map_err(|e| ("invalid_savepoint", format!("{e}"), false))?;
        let found = self
            .write("read savepoint", move |c| {
                Box::pin(async move { store::savepoint::get_any(c, &sp).await })
            })
            .await
            .ok_or((
                "database_error",
                "reading the savepoint failed".to_owned(),
                true,
            ))?;
        let Some(sp) = found.filter(|s| s.status == SavepointStatus::Completed) else {
            return Err((
                "savepoint_not_completed",
                format!("savepoint {} is no longer COMPLETED", row.savepoint_id),
                false,
            ));
        };
        let key = self
            .backend
            .key(&row.org_id, sp.application_id.as_str(), sp.id.as_str())
            .map_err(|e| ("invalid_key", e.to_string(), false))?;
        // The directory that holds `_metadata` (the engine may write below the prefix), so
        // that the copy has `_metadata` at the target's top.
        let base = format!("{}/", self.backend.root_uri);
        let key = sp
            .location
            .as_deref()
            .and_then(|l| l.trim_end_matches('/').strip_prefix(&base))
            .and_then(|k| BlobPath::new(k).ok())
            .filter(|k| *k == key || k.is_under(&key))
            .unwrap_or(key);
        let target =
            split_dir_uri(&row.target_uri).map_err(|e| ("invalid_target", e.to_string(), false))?;
        let store = self
            .backend
            .open(&target.parent)
            .await
            .map_err(|e| ("storage_error", format!("{e:#}"), true))?;
        let copied = copy_snapshot(
            self.backend.root.as_ref(),
            &key,
            store.as_ref(),
            &target.dir,
        )
        .await
        .map_err(|e| ("storage_error", e.to_string(), true))?;
        tracing::info!(savepoint = %sp.id, target = %row.target_uri, objects = copied.len(), "savepoint exported");
        Ok(())
    }
}

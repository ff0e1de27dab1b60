//! The JobManager's state: TaskManagers and slots, the job's status and current
//! deployment, restarts, exceptions, metrics reported by TaskManagers, and checkpoint and
//! savepoint bookkeeping for REST.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Serialize;
use sluice_blob::checkpoint::CheckpointStore;
use sluice_runtime::coordinator::CheckpointStats;
use sluice_runtime::task::JobGraph;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::args::JobManagerArgs;
use crate::rpc::{RestoreRef, Sample, ToTm};

/// Flink's job states (the subset this engine goes through).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobStatus {
    Created,
    Running,
    Restarting,
    Failing,
    Failed,
    Cancelling,
    Canceled,
    Finished,
}

impl JobStatus {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Failed | JobStatus::Canceled | JobStatus::Finished
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Created => "CREATED",
            JobStatus::Running => "RUNNING",
            JobStatus::Restarting => "RESTARTING",
            JobStatus::Failing => "FAILING",
            JobStatus::Failed => "FAILED",
            JobStatus::Cancelling => "CANCELLING",
            JobStatus::Canceled => "CANCELED",
            JobStatus::Finished => "FINISHED",
        }
    }
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A registered TaskManager.
pub struct TaskManager {
    pub slots: usize,
    pub data_addr: SocketAddr,
    pub pid: u32,
    pub tx: UnboundedSender<ToTm>,
    pub last_seen: Instant,
    /// Distinguishes a re-registration under the same id from the old connection.
    pub conn: u64,
    pub registered_at_ms: i64,
}

/// State of one subtask of the current deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubtaskStatus {
    Deploying,
    Running,
    Finished,
}

/// The job as deployed now.
pub struct Deployment {
    pub attempt: u64,
    /// `slots[s]`: the TaskManager running subtask `s` of every vertex.
    pub slots: Vec<String>,
    pub subtasks: HashMap<(usize, usize), SubtaskStatus>,
    pub deployed_at: Instant,
    pub parallelism: usize,
}

/// One entry of `/jobs/{id}/exceptions`.
#[derive(Debug, Clone)]
pub struct ExceptionEntry {
    pub at_ms: i64,
    pub message: String,
    pub task: Option<String>,
    pub location: Option<String>,
}

/// A savepoint or stop request made through REST.
#[derive(Debug, Clone)]
pub enum TriggerStatus {
    InProgress,
    Completed { location: String },
    Failed { error: String },
}

pub struct JmState {
    pub status: JobStatus,
    pub status_since_ms: HashMap<JobStatus, i64>,
    pub start_ms: i64,
    pub end_ms: Option<i64>,
    pub tms: BTreeMap<String, TaskManager>,
    pub next_conn: u64,
    pub next_attempt: u64,
    pub deployment: Option<Deployment>,
    pub draining: Option<Draining>,
    /// The attempt whose metrics REST shows: the running one, or the last one after the job ended.
    pub metrics_attempt: Option<u64>,
    /// Subtasks per vertex for the next deployment (`PUT resource-requirements` changes it).
    pub parallelism: usize,
    pub graph: Arc<JobGraph>,
    pub restarts: u64,
    pub backoff_ms: u64,
    pub restart_at: Option<Instant>,
    /// When a TaskManager was lost; cleared when records flow again after the restart.
    pub lost_at: Option<Instant>,
    pub last_recovery_ms: Option<u64>,
    pub restore: Option<RestoreRef>,
    /// URI of the snapshot the current or last deployment started from.
    pub restored_from: Option<String>,
    pub exceptions: Vec<ExceptionEntry>,
    pub samples: HashMap<String, Vec<Sample>>,
    pub triggers: HashMap<String, TriggerStatus>,
    /// Checkpoint statistics of this JobManager (all attempts).
    pub checkpoints: CheckpointStats,
    /// Why TaskManagers were lost, for the exceptions history.
    pub lost: Vec<(String, String)>,
}

pub struct JmInit {
    pub args: JobManagerArgs,
    pub name: String,
    pub sql: String,
    pub plan: sluice_sql::JobPlan,
    pub graph: JobGraph,
    pub parallelism: usize,
    pub exactly_once: bool,
    pub token: Option<String>,
    pub store_base: String,
    pub checkpoints: CheckpointStore,
    pub restore: Option<RestoreRef>,
}

pub struct Jm {
    pub args: JobManagerArgs,
    pub job_id: String,
    pub name: String,
    pub sql: String,
    pub plan: sluice_sql::JobPlan,
    pub exactly_once: bool,
    pub token: Option<String>,
    pub store_base: String,
    pub checkpoints: CheckpointStore,
    pub state: Mutex<JmState>,
    /// Wakes the control loop early (a TaskManager came or went, a subtask reported).
    pub wake: tokio::sync::Notify,
    pub shutdown: CancellationToken,
    /// Cancelled when a newer generation took over the job.
    pub fenced: CancellationToken,
    pub fence_reason: Mutex<Option<String>>,
    pub started: Instant,
    /// Subtask events and REST requests for the control loop.
    pub inbox: UnboundedSender<super::Input>,
    pub inbox_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<super::Input>>>,
}

impl Jm {
    pub fn new(init: JmInit) -> Result<Arc<Jm>> {
        let now = now_ms();
        let (inbox, inbox_rx) = tokio::sync::mpsc::unbounded_channel();
        Ok(Arc::new(Jm {
            job_id: init.args.job_id.to_lowercase(),
            args: init.args.clone(),
            name: init.name,
            sql: init.sql,
            plan: init.plan,
            exactly_once: init.exactly_once,
            token: init.token,
            store_base: init.store_base,
            checkpoints: init.checkpoints,
            state: Mutex::new(JmState {
                status: JobStatus::Created,
                status_since_ms: HashMap::from([(JobStatus::Created, now)]),
                start_ms: now,
                end_ms: None,
                tms: BTreeMap::new(),
                next_conn: 1,
                // Attempt ids differ across generations, so a TaskManager never confuses a
                // new JobManager's deployment with its predecessor's.
                next_attempt: init.args.generation.saturating_mul(1_000_000) + 1,
                deployment: None,
                draining: None,
                metrics_attempt: None,
                parallelism: init.parallelism,
                graph: Arc::new(init.graph),
                restarts: 0,
                backoff_ms: init.args.restart_backoff_initial_ms,
                restart_at: None,
                lost_at: None,
                last_recovery_ms: None,
                restore: init.restore,
                restored_from: None,
                exceptions: Vec::new(),
                samples: HashMap::new(),
                triggers: HashMap::new(),
                checkpoints: CheckpointStats::default(),
                lost: Vec::new(),
            }),
            wake: tokio::sync::Notify::new(),
            shutdown: CancellationToken::new(),
            fenced: CancellationToken::new(),
            fence_reason: Mutex::new(None),
            started: Instant::now(),
            inbox,
            inbox_rx: Mutex::new(Some(inbox_rx)),
        }))
    }

    pub fn lock(&self) -> MutexGuard<'_, JmState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn fence(&self, reason: String) {
        tracing::error!("fenced: {reason}");
        *self
            .fence_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason);
        self.fenced.cancel();
    }

    pub fn fence_reason(&self) -> Option<String> {
        self.fence_reason
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Tells every TaskManager to drop the current deployment.
    pub fn cancel_deployment(&self, why: &str) {
        let mut st = self.lock();
        if let Some(d) = st.take_deployment() {
            tracing::info!("cancelling attempt {}: {why}", d.attempt);
        }
    }
}

/// Subtasks of a cancelled deployment that have not ended yet. The next deployment waits
/// for them (or for their TaskManager's loss, or a deadline), so an old subtask can never
/// write into a checkpoint or output of the new one.
pub struct Draining {
    pub attempt: u64,
    pub subtasks: HashMap<(usize, usize), String>,
    pub deadline: Instant,
}

/// How long a cancelled deployment may take to end before the next one starts anyway.
pub const DRAIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl JmState {
    /// Cancels the current deployment on every TaskManager and remembers which of its
    /// subtasks must still report their end.
    pub fn take_deployment(&mut self) -> Option<Deployment> {
        let d = self.deployment.take()?;
        for tm in self.tms.values() {
            let _ = tm.tx.send(ToTm::Cancel { attempt: d.attempt });
        }
        let subtasks: HashMap<(usize, usize), String> = d
            .subtasks
            .iter()
            .filter(|(_, s)| **s != SubtaskStatus::Finished)
            .filter_map(|(k, _)| {
                let tm = d.slots.get(k.1)?;
                self.tms.contains_key(tm).then(|| (*k, tm.clone()))
            })
            .collect();
        self.draining = (!subtasks.is_empty()).then(|| Draining {
            attempt: d.attempt,
            subtasks,
            deadline: Instant::now() + DRAIN_TIMEOUT,
        });
        Some(d)
    }

    /// Whether subtasks of a cancelled deployment may still be running.
    pub fn still_draining(&mut self) -> bool {
        let tms = &self.tms;
        if let Some(d) = self.draining.as_mut() {
            d.subtasks.retain(|_, tm| tms.contains_key(tm));
            if d.subtasks.is_empty() {
                self.draining = None;
            } else if Instant::now() > d.deadline {
                let mut left: Vec<String> = d
                    .subtasks
                    .iter()
                    .map(|((v, s), tm)| format!("v{v}/{s} on {tm}"))
                    .collect();
                left.sort();
                tracing::warn!(
                    "subtasks of attempt {} did not end within {DRAIN_TIMEOUT:?}: {}",
                    d.attempt,
                    left.join(", ")
                );
                self.draining = None;
            }
        }
        self.draining.is_some()
    }

    pub fn set_status(&mut self, s: JobStatus) {
        if self.status != s {
            tracing::info!("job {} -> {}", self.status.as_str(), s.as_str());
            self.status = s;
            self.status_since_ms.insert(s, now_ms());
            if s.is_terminal() {
                self.end_ms = Some(now_ms());
            }
        }
    }

    pub fn slots_total(&self) -> usize {
        self.tms.values().map(|t| t.slots).sum()
    }

    pub fn slots_used(&self, tm: &str) -> usize {
        self.deployment
            .as_ref()
            .map(|d| d.slots.iter().filter(|s| *s == tm).count())
            .unwrap_or(0)
    }

    pub fn slots_available(&self) -> usize {
        self.tms
            .iter()
            .map(|(id, t)| t.slots.saturating_sub(self.slots_used(id)))
            .sum()
    }

    /// Records a TaskManager's loss; the control loop fails the deployment over.
    pub fn note_lost(&mut self, tm: &str, why: &str) {
        if self
            .deployment
            .as_ref()
            .is_some_and(|d| d.slots.iter().any(|s| s == tm))
        {
            self.lost_at.get_or_insert_with(Instant::now);
        }
        self.lost.push((tm.to_string(), why.to_string()));
    }

    /// After a failover, the first records of the new deployment end the recovery.
    pub fn on_metrics(&mut self) {
        if let Some(at) = self.lost_at
            && self.sample_sum("sluice_source_records_total") > 0.0
        {
            let ms = at.elapsed().as_millis() as u64;
            tracing::info!("records flow again {ms} ms after the taskmanager was lost");
            self.last_recovery_ms = Some(ms);
            self.lost_at = None;
        }
    }

    pub fn sample_sum(&self, name: &str) -> f64 {
        self.samples
            .values()
            .flatten()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }
}

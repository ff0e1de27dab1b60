//! Engine cluster provisioning for the Sluice control plane.
//!
//! The reconciler decides *what* cluster an application should have and hands a
//! [`ClusterSpec`] to a [`Provisioner`]; the provisioner makes it exist (JobManager and
//! TaskManagers running `sluice-engine`) and reports what it observes as a
//! [`ClusterObservation`]. Observations are evidence: the control plane opens and closes
//! billing spans from the `started_at`/`exited_at` they carry, so a provisioner reports
//! times it measured, never guesses.
//!
//! Implementations: `local` (this crate, [`local::LocalProvisioner`]: child processes on
//! this machine) and `kubernetes` (a separate crate).
//!
//! Contract for every implementation:
//! - `apply` is idempotent: applying the same spec (same `run_id` and `generation`) to an
//!   existing cluster changes nothing; applying a spec with a different `run_id` or a
//!   higher `generation` replaces the cluster.
//! - `observe` of an unknown cluster is `Ok` with phase [`ClusterPhase::Absent`].
//! - `list` returns every cluster this provisioner manages, so that a restarted control
//!   plane re-adopts running clusters instead of restarting them.
//! - `delete` is idempotent and returns the final observation, with exit times.
//! - Leadership: a provisioner that acts on its own between calls (the local one supervises
//!   and restarts processes) acts only between [`Provisioner::activate`] and
//!   [`Provisioner::deactivate`], which the reconciler calls when its process is elected
//!   leader and when it stops leading. Activation re-reads what a predecessor left (records,
//!   working directories) and re-adopts what runs; deactivation stops acting at once and
//!   leaves clusters running. A standby still answers `observe` and `list` (from what the
//!   leader persisted) but refuses `apply` and `delete` with [`ProvisionError::NotLeader`].
//!
//! Tests: `dev/cargo test -p sluice-provisioner` (the local provisioner tests start the
//! real `sluice-engine` binary from the workspace target directory).

use std::collections::BTreeMap;
use std::fmt;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub mod local;

/// Which cluster: one per application (an application has at most one cluster at a time).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ClusterId {
    /// External form of the organization id (`org_…`).
    pub org_id: String,
    /// External form of the application id (`app_…`).
    pub application_id: String,
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.org_id, self.application_id)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    Memory,
    Rocksdb,
}

impl StateBackend {
    pub fn as_str(self) -> &'static str {
        match self {
            StateBackend::Memory => "memory",
            StateBackend::Rocksdb => "rocksdb",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointMode {
    ExactlyOnce,
    AtLeastOnce,
}

impl CheckpointMode {
    pub fn as_str(self) -> &'static str {
        match self {
            CheckpointMode::ExactlyOnce => "exactly_once",
            CheckpointMode::AtLeastOnce => "at_least_once",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckpointSpec {
    pub interval_ms: u64,
    pub min_pause_ms: u64,
    pub mode: CheckpointMode,
}

/// Where the job's state comes from when the cluster starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RestoreFrom {
    /// Empty state.
    None,
    /// The newest completed checkpoint under `checkpoint_dir` (empty state if there is none).
    Latest,
    /// A savepoint or checkpoint at this blob URI.
    Uri { uri: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreSpec {
    pub from: RestoreFrom,
    pub allow_non_restored_state: bool,
}

/// The desired cluster. Everything the provisioner needs; it reads nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterSpec {
    pub id: ClusterId,
    /// The run this cluster belongs to (`run_…`): one run per start of the application.
    pub run_id: String,
    /// Strictly increasing per application; fences stale writers in checkpoint storage.
    pub generation: u64,
    /// 32 lowercase hex digits, stable across the application's runs.
    pub job_id: String,
    pub sql: String,
    pub parallelism: u32,
    pub slots_per_taskmanager: u32,
    /// `ceil(parallelism / slots_per_taskmanager)`, computed by the control plane.
    pub taskmanagers: u32,
    pub state_backend: StateBackend,
    pub checkpoint: CheckpointSpec,
    pub restore: RestoreSpec,
    /// Blob URI of the application's job root (`{storage.root}/{org}/{app}/`).
    pub checkpoint_dir: String,
    /// Environment for the engine processes (S3 endpoint and credentials).
    pub engine_env: BTreeMap<String, String>,
    /// What this cluster is billed at (`ceil(P/K)` KPU + orchestration share), in milli-KPU.
    pub kpu_milli: u64,
    /// Quota hint for provisioners that enforce one (the pool's `max_kpu` in milli-KPU).
    pub max_kpu_milli: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClusterPhase {
    /// No cluster (never applied, or deleted and cleaned up).
    Absent,
    /// Processes started; the JobManager's REST endpoint is not known yet.
    Starting,
    /// The JobManager is up and its REST endpoint is known (the job's own state is read
    /// from that REST API by the control plane).
    Running,
    /// The provisioner gave up (e.g. the JobManager keeps crashing past its restart budget).
    Failed,
    /// Every process has exited after a delete; the record remains until cleaned up.
    Terminated,
}

impl ClusterPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            ClusterPhase::Absent => "absent",
            ClusterPhase::Starting => "starting",
            ClusterPhase::Running => "running",
            ClusterPhase::Failed => "failed",
            ClusterPhase::Terminated => "terminated",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcessRole {
    Jobmanager,
    Taskmanager,
}

/// One incarnation of one engine process (a restarted TaskManager is a new entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessObservation {
    pub role: ProcessRole,
    /// Stable name of the slot (`jm`, `tm-0`, …); incarnations share it.
    pub name: String,
    /// Local provisioner: the OS pid.
    pub pid: Option<u32>,
    /// Kubernetes provisioner: the pod name.
    pub pod: Option<String>,
    pub started_at: DateTime<Utc>,
    pub exited_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterObservation {
    pub id: ClusterId,
    /// `None` only when `phase` is `Absent`.
    pub run_id: Option<String>,
    pub generation: Option<u64>,
    pub phase: ClusterPhase,
    /// Base URL of the JobManager REST API (`http://127.0.0.1:PORT`), once known.
    pub rest_url: Option<String>,
    /// Bearer token for the JobManager REST API.
    pub auth_token: Option<String>,
    /// Every process incarnation of this cluster, oldest first.
    pub processes: Vec<ProcessObservation>,
    /// When the first process of the cluster started.
    pub started_at: Option<DateTime<Utc>>,
    /// When the last process exited after a delete (set with phase `Terminated`/`Absent`
    /// from a delete).
    pub ended_at: Option<DateTime<Utc>>,
    /// Human-readable reason for `Failed`, or the latest supervision event.
    pub message: Option<String>,
}

impl ClusterObservation {
    pub fn absent(id: ClusterId) -> Self {
        ClusterObservation {
            id,
            run_id: None,
            generation: None,
            phase: ClusterPhase::Absent,
            rest_url: None,
            auth_token: None,
            processes: Vec::new(),
            started_at: None,
            ended_at: None,
            message: None,
        }
    }

    /// Restarts of processes so far (incarnations beyond the first of each name).
    pub fn process_restarts(&self) -> usize {
        let mut names = std::collections::BTreeSet::new();
        for p in &self.processes {
            names.insert(p.name.as_str());
        }
        self.processes.len().saturating_sub(names.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The spec cannot be provisioned as given (retrying will not help).
    #[error("invalid cluster spec: {0}")]
    InvalidSpec(String),
    /// A resource limit of the provisioner (quota, ports, disk).
    #[error("insufficient resources: {0}")]
    Insufficient(String),
    /// This process does not lead the provisioner (a standby, or a leader deposed by a newer
    /// epoch): it must not change clusters.
    #[error("not the leading provisioner: {0}")]
    NotLeader(String),
    /// Anything else; the reconciler retries with backoff.
    #[error(transparent)]
    Other(#[from] Box<dyn std::error::Error + Send + Sync>),
}

impl ProvisionError {
    pub fn other(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        ProvisionError::Other(e.into())
    }
}

impl From<std::io::Error> for ProvisionError {
    fn from(e: std::io::Error) -> Self {
        ProvisionError::Other(Box::new(e))
    }
}

#[async_trait]
pub trait Provisioner: Send + Sync {
    /// `"local"` or `"kubernetes"`.
    fn kind(&self) -> &'static str;
    /// Make the cluster exist as specified. Idempotent.
    async fn apply(&self, spec: &ClusterSpec) -> Result<ClusterObservation, ProvisionError>;
    /// What exists now; `Absent` if nothing.
    async fn observe(&self, id: &ClusterId) -> Result<ClusterObservation, ProvisionError>;
    /// Every managed cluster (re-adoption after a control-plane restart).
    async fn list(&self) -> Result<Vec<ClusterObservation>, ProvisionError>;
    /// Remove the cluster. Idempotent; the result carries the exit times.
    async fn delete(&self, id: &ClusterId) -> Result<ClusterObservation, ProvisionError>;
    /// This process leads at `epoch` (strictly increasing across leaders): re-read the
    /// persisted state, re-adopt what runs, start acting. Refused when a newer epoch
    /// already led. Stateless provisioners (Kubernetes: the API server is the record and
    /// server-side apply is idempotent) need nothing.
    async fn activate(&self, _epoch: u64) -> Result<(), ProvisionError> {
        Ok(())
    }
    /// This process no longer leads at `epoch`: stop acting now, leave clusters running.
    /// A no-op when it is not active at `epoch` (a newer activation in the same process).
    async fn deactivate(&self, _epoch: u64) {}
}

/// `ceil(parallelism / slots)`, at least one.
pub fn taskmanagers_for(parallelism: u32, slots_per_taskmanager: u32) -> u32 {
    let slots = slots_per_taskmanager.max(1);
    parallelism.max(1).div_ceil(slots)
}

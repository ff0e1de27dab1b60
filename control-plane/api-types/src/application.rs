//! Applications: a desired spec (written by the API, versioned immutably) and an
//! observed status (written by the reconciler).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::id::{AppId, PoolId, SavepointId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckpointMode {
    ExactlyOnce,
    AtLeastOnce,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSpec {
    /// 1000..=86400000.
    pub interval_ms: u64,
    /// 0..=interval_ms.
    #[serde(default)]
    pub min_pause_ms: u64,
    pub mode: CheckpointMode,
}

impl Default for CheckpointSpec {
    fn default() -> Self {
        CheckpointSpec {
            interval_ms: 60_000,
            min_pause_ms: 0,
            mode: CheckpointMode::ExactlyOnce,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StateBackend {
    #[default]
    Memory,
    Rocksdb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DesiredState {
    Running,
    #[default]
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RestoreMode {
    #[default]
    Latest,
    Savepoint,
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RestoreSpec {
    #[serde(default)]
    pub mode: RestoreMode,
    /// Required when `mode` is `savepoint`, forbidden otherwise.
    #[serde(default)]
    pub savepoint_id: Option<SavepointId>,
    #[serde(default)]
    pub allow_non_restored_state: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpgradeMode {
    #[default]
    Savepoint,
    LastState,
    Stateless,
}

/// The desired state of an application (DESIGN §3). Every accepted change is kept
/// as an immutable [`ApplicationVersion`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApplicationSpec {
    pub name: String,
    pub compute_pool_id: PoolId,
    /// A Flink SQL statement set.
    pub sql: String,
    pub parallelism: u32,
    pub parallelism_per_kpu: u32,
    pub checkpoint: CheckpointSpec,
    pub state_backend: StateBackend,
    pub desired_state: DesiredState,
    pub restore: RestoreSpec,
    pub upgrade_mode: UpgradeMode,
    /// Engine options (see the server documentation for the accepted keys).
    pub config: BTreeMap<String, String>,
    /// Changing it restarts the application without any other change.
    pub restart_nonce: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateApplication {
    /// 1..=100 characters of `[a-z0-9-]`, starting with a letter; unique in the organization.
    pub name: String,
    pub compute_pool_id: PoolId,
    pub sql: String,
    /// 1..=1024 (default 1).
    #[serde(default = "one")]
    pub parallelism: u32,
    /// 1..=8 (default 1).
    #[serde(default = "one")]
    pub parallelism_per_kpu: u32,
    #[serde(default)]
    pub checkpoint: CheckpointSpec,
    #[serde(default)]
    pub state_backend: StateBackend,
    #[serde(default)]
    pub desired_state: DesiredState,
    #[serde(default)]
    pub restore: RestoreSpec,
    #[serde(default)]
    pub upgrade_mode: UpgradeMode,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    #[serde(default)]
    pub restart_nonce: u64,
}

fn one() -> u32 {
    1
}

/// PATCH body: absent fields keep their value; `name` and `compute_pool_id` cannot change.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateApplication {
    pub sql: Option<String>,
    pub parallelism: Option<u32>,
    pub parallelism_per_kpu: Option<u32>,
    pub checkpoint: Option<CheckpointSpec>,
    pub state_backend: Option<StateBackend>,
    pub desired_state: Option<DesiredState>,
    pub restore: Option<RestoreSpec>,
    pub upgrade_mode: Option<UpgradeMode>,
    pub config: Option<BTreeMap<String, String>>,
    pub restart_nonce: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Phase {
    Stopped,
    Pending,
    Starting,
    Running,
    Degraded,
    Updating,
    Scaling,
    RollingBack,
    Stopping,
    Failed,
    Deleting,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LastCheckpoint {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub size_bytes: u64,
}

/// Observed state (written only by the reconciler).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApplicationStatus {
    pub phase: Phase,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The spec version the running cluster was built from.
    pub observed_version: Option<i64>,
    pub current_kpu_milli: u64,
    pub run_id: Option<String>,
    pub generation: i64,
    pub last_checkpoint: Option<LastCheckpoint>,
    pub started_at: Option<DateTime<Utc>>,
    /// FIFO position while PENDING on a full pool in `queue` admission.
    pub queue_position: Option<u32>,
}

impl ApplicationStatus {
    /// The status of an application the reconciler has not touched yet.
    pub fn initial() -> Self {
        ApplicationStatus {
            phase: Phase::Stopped,
            reason: None,
            message: None,
            observed_version: None,
            current_kpu_milli: 0,
            run_id: None,
            generation: 0,
            last_checkpoint: None,
            started_at: None,
            queue_position: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Application {
    pub id: AppId,
    pub spec: ApplicationSpec,
    /// The current spec version: the `n` of `/versions/{n}`, the `ETag`, the `If-Match`.
    pub version: i64,
    pub status: ApplicationStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApplicationList {
    pub items: Vec<Application>,
    pub next_page_token: Option<String>,
}

/// One changed leaf of the spec between two versions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SpecChange {
    /// Dotted path (`checkpoint.interval_ms`, `config.pipeline.max-parallelism`).
    pub field: String,
    /// Absent when the field did not exist before.
    pub from: Option<serde_json::Value>,
    /// Absent when the field was removed.
    pub to: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplicationVersion {
    pub application_id: AppId,
    pub version: i64,
    pub spec: ApplicationSpec,
    /// `usr_…` / `sa_…` that made the change.
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    /// Changes against version `version - 1` (empty for version 1).
    pub diff: Vec<SpecChange>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApplicationVersionList {
    pub items: Vec<ApplicationVersion>,
    pub next_page_token: Option<String>,
}

/// Body of `POST /v1/applications/{id}:rollback`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RollbackRequest {
    /// The version whose spec becomes current again (default: the one before the current).
    pub to_version: Option<i64>,
}

/// Body of `POST /v1/applications/{id}:stop` (optional).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {
    /// Stop at once, without a savepoint (the next start restores the latest checkpoint).
    #[serde(default)]
    pub force: bool,
}

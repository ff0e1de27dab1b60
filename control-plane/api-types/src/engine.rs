//! What the engine reports about a running application, as the control plane relays it:
//! events (`GET /v1/applications/{id}/events`) and metrics (`…/metrics`). The engine's own
//! REST API is never exposed to tenants.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::application::{LastCheckpoint, Phase};
use crate::id::{AppId, EventId};

/// One thing that happened to an application (a phase change, a savepoint, a failure).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ApplicationEvent {
    pub id: EventId,
    pub application_id: AppId,
    pub at: DateTime<Utc>,
    /// `phase_changed`, `cluster_started`, `cluster_stopped`, `savepoint_completed`,
    /// `savepoint_failed`, `admitted`, `queued`, `deleted`, …
    #[serde(rename = "type")]
    pub event_type: String,
    /// The phase after the event.
    pub phase: Option<Phase>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ApplicationEventList {
    pub items: Vec<ApplicationEvent>,
    pub next_page_token: Option<String>,
}

/// The engine's figures for the application's current run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApplicationMetrics {
    pub application_id: AppId,
    /// The run the figures belong to (`run_…`).
    pub run_id: String,
    /// The engine's job state (`RUNNING`, `RESTARTING`, …).
    pub job_state: String,
    /// Records read by the sources since the run started.
    pub records_in: Option<u64>,
    /// Records written by the sinks since the run started.
    pub records_out: Option<u64>,
    /// Job restarts (failovers) in this run.
    pub restarts: Option<u64>,
    pub last_checkpoint: Option<LastCheckpoint>,
    /// Duration of the last completed checkpoint.
    pub last_checkpoint_duration_ms: Option<u64>,
    pub fetched_at: DateTime<Utc>,
}

//! The task layer: one subtask of a physical [`JobGraph`], independent of the
//! transport that connects it to the others. The one-process mode
//! ([`crate::run_job`], [`local`]) wires subtasks with in-memory channels; the
//! cluster (`sluice-cluster`) wires the same [`run_subtask`] over TCP.
//!
//! A subtask talks to its controller through two narrow interfaces:
//! [`SubtaskCommand`]s in (trigger a checkpoint, checkpoint complete, stop,
//! cancel) and [`SubtaskEvent`]s out (acknowledge with its [`SubtaskState`],
//! decline, finished, failed). Data comes in through an [`InputGate`] (merged
//! upstream channels) and leaves through one [`OutputChannel`] per downstream
//! subtask; a blocking `send` is the backpressure.
//!
//! Checkpoints (DESIGN.md §5): sources inject `Barrier(N)` between polls after
//! recording their position; a subtask with several inputs aligns them
//! (exactly-once: channels that delivered barrier N are held back, their later
//! messages buffered, until every open channel delivered it), then takes the
//! synchronous half of its snapshot, forwards the barrier and releases the
//! buffers; the upload runs on its own thread and ends in `Acknowledge`.
//! Sinks seal a committable at the barrier and commit it when told that the
//! checkpoint is complete (its `_metadata` written by the coordinator).
//! API summary for other crates: `data-plane/runtime/TASK-API.md`.

pub mod graph;
pub mod local;
pub mod state;
mod subtask;
mod upload;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_blob::checkpoint::CheckpointStore;

pub use graph::{JobGraph, SinkSpec, SourceSpec, VertexId, VertexInput, VertexSpec};
pub use state::{
    ENGINE_STATE_FORMAT, EngineState, NativeConverter, NativeFile, NativeSnapshots, NativeStateRef,
    OperatorState, PendingCommit, RestoreSnapshot, SinkState, SourceState, SubtaskState,
};
pub use subtask::run_subtask;

use crate::connector::Connectors;
use crate::error::Result;
use crate::executor::JobConfig;
use crate::message::{Barrier, Envelope, Message};
use crate::metrics::MetricsRegistry;

/// One subtask: vertex id (index in [`JobGraph::vertices`]) and subtask index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubtaskId {
    pub vertex: VertexId,
    pub subtask: usize,
}

impl std::fmt::Display for SubtaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}/{}", self.vertex, self.subtask)
    }
}

/// Messages from every upstream subtask of one subtask, merged. `Envelope::channel`
/// is the upstream subtask's index.
pub trait InputGate: Send {
    /// The next message, or `Ok(None)` when none came within `timeout`. An
    /// error means an upstream channel broke (its subtask went away without
    /// `End`).
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Envelope>>;
}

/// The channel from this subtask to one downstream subtask.
pub trait OutputChannel: Send {
    /// Sends in order; blocks while the receiver has no room (backpressure).
    fn send(&mut self, message: Message) -> Result<()>;
}

/// What a subtask is told to do. Sent to every subtask; those it does not
/// concern ignore it (only sources act on a trigger, only sinks commit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SubtaskCommand {
    /// Sources: record the position and inject this barrier before the next poll.
    TriggerCheckpoint(Barrier),
    /// The checkpoint's `_metadata` is written: sinks commit its committables
    /// (and those of earlier checkpoints still pending).
    CheckpointComplete { checkpoint_id: u64 },
    /// The checkpoint will not complete: release an alignment in progress.
    AbortCheckpoint { checkpoint_id: u64 },
    /// Sources: stop reading. With `drain`, emit the max watermark first (every
    /// timer fires), then inject `barrier` (the savepoint), then end the
    /// stream. Without `drain`, inject `barrier` and wait for `Cancel`
    /// (the coordinator sends it once the savepoint is complete).
    Stop { drain: bool, barrier: Barrier },
    /// Stop now without finishing operators or sinks.
    Cancel,
}

/// What a subtask reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SubtaskEvent {
    /// Its part of checkpoint `checkpoint_id` is uploaded.
    Acknowledge {
        checkpoint_id: u64,
        state: SubtaskState,
    },
    Decline {
        checkpoint_id: u64,
        reason: String,
    },
    /// Ran to the end of its input (or was cancelled).
    Finished,
    Failed {
        error: String,
    },
}

/// Where a subtask's events go (the coordinator's inbox, or a TCP connection).
/// Called from the task thread and from upload threads.
pub trait EventSink: Send + Sync {
    fn send(&self, from: SubtaskId, event: SubtaskEvent);
}

/// Exactly-once aligns barriers; at-least-once snapshots when the last input
/// delivered the barrier without holding the others back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum CheckpointingMode {
    #[default]
    ExactlyOnce,
    AtLeastOnce,
}

/// Where snapshots are uploaded, and the async runtime that uploads them.
#[derive(Clone)]
pub struct SnapshotStorage {
    pub store: CheckpointStore,
    pub runtime: tokio::runtime::Handle,
}

/// Per-job settings of a subtask beyond [`JobConfig`].
#[derive(Clone)]
pub struct TaskConfig {
    pub job: JobConfig,
    pub job_id: String,
    /// `None`: checkpointing is off (barriers are forwarded, nothing is uploaded).
    pub storage: Option<SnapshotStorage>,
    pub mode: CheckpointingMode,
    /// Set by whoever runs the attempt when it cancels it (subtasks also get
    /// `SubtaskCommand::Cancel`, but a subtask blocked inside a connector cannot read it).
    pub cancelled: Arc<std::sync::atomic::AtomicBool>,
}

/// Everything [`run_subtask`] needs.
pub struct SubtaskSetup {
    pub graph: Arc<JobGraph>,
    pub id: SubtaskId,
    pub config: TaskConfig,
    pub connectors: Connectors,
    /// `None` for a source vertex.
    pub input: Option<Box<dyn InputGate>>,
    /// One per subtask of the downstream vertex (index = downstream subtask); empty for a sink.
    pub outputs: Vec<Box<dyn OutputChannel>>,
    pub commands: std::sync::mpsc::Receiver<SubtaskCommand>,
    pub events: Arc<dyn EventSink>,
    /// State to start from (checked with [`RestoreSnapshot::check_against`] by the caller).
    pub restore: Option<Arc<RestoreSnapshot>>,
    pub metrics: Arc<MetricsRegistry>,
}

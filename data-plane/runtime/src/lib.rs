//! The Sluice engine's runtime (DESIGN.md §5): a planned job
//! ([`sluice_sql::JobPlan`]) becomes vertices of chained operators on Arrow
//! `RecordBatch`es, connected by bounded channels carrying [`Message`]s
//! (`Data | Watermark | Barrier | End`), with hash exchanges by key group
//! (`sluice_state::key_group_of`), per-split watermarks with idleness, late-
//! record counting, and keyed state in `sluice-state` backends.
//!
//! [`task`] is the transport-independent task layer: the physical
//! [`task::JobGraph`], [`task::run_subtask`] (one subtask: source or input gate,
//! chain, aligned barriers, asynchronous snapshot upload, two-phase sink
//! commits, restore from a checkpoint or savepoint at any parallelism or
//! backend) and its commands and events. [`coordinator::CheckpointCoordinator`]
//! triggers checkpoints and savepoints and writes their `_metadata` last.
//! [`run_job`] / [`task::local::run_local`] run a whole job in this process
//! (subtasks as threads, in-memory channels); the cluster (`sluice-cluster`)
//! runs the same subtasks over TCP. Connectors plug in through
//! [`connector::ConnectorFactory`]. API summary: `TASK-API.md`.
//!
//! Crash points for fault tests: feature `failpoints`, see [`failpoint`].
//!
//! Test: `dev/cargo test -p sluice-runtime` (golden tests: SQL + input → rows;
//! `checkpoints`: checkpoint/restore against an uninterrupted run, rescaling,
//! memory ↔ rocksdb, alignment, coordinator fencing and retention).

pub mod accum;
pub mod connector;
pub mod coordinator;
pub mod error;
pub mod eval;
pub mod exchange;
pub mod executor;
pub mod failpoint;
pub mod keys;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod ops;
pub mod task;
pub mod watermark;

pub use error::{Result, RuntimeError};
pub use executor::{
    JobConfig, JobReport, PipelineReport, StateFactory, build_operators, memory_state, run_job,
    stage_output,
};
pub use message::{Barrier, Envelope, MAX_WATERMARK, Message, ROW_KIND_COLUMN, RowKind};
pub use metrics::MetricsRegistry;

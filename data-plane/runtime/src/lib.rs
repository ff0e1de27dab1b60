//! The Sluice engine's runtime (DESIGN.md §5): a planned job
//! ([`sluice_sql::JobPlan`]) becomes vertices of chained operators on Arrow
//! `RecordBatch`es, connected by bounded channels carrying [`Message`]s
//! (`Data | Watermark | Barrier | End`), with hash exchanges by key group
//! (`sluice_state::key_group_of`), per-split watermarks with idleness, late-
//! record counting, and keyed state in `sluice-state` backends.
//!
//! [`run_job`] runs a whole job in this process, subtasks as threads; the
//! cluster form reuses the operators, messages and exchanges across processes.
//! Connectors plug in through [`connector::ConnectorFactory`].
//!
//! Test: `dev/cargo test -p sluice-runtime` (golden tests: SQL + input → rows).

pub mod accum;
pub mod connector;
pub mod error;
pub mod eval;
pub mod exchange;
pub mod executor;
pub mod keys;
pub mod message;
pub mod metrics;
pub mod operator;
pub mod ops;
pub mod watermark;

pub use error::{Result, RuntimeError};
pub use executor::{
    JobConfig, JobReport, PipelineReport, StateFactory, build_operators, memory_state, run_job,
    stage_output,
};
pub use message::{Envelope, MAX_WATERMARK, Message, ROW_KIND_COLUMN, RowKind};
pub use metrics::MetricsRegistry;

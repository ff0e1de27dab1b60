//! `sluice-cluster`: the engine as a cluster of processes (DESIGN.md §5) — one JobManager
//! (REST, scheduling of subtasks onto slots, the checkpoint coordinator, failover) and N
//! TaskManagers (slots running subtasks, data exchange over TCP with credit-based flow
//! control). The `sluice-engine jobmanager` / `taskmanager` subcommands call [`jobmanager::run`]
//! and [`taskmanager::run`]; subtasks themselves are `sluice_runtime::task::run_subtask`.
//!
//! Wire formats: control RPC is JSON in length-prefixed frames ([`frame`], [`rpc`]) on one
//! TCP connection per TaskManager; data is Arrow IPC per batch plus small control frames
//! ([`exchange`]).
//!
//! Tests: `dev/cargo test -p sluice-cluster` (frames, the exchange over loopback TCP,
//! REST shapes); the real-process tests (1 JobManager + 2 TaskManagers, kills) are in
//! `data-plane/engine/tests/engine/cluster.rs` (`dev/cargo test -p sluice-engine cluster`).

pub mod args;
pub mod auth;
pub mod exchange;
pub mod frame;
pub mod jobmanager;
pub mod ports;
pub mod rpc;
pub mod storage;
pub mod taskmanager;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use sluice_runtime::connector::Connectors;
use sluice_runtime::{JobConfig, StateFactory};

pub use args::{JobManagerArgs, TaskManagerArgs};

/// Builds the keyed state factory of a backend (`memory`, `rocksdb`) whose files go under a
/// directory. The binary provides it, so that RocksDB links only into the binary.
pub type StateFactoryBuilder = Arc<dyn Fn(&str, &Path) -> Result<StateFactory> + Send + Sync>;

/// What the binary plugs into a TaskManager.
pub struct Services {
    pub connectors: Connectors,
    pub state: StateFactoryBuilder,
    /// Native (incremental) snapshots of a backend (`memory`, `rocksdb`): see
    /// `sluice_runtime::task::NativeSnapshots`.
    pub native: Arc<dyn Fn(&str) -> sluice_runtime::task::NativeSnapshots + Send + Sync>,
}

/// The job settings every subtask shares, from the plan's `SET` statements and the flags.
pub fn job_config(
    plan: &sluice_sql::JobPlan,
    parallelism: usize,
    max_parallelism: u16,
) -> Result<JobConfig> {
    let mut cfg = JobConfig::new(parallelism);
    cfg.max_parallelism = max_parallelism;
    if let Some((_, v)) = plan
        .config
        .iter()
        .rev()
        .find(|(k, _)| k == "table.exec.source.idle-timeout")
    {
        let ms = sluice_sql::parse_duration_ms(v).with_context(|| {
            format!("SET 'table.exec.source.idle-timeout' = '{v}' is not a duration")
        })?;
        if ms > 0 {
            cfg.idle_timeout = Some(Duration::from_millis(ms));
        }
    }
    Ok(cfg)
}

/// The parallelism of a job: the flag, else `SET 'parallelism.default'`, else 1.
pub fn parallelism_of(plan: &sluice_sql::JobPlan, flag: Option<usize>) -> Result<usize> {
    let from_set = plan
        .config
        .iter()
        .rev()
        .find(|(k, _)| k == "parallelism.default")
        .map(|(_, v)| v.parse::<usize>())
        .transpose()
        .context("SET 'parallelism.default' is not a number")?;
    Ok(flag.or(from_set).unwrap_or(1).max(1))
}

/// Logs to stderr, filtered by `RUST_LOG` (default `info`).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

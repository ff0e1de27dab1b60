//! Checkpoints and restore of `sluice-engine run` (one process):
//!
//! ```text
//! sluice-engine run JOB.sql --checkpoint-dir file:///var/lib/sluice/jobs/j1 --checkpoint-interval-ms 10000
//! sluice-engine run JOB.sql --checkpoint-dir file:///… --restore latest           # newest checkpoint, any generation
//! sluice-engine run JOB.sql --restore file:///…/jobs/j1/savepoints/sp-1            # a savepoint or checkpoint directory
//! ```
//! Each run claims the next generation under the checkpoint directory (so a
//! stale run of the same job is fenced) and writes `gen-N/chk-M/…` there.
//! `s3://bucket/prefix` works too (S3 settings from `S3_ENDPOINT`, `AWS_*`).

use std::sync::Arc;

use anyhow::{Context, Result, bail};
use sluice_blob::checkpoint::{CheckpointStore, parse_generation};
use sluice_runtime::connector::Connectors;
use sluice_runtime::coordinator::{CheckpointConfig, CheckpointStats};
use sluice_runtime::task::local::{LocalCheckpointing, LocalOptions, run_local};
use sluice_runtime::task::{CheckpointingMode, RestoreSnapshot};
use sluice_runtime::{JobConfig, JobReport, MetricsRegistry};

#[derive(clap::Args, Debug, Clone)]
pub struct CheckpointArgs {
    /// Job root for checkpoints and savepoints (`file:///abs/dir` or `s3://bucket/prefix`).
    #[arg(long)]
    pub checkpoint_dir: Option<String>,
    /// Take a checkpoint this often (0: only on demand).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_interval_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub checkpoint_min_pause_ms: u64,
    #[arg(long, default_value_t = 600_000)]
    pub checkpoint_timeout_ms: u64,
    /// Completed checkpoints kept.
    #[arg(long, default_value_t = 3)]
    pub checkpoints_retained: usize,
    /// exactly-once (aligned barriers) or at-least-once.
    #[arg(long, default_value = "exactly-once")]
    pub checkpointing_mode: String,
    /// `latest` (needs --checkpoint-dir) or the URI of a checkpoint or savepoint directory.
    #[arg(long)]
    pub restore: Option<String>,
    /// Drop state of operators the job no longer has instead of failing.
    #[arg(long)]
    pub allow_non_restored_state: bool,
    /// Job id written into checkpoint metadata (default: the job file's name).
    #[arg(long)]
    pub job_id: Option<String>,
}

impl CheckpointArgs {
    fn enabled(&self) -> bool {
        self.checkpoint_dir.is_some() || self.restore.is_some()
    }
}

/// Runs the job, with checkpoints and restore when asked; prints a checkpoint summary to stderr.
pub fn run(
    args: &CheckpointArgs,
    job_name: &str,
    plan: &sluice_sql::JobPlan,
    connectors: &Connectors,
    cfg: &JobConfig,
    metrics: &Arc<MetricsRegistry>,
) -> Result<JobReport> {
    if !args.enabled() {
        if args.checkpoint_interval_ms > 0 {
            bail!("--checkpoint-interval-ms needs --checkpoint-dir");
        }
        return sluice_runtime::run_job(plan, connectors, cfg, metrics).context("the job failed");
    }
    let mode = match args.checkpointing_mode.as_str() {
        "exactly-once" | "exactly_once" => CheckpointingMode::ExactlyOnce,
        "at-least-once" | "at_least_once" => CheckpointingMode::AtLeastOnce,
        other => bail!("unknown --checkpointing-mode '{other}' (exactly-once, at-least-once)"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime for the checkpoint store")?;
    let job_id = args.job_id.clone().unwrap_or_else(|| job_name.to_string());
    let store = match &args.checkpoint_dir {
        Some(uri) => Some(rt.block_on(claim_next_generation(uri))?),
        None => None,
    };
    let restore = match args.restore.as_deref() {
        None => None,
        Some("latest") => {
            let Some(store) = &store else {
                bail!("--restore latest needs --checkpoint-dir");
            };
            let latest = rt.block_on(RestoreSnapshot::latest(store))?;
            if latest.is_none() {
                eprintln!("no completed checkpoint under the checkpoint directory: starting fresh");
            }
            latest
        }
        Some(uri) => Some(rt.block_on(load_dir(uri))?),
    };
    if let Some(r) = &restore {
        eprintln!(
            "restoring from {} {} ({})",
            match r.metadata.kind {
                sluice_blob::checkpoint::SnapshotKind::Savepoint => "savepoint",
                sluice_blob::checkpoint::SnapshotKind::Checkpoint => "checkpoint",
            },
            r.checkpoint_id(),
            r.dir
        );
    }
    drop(rt);
    let checkpointing = store.map(|store| LocalCheckpointing {
        store,
        config: CheckpointConfig {
            interval_ms: args.checkpoint_interval_ms,
            min_pause_ms: args.checkpoint_min_pause_ms,
            timeout_ms: args.checkpoint_timeout_ms,
            retain_last: args.checkpoints_retained,
            mode,
        },
    });
    let report = run_local(
        plan,
        connectors,
        cfg,
        LocalOptions {
            job_id,
            checkpointing,
            restore,
            allow_non_restored_state: args.allow_non_restored_state,
            control: None,
            vertex_parallelism: Default::default(),
        },
        metrics,
    )
    .context("the job failed")?;
    print_stats(&report.checkpoints);
    Ok(report.job)
}

fn print_stats(s: &CheckpointStats) {
    let c = &s.counts;
    let latest = s
        .latest_completed
        .as_ref()
        .map(|r| {
            format!(
                ", latest {} ({} bytes, {} ms) at {}",
                r.id,
                r.state_size_bytes,
                r.end_to_end_duration_ms.unwrap_or(0),
                r.external_path.as_deref().unwrap_or("-")
            )
        })
        .unwrap_or_default();
    eprintln!(
        "checkpoints: {} completed, {} failed{latest}",
        c.completed, c.failed
    );
}

/// Claims generation (highest existing + 1) of the job root `uri`.
async fn claim_next_generation(uri: &str) -> Result<CheckpointStore> {
    let (base, root) = sluice_cluster::storage::split_uri(uri)?;
    let blob = sluice_cluster::storage::open_store(&base).await?;
    let newest = blob
        .list_dirs(Some(&root))
        .await
        .with_context(|| format!("listing {uri}"))?
        .iter()
        .filter_map(|d| parse_generation(d))
        .max()
        .unwrap_or(0);
    let store = CheckpointStore::new(blob, root, newest + 1)
        .with_context(|| format!("checkpoint storage {uri}"))?;
    store
        .claim()
        .await
        .with_context(|| format!("claiming generation {} of {uri}", newest + 1))?;
    Ok(store)
}

/// The checkpoint or savepoint whose `_metadata` is in directory `uri`.
async fn load_dir(uri: &str) -> Result<RestoreSnapshot> {
    let (base, dir) = sluice_cluster::storage::split_uri(uri)?;
    let blob = sluice_cluster::storage::open_store(&base).await?;
    // Only reads happen through this store: its root and generation are unused.
    let store = CheckpointStore::new(blob, dir.clone(), 0)?;
    RestoreSnapshot::load(&store, &dir)
        .await
        .with_context(|| format!("loading the snapshot in {uri}"))
}

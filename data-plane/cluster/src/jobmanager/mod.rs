//! The JobManager process: accepts TaskManagers and their slots, deploys the job once it
//! has enough slots, drives checkpoints through the task layer's coordinator, restarts the
//! job from the latest completed checkpoint when a TaskManager or subtask fails (with
//! exponential backoff), and serves a Flink-compatible REST API.
//!
//! Generation fencing: at start it claims its generation in the checkpoint store and exits
//! when a newer generation exists; a checkpoint commit that finds a newer generation stops
//! it too (a newer JobManager owns the job).

mod rest;
mod rpc_server;
mod scheduler;
mod state;

use std::time::Duration;

use anyhow::{Context, Result, bail};
use sluice_blob::checkpoint::CheckpointStore;
use sluice_runtime::task::{JobGraph, RestoreSnapshot};
use tokio::net::TcpListener;

use crate::args::JobManagerArgs;
use crate::rpc::RestoreRef;
pub use state::{Jm, JobStatus};

/// What the control loop is told.
pub enum Input {
    Event {
        /// The TaskManager that reported it.
        tm: String,
        subtask: crate::rpc::SubtaskRef,
        event: serde_json::Value,
    },
    /// A savepoint (`stop: Some(drain)`: stop the job with it); replies with the trigger id.
    Savepoint {
        target: Option<String>,
        stop: Option<bool>,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    },
    Cancel,
    /// Run at this parallelism from now on: restarts a running job from its latest
    /// completed checkpoint (state is rescaled by key group).
    Rescale(usize),
}

/// Runs a JobManager until SIGTERM (or until it is fenced by a newer generation).
pub fn run(args: JobManagerArgs) -> Result<()> {
    crate::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("jm")
        .build()?;
    rt.block_on(run_async(args))
}

fn check_job_id(id: &str) -> Result<()> {
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--job-id must be 32 hex digits, got {id:?}");
    }
    Ok(())
}

async fn run_async(args: JobManagerArgs) -> Result<()> {
    check_job_id(&args.job_id)?;
    let sql = std::fs::read_to_string(&args.job)
        .with_context(|| format!("reading {}", args.job.display()))?;
    let plan = match sluice_sql::plan(&sql) {
        Ok(p) => p,
        Err(errs) => {
            for e in &errs {
                eprintln!(
                    "{}:{}:{}: {} [{}]",
                    args.job.display(),
                    e.line,
                    e.column,
                    e.message,
                    e.code.as_str()
                );
            }
            bail!("{} has {} error(s)", args.job.display(), errs.len())
        }
    };
    let parallelism = crate::parallelism_of(&plan, args.parallelism)?;
    let graph = JobGraph::new(&plan, parallelism, args.max_parallelism)?;
    match args.state_backend.as_str() {
        "memory" | "hashmap" | "rocksdb" => {}
        other => bail!("unknown --state-backend '{other}' (memory, rocksdb)"),
    }
    let exactly_once = match args.checkpoint_mode.as_str() {
        "exactly_once" | "EXACTLY_ONCE" => true,
        "at_least_once" | "AT_LEAST_ONCE" => false,
        other => bail!("unknown --checkpoint-mode '{other}' (exactly_once, at_least_once)"),
    };
    let token = args
        .auth_token_file
        .as_deref()
        .map(crate::auth::read_token)
        .transpose()?;

    let (base, root) = crate::storage::split_uri(&args.checkpoint_dir)?;
    let store = crate::storage::open_store(&base).await?;
    let checkpoints = CheckpointStore::new(store, root, args.generation)?;
    // Claim before reading what to restore from: a newer JobManager's claim fences us.
    checkpoints.claim().await.with_context(|| {
        format!(
            "claiming generation {} of {}",
            args.generation, args.checkpoint_dir
        )
    })?;
    let restore = resolve_restore(&args, &base, &checkpoints).await?;
    if let Some((r, snap)) = &restore {
        snap.check_against(&graph, args.allow_non_restored_state)
            .with_context(|| format!("restoring from {}/{}", r.store, r.dir))?;
        tracing::info!(
            "restoring from checkpoint {} at {}/{}",
            snap.checkpoint_id(),
            r.store,
            r.dir
        );
    }

    let rest_listener = TcpListener::bind(args.rest_addr)
        .await
        .with_context(|| format!("binding REST on {}", args.rest_addr))?;
    let rpc_listener = TcpListener::bind(args.rpc_addr)
        .await
        .with_context(|| format!("binding RPC on {}", args.rpc_addr))?;
    let (rest_addr, rpc_addr) = (rest_listener.local_addr()?, rpc_listener.local_addr()?);

    let name = plan
        .pipelines
        .iter()
        .map(|p| format!("{} -> {}", p.source, p.sink))
        .collect::<Vec<_>>()
        .join(", ");
    let jm = Jm::new(state::JmInit {
        args: args.clone(),
        name,
        sql,
        plan,
        graph,
        parallelism,
        exactly_once,
        token,
        store_base: base,
        checkpoints,
        restore: restore.map(|(r, _)| r),
    })?;
    tokio::spawn(rpc_server::accept(jm.clone(), rpc_listener));
    tokio::spawn(scheduler::control_loop(jm.clone()));
    let app = rest::router(jm.clone());
    let shutdown = jm.shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(rest_listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
    });
    if let Some(p) = &args.ports_file {
        crate::ports::write_ports_file(p, rest_addr, rpc_addr)?;
    }
    tracing::info!(
        "jobmanager of job {} (generation {}): REST on {rest_addr}, RPC on {rpc_addr}, parallelism {parallelism}",
        args.job_id,
        args.generation
    );
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let fenced = tokio::select! {
        _ = sigterm.recv() => None,
        _ = sigint.recv() => None,
        () = jm.fenced.cancelled() => jm.fence_reason(),
    };
    tracing::info!("jobmanager shutting down");
    jm.cancel_deployment("the jobmanager is shutting down");
    jm.shutdown.cancel();
    // Let the cancel messages reach the TaskManagers.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    if let Some(reason) = fenced {
        bail!("fenced: {reason}");
    }
    Ok(())
}

/// What `--restore` names, loaded and checked.
async fn resolve_restore(
    args: &JobManagerArgs,
    base: &str,
    checkpoints: &CheckpointStore,
) -> Result<Option<(RestoreRef, RestoreSnapshot)>> {
    match args.restore.as_str() {
        "none" | "" => Ok(None),
        "latest" => Ok(RestoreSnapshot::latest(checkpoints).await?.map(|s| {
            (
                RestoreRef {
                    store: base.to_string(),
                    dir: s.dir.to_string(),
                },
                s,
            )
        })),
        uri => {
            let (sbase, dir) = crate::storage::split_uri(uri)?;
            let store = if sbase == base {
                checkpoints.blob_store().clone()
            } else {
                crate::storage::open_store(&sbase).await?
            };
            let cs = CheckpointStore::new(store, dir.clone(), args.generation)?;
            let snap = RestoreSnapshot::load(&cs, &dir)
                .await
                .with_context(|| format!("--restore {uri}"))?;
            Ok(Some((
                RestoreRef {
                    store: sbase,
                    dir: dir.to_string(),
                },
                snap,
            )))
        }
    }
}

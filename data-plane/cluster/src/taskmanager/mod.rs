//! The TaskManager process: registers with the JobManager and offers its slots, runs the
//! subtasks deployed to it, exchanges data with other TaskManagers, and reports subtask
//! events and metrics. When the JobManager goes away (connection closed or heartbeats
//! missing) it cancels its subtasks and keeps trying to register — a new JobManager of the
//! next generation may come up on the same address — until `--register-timeout-ms` passes
//! without one, then exits.

mod deploy;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::net::TcpStream;
use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};

use crate::Services;
use crate::args::TaskManagerArgs;
use crate::exchange::DataServer;
use crate::frame::{read_json, write_json};
use crate::rpc::{ToJm, ToTm, parse_prometheus};

pub use deploy::Running;

/// Runs a TaskManager until its JobManager is gone for good or it receives SIGTERM.
pub fn run(args: TaskManagerArgs, services: Services) -> Result<()> {
    crate::init_logging();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("tm-io")
        .build()?;
    rt.block_on(run_async(args, Arc::new(services)))
}

async fn run_async(args: TaskManagerArgs, services: Arc<Services>) -> Result<()> {
    let token = args
        .auth_token_file
        .as_deref()
        .map(crate::auth::read_token)
        .transpose()?;
    std::fs::create_dir_all(&args.work_dir)
        .with_context(|| format!("creating the work dir {}", args.work_dir.display()))?;
    let data = DataServer::bind(args.data_addr, token.clone()).await?;
    tracing::info!(
        "taskmanager {} with {} slots, data exchange on {}",
        args.id,
        args.slots,
        data.addr()
    );
    let running = Running::new(services, data.clone(), args.work_dir.clone(), token.clone());
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let give_up = Duration::from_millis(args.register_timeout_ms);
    let mut last_contact = Instant::now();
    loop {
        let session = session(&args, &data, token.as_deref(), &running);
        tokio::select! {
            res = session => {
                match res {
                    Ok(()) => {
                        tracing::warn!("the jobmanager at {} went away", args.jobmanager);
                        last_contact = Instant::now();
                    }
                    Err(e) if e.is::<Refused>() => return Err(e),
                    Err(e) => tracing::debug!("jobmanager at {}: {e:#}", args.jobmanager),
                }
                running.cancel_all("the jobmanager connection ended");
                // The next JobManager (or this one again) redeploys and restores, and its
                // restore re-commits the latest checkpoint's output: nothing of the old
                // attempts may still be running then. The cancellation watchdog ends this
                // process if they do not stop.
                let r = running.clone();
                let idle = tokio::task::spawn_blocking(move || {
                    r.wait_idle(Instant::now() + deploy::CANCEL_TIMEOUT)
                })
                .await?;
                if !idle {
                    tracing::error!("subtasks still run {:?} after the jobmanager went away: exiting", deploy::CANCEL_TIMEOUT);
                    std::process::exit(deploy::EXIT_CANCEL_TIMEOUT);
                }
            }
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: cancelling subtasks and exiting");
                running.cancel_all("the taskmanager is shutting down");
                return Ok(());
            }
        }
        if last_contact.elapsed() > give_up {
            bail!(
                "no jobmanager at {} for {} ms: giving up",
                args.jobmanager,
                args.register_timeout_ms
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The JobManager refused the registration (a wrong token): retrying cannot help.
#[derive(Debug, thiserror::Error)]
#[error("the jobmanager refused the registration: {0}")]
struct Refused(String);

/// One registration: returns `Ok(())` when a registered session ended (the JobManager is
/// gone), an error when registration itself failed.
async fn session(
    args: &TaskManagerArgs,
    data: &DataServer,
    token: Option<&str>,
    running: &Running,
) -> Result<()> {
    let sock = TcpStream::connect(&args.jobmanager)
        .await
        .with_context(|| format!("connecting to {}", args.jobmanager))?;
    sock.set_nodelay(true)?;
    // Bound to a wildcard address, the data endpoint is advertised at the address this
    // host uses to reach the JobManager, which other TaskManagers can reach too.
    let mut data_addr = data.addr();
    if data_addr.ip().is_unspecified() {
        data_addr.set_ip(sock.local_addr()?.ip());
    }
    running.set_advertised(data_addr);
    let (mut r, mut w) = sock.into_split();
    write_json(
        &mut w,
        &ToJm::Register {
            tm_id: args.id.clone(),
            slots: args.slots,
            data_addr,
            pid: std::process::id(),
            token: token.map(str::to_string),
        },
    )
    .await?;
    let first: Option<ToTm> =
        tokio::time::timeout(Duration::from_secs(5), read_json(&mut r)).await??;
    let hb = match first {
        Some(ToTm::Registered {
            generation,
            heartbeat_interval_ms,
        }) => {
            tracing::info!(
                "registered with the jobmanager at {} (generation {generation})",
                args.jobmanager
            );
            Duration::from_millis(heartbeat_interval_ms.max(10))
        }
        Some(ToTm::Refused { reason }) => return Err(Refused(reason).into()),
        other => bail!("unexpected first answer {other:?}"),
    };
    let (tx, mut rx) = unbounded_channel::<ToJm>();
    running.set_events(Some(tx.clone()));
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            write_json(&mut w, &m).await?;
        }
        anyhow::Ok(())
    });
    let beat = {
        let tx = tx.clone();
        let running = running.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(hb);
            loop {
                tick.tick().await;
                if tx.send(ToJm::Heartbeat).is_err() {
                    return;
                }
                // With every heartbeat: a few dozen samples, and the JobManager's view of
                // progress (and of recovery after a failure) is as fresh as its liveness.
                if let Some((attempt, text)) = running.metrics_text() {
                    let mut samples = parse_prometheus(&text);
                    samples.push(crate::rpc::Sample {
                        name: "sluice_backpressured_time_ms_total".into(),
                        labels: Vec::new(),
                        value: crate::exchange::BACKPRESSURED_NANOS
                            .load(std::sync::atomic::Ordering::Relaxed)
                            as f64
                            / 1e6,
                    });
                    let _ = tx.send(ToJm::Metrics { attempt, samples });
                }
            }
        })
    };
    let timeout = Duration::from_millis(args.heartbeat_timeout_ms);
    let res: Result<()> = async {
        loop {
            let msg: Option<ToTm> = match tokio::time::timeout(timeout, read_json(&mut r)).await {
                Ok(m) => m?,
                Err(_) => {
                    tracing::warn!("no heartbeat from the jobmanager for {timeout:?}");
                    return Ok(());
                }
            };
            match msg {
                None => return Ok(()),
                Some(ToTm::Heartbeat) => {}
                Some(ToTm::Deploy(d)) => running.deploy(*d, &tx),
                Some(ToTm::Command { subtask, command }) => running.command(subtask, command),
                Some(ToTm::Cancel { attempt }) => {
                    running.cancel(attempt, "cancelled by the jobmanager")
                }
                Some(m @ (ToTm::Registered { .. } | ToTm::Refused { .. })) => {
                    tracing::warn!("ignoring {m:?} after registration")
                }
            }
        }
    }
    .await;
    running.set_events(None);
    beat.abort();
    writer.abort();
    res
}

/// Senders of events to the current JobManager session.
pub(crate) type EventsTx = Arc<Mutex<Option<UnboundedSender<ToJm>>>>;

pub(crate) fn send_event(events: &EventsTx, msg: ToJm) {
    if let Some(tx) = events
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .as_ref()
    {
        let _ = tx.send(msg);
    }
}

pub(crate) type Commands =
    HashMap<crate::rpc::SubtaskRef, std::sync::mpsc::Sender<sluice_runtime::task::SubtaskCommand>>;

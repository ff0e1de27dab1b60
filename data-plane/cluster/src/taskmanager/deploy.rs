//! Running a deployment on this TaskManager: plan the SQL, build the physical graph, wire
//! each local subtask's input gate and output channels (in memory to subtasks here, TCP to
//! subtasks elsewhere), and start `sluice_runtime::task::run_subtask` on a thread per
//! subtask.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use sluice_blob::checkpoint::CheckpointStore;
use sluice_runtime::MetricsRegistry;
use sluice_runtime::task::{
    CheckpointingMode, EventSink, InputGate, JobGraph, OutputChannel, RestoreSnapshot,
    SnapshotStorage, SubtaskCommand, SubtaskEvent, SubtaskId, SubtaskSetup, TaskConfig,
    run_subtask,
};
use tokio::sync::mpsc::UnboundedSender;

use super::{Commands, EventsTx, send_event};
use crate::Services;
use crate::exchange::{
    ChannelKey, DEFAULT_CHANNEL_CAPACITY, DataServer, InputSource, NetOutput, connect_remote,
};
use crate::rpc::{Deployment, RestoreRef, SubtaskRef, ToJm};

/// Subtasks of the deployments running here.
#[derive(Clone)]
pub struct Running {
    inner: Arc<Inner>,
}

struct Inner {
    services: Arc<Services>,
    data: DataServer,
    work_dir: PathBuf,
    token: Option<String>,
    events: EventsTx,
    rt: tokio::runtime::Handle,
    attempts: Mutex<HashMap<u64, Attempt>>,
    metrics: Mutex<Option<(u64, Arc<MetricsRegistry>)>>,
    /// The data address the JobManager was told (what deployments name this TaskManager by).
    advertised: Mutex<Option<std::net::SocketAddr>>,
    /// Threads of each attempt that may still produce output (its deployment thread, then
    /// its subtasks), including attempts already cancelled.
    live: Mutex<HashMap<u64, Arc<Live>>>,
    /// Attempts cancelled (one by one, or all at once when the JobManager went away)
    /// whose deployment thread must not start subtasks any more.
    cancelled: Mutex<std::collections::HashSet<u64>>,
}

/// How long a cancelled attempt's threads may take to end. Past it the TaskManager exits:
/// a subtask stuck in a sink commit must not commit beside the next attempt, whose restore
/// re-commits the same checkpoint (Flink's `task.cancellation.timeout` does the same). It
/// is below the JobManager's drain timeout, so the JobManager sees this process gone
/// before it deploys over a subtask that never reported its end.
pub const CANCEL_TIMEOUT: Duration = Duration::from_secs(8);

/// Exit code of a TaskManager whose cancelled subtasks did not end in time.
pub const EXIT_CANCEL_TIMEOUT: i32 = 75;

/// The running threads of an attempt, by name, that can be waited on.
#[derive(Default)]
struct Live {
    running: Mutex<Vec<String>>,
    ended: Condvar,
}

/// One counted thread; dropping it (also by unwinding) counts the thread out.
struct LiveGuard(Arc<Live>, String);

impl Live {
    fn enter(self: &Arc<Self>, name: String) -> LiveGuard {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(name.clone());
        LiveGuard(self.clone(), name)
    }

    fn running(&self) -> usize {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn names(&self) -> String {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .join(", ")
    }

    /// Whether every counted thread ended before `deadline`.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut n = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        while !n.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            n = self
                .ended
                .wait_timeout(n, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut n = self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = n.iter().position(|x| *x == self.1) {
            n.swap_remove(i);
        }
        self.0.ended.notify_all();
    }
}

struct Attempt {
    cancel: Arc<AtomicBool>,
    commands: Commands,
}

struct NetEvents {
    attempt: u64,
    events: EventsTx,
}

impl EventSink for NetEvents {
    fn send(&self, from: SubtaskId, event: SubtaskEvent) {
        let event = match serde_json::to_value(&event) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!("subtask {from}: encoding its event: {e}");
                return;
            }
        };
        send_event(
            &self.events,
            ToJm::Event {
                subtask: SubtaskRef {
                    attempt: self.attempt,
                    vertex: from.vertex,
                    subtask: from.subtask,
                },
                event,
            },
        );
    }
}

impl Running {
    pub fn new(
        services: Arc<Services>,
        data: DataServer,
        work_dir: PathBuf,
        token: Option<String>,
    ) -> Running {
        Running {
            inner: Arc::new(Inner {
                services,
                data,
                work_dir,
                token,
                events: Arc::new(Mutex::new(None)),
                rt: tokio::runtime::Handle::current(),
                attempts: Mutex::new(HashMap::new()),
                metrics: Mutex::new(None),
                advertised: Mutex::new(None),
                live: Mutex::new(HashMap::new()),
                cancelled: Mutex::new(Default::default()),
            }),
        }
    }

    pub(crate) fn set_advertised(&self, addr: std::net::SocketAddr) {
        *self
            .inner
            .advertised
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(addr);
    }

    pub(crate) fn set_events(&self, tx: Option<UnboundedSender<ToJm>>) {
        *self
            .inner
            .events
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = tx;
    }

    /// The newest deployment's metrics in Prometheus' text format.
    pub fn metrics_text(&self) -> Option<(u64, String)> {
        self.inner
            .metrics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(a, m)| (*a, m.render_prometheus()))
    }

    pub(crate) fn command(&self, subtask: SubtaskRef, command: serde_json::Value) {
        let command: SubtaskCommand = match serde_json::from_value(command) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("undecodable command for {subtask:?}: {e}");
                return;
            }
        };
        let attempts = self
            .inner
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(tx) = attempts
            .get(&subtask.attempt)
            .and_then(|a| a.commands.get(&subtask))
        {
            // A finished subtask dropped its receiver: nothing left to tell it.
            let _ = tx.send(command);
        }
    }

    pub fn cancel(&self, attempt: u64, why: &str) {
        self.inner
            .cancelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(attempt);
        let live = self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&attempt)
            .cloned();
        if let Some(live) = live.filter(|l| l.running() > 0) {
            let watchdog = std::thread::Builder::new()
                .name(format!("cancel-{attempt}"))
                .spawn(move || {
                    if !live.wait_until(Instant::now() + CANCEL_TIMEOUT) {
                        tracing::error!(
                            "cancelled attempt {attempt}: {} did not end within {CANCEL_TIMEOUT:?}: exiting",
                            live.names()
                        );
                        std::process::exit(EXIT_CANCEL_TIMEOUT);
                    }
                });
            if let Err(e) = watchdog {
                // Without a watchdog nothing bounds the cancelled attempt: not safe to go on.
                tracing::error!("spawning the cancellation watchdog of attempt {attempt}: {e}");
                std::process::exit(EXIT_CANCEL_TIMEOUT);
            }
        }
        let taken = self
            .inner
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&attempt);
        if let Some(a) = taken {
            tracing::info!("cancelling attempt {attempt}: {why}");
            a.cancel.store(true, Ordering::SeqCst);
            for tx in a.commands.values() {
                let _ = tx.send(SubtaskCommand::Cancel);
            }
        }
        self.inner.data.drop_attempts_before(attempt + 1);
    }

    pub fn cancel_all(&self, why: &str) {
        // Attempts still being set up are in `live` only.
        let mut ids: Vec<u64> = self
            .inner
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        ids.extend(
            self.inner
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .copied(),
        );
        ids.sort_unstable();
        ids.dedup();
        for a in ids {
            self.cancel(a, why);
        }
    }

    /// Waits until every thread of every attempt (cancelled ones included) has ended;
    /// false when some did not before `deadline`. A TaskManager registers with a new
    /// JobManager only once this holds, so the new JobManager's deployment can never run
    /// beside a subtask of the old one.
    pub fn wait_idle(&self, deadline: Instant) -> bool {
        let lives: Vec<Arc<Live>> = self
            .inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        if !lives.iter().all(|l| l.wait_until(deadline)) {
            return false;
        }
        // Attempt numbers are the JobManager's: a new one may count from 1 again.
        self.inner
            .live
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, l| l.running() > 0);
        self.inner
            .cancelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        true
    }

    pub(crate) fn deploy(&self, d: Deployment, _tx: &UnboundedSender<ToJm>) {
        let live = {
            let mut lives = self
                .inner
                .live
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            lives.retain(|_, l| l.running() > 0);
            lives.entry(d.attempt).or_default().clone()
        };
        let deploying = live.enter(format!("deployment of attempt {}", d.attempt));
        let this = self.clone();
        // Planning, connector set-up and restore downloads block: not on the I/O threads.
        let spawned = std::thread::Builder::new()
            .name(format!("deploy-{}", d.attempt))
            .spawn(move || {
                let _deploying = deploying;
                let attempt = d.attempt;
                let subtasks = d.subtasks.clone();
                if let Err(e) = this.start(d, &live) {
                    tracing::error!("deploying attempt {attempt}: {e:#}");
                    let sink = NetEvents {
                        attempt,
                        events: this.inner.events.clone(),
                    };
                    for (vertex, subtask) in subtasks {
                        sink.send(
                            SubtaskId { vertex, subtask },
                            SubtaskEvent::Failed {
                                error: format!("deployment failed: {e:#}"),
                            },
                        );
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("spawning the deployment thread: {e}");
        }
    }

    fn start(&self, d: Deployment, live: &Arc<Live>) -> Result<()> {
        let inner = &self.inner;
        let rt = inner.rt.clone();
        let plan = sluice_sql::plan(&d.sql)
            .map_err(|errs| anyhow!("the job does not plan: {:?}", errs.first()))?;
        let graph = Arc::new(JobGraph::new(&plan, d.parallelism, d.max_parallelism)?);
        // The JobManager planned the same SQL; a different build may cut it differently.
        let shapes_match = d.locations.len() == graph.vertices.len()
            && graph
                .vertices
                .iter()
                .zip(&d.locations)
                .all(|(v, l)| l.len() == v.parallelism)
            && d.subtasks
                .iter()
                .all(|(v, s)| graph.vertices.get(*v).is_some_and(|x| *s < x.parallelism));
        if !shapes_match {
            anyhow::bail!(
                "the deployment does not match this TaskManager's plan of the job ({} vertices here)",
                graph.vertices.len()
            );
        }
        let mut job = crate::job_config(&plan, d.parallelism, d.max_parallelism)?;
        let state_dir = inner.work_dir.join(format!("attempt-{}", d.attempt));
        std::fs::create_dir_all(&state_dir)
            .with_context(|| format!("creating {}", state_dir.display()))?;
        job.state = (inner.services.state)(&d.state_backend, &state_dir)?;
        job.native = (inner.services.native)(&d.state_backend);
        let (base, root) = crate::storage::split_uri(&d.checkpoint_dir)?;
        let store = rt.block_on(crate::storage::open_store(&base))?;
        let checkpoints = CheckpointStore::new(store.clone(), root, d.generation)?;
        let config = TaskConfig {
            job,
            job_id: d.job_id.clone(),
            storage: Some(SnapshotStorage {
                store: checkpoints.clone(),
                runtime: rt.clone(),
            }),
            mode: if d.exactly_once {
                CheckpointingMode::ExactlyOnce
            } else {
                CheckpointingMode::AtLeastOnce
            },
            cancelled: Arc::new(AtomicBool::new(false)),
        };
        let restore = match &d.restore {
            None => None,
            Some(RestoreRef { store: sbase, dir }) => {
                let s = if *sbase == base {
                    store.clone()
                } else {
                    rt.block_on(crate::storage::open_store(sbase))?
                };
                let dir = sluice_blob::BlobPath::new(dir.clone())?;
                let cs = CheckpointStore::new(s, dir.clone(), d.generation)?;
                Some(Arc::new(rt.block_on(RestoreSnapshot::load(&cs, &dir))?))
            }
        };
        let metrics = MetricsRegistry::new();
        // The attempt's one cancellation flag: gates, outputs and sinks all watch it.
        let cancel = config.cancelled.clone();
        let me = inner
            .advertised
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .unwrap_or_else(|| inner.data.addr());
        let local: Vec<(usize, usize)> = d.subtasks.clone();
        // Gates first: their in-memory ends are the outputs of upstream subtasks here.
        let mut gates: HashMap<(usize, usize), Box<dyn InputGate>> = HashMap::new();
        let mut local_outputs: HashMap<(usize, usize, usize), NetOutput> = HashMap::new();
        for &(v, s) in &local {
            if graph.vertices[v].input.is_none() {
                continue;
            }
            // Channel `ch` comes from subtask `u` of `up` (a join's right input follows its left).
            let sources = graph
                .input_sources(v)
                .into_iter()
                .enumerate()
                .map(|(ch, (up, u))| {
                    if d.locations[up][u] == me {
                        InputSource::Local
                    } else {
                        InputSource::Remote(ChannelKey {
                            attempt: d.attempt,
                            vertex: v,
                            subtask: s,
                            channel: ch,
                        })
                    }
                })
                .collect();
            let (gate, outs) = inner.data.gate(sources, DEFAULT_CHANNEL_CAPACITY, &cancel);
            for (u, o) in outs {
                local_outputs.insert((v, s, u), o);
            }
            gates.insert((v, s), Box::new(gate));
        }
        let mut commands = Commands::new();
        let mut setups = Vec::new();
        for &(v, s) in &local {
            let mut outputs: Vec<Box<dyn OutputChannel>> = Vec::new();
            if let Some(w) = graph.vertices[v].output {
                let ch = graph.output_channel(v, s);
                for dn in 0..graph.vertices[w].parallelism {
                    let out = match local_outputs.remove(&(w, dn, ch)) {
                        Some(o) => o,
                        None => connect_remote(
                            &rt,
                            d.locations[w][dn],
                            ChannelKey {
                                attempt: d.attempt,
                                vertex: w,
                                subtask: dn,
                                channel: ch,
                            },
                            inner.token.clone(),
                            Duration::from_secs(10),
                            &cancel,
                        ),
                    };
                    outputs.push(Box::new(out));
                }
            }
            let (ctx, crx) = std::sync::mpsc::channel();
            commands.insert(
                SubtaskRef {
                    attempt: d.attempt,
                    vertex: v,
                    subtask: s,
                },
                ctx,
            );
            setups.push(SubtaskSetup {
                graph: graph.clone(),
                id: SubtaskId {
                    vertex: v,
                    subtask: s,
                },
                config: config.clone(),
                connectors: inner.services.connectors.clone(),
                input: gates.remove(&(v, s)),
                outputs,
                commands: crx,
                events: Arc::new(NetEvents {
                    attempt: d.attempt,
                    events: inner.events.clone(),
                }),
                restore: restore.clone(),
                metrics: metrics.clone(),
            });
        }
        {
            let mut attempts = inner
                .attempts
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            // Cancelled while it was being set up (restore downloads take a while): its
            // subtasks must never start. Checked under the lock `cancel` takes next.
            if inner
                .cancelled
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .contains(&d.attempt)
            {
                tracing::info!("attempt {} was cancelled before it started", d.attempt);
                return Ok(());
            }
            attempts.insert(
                d.attempt,
                Attempt {
                    cancel: cancel.clone(),
                    commands,
                },
            );
        }
        *inner.metrics.lock().unwrap_or_else(PoisonError::into_inner) = Some((d.attempt, metrics));
        for setup in setups {
            let id = setup.id;
            let events = setup.events.clone();
            let attempt = d.attempt;
            let counted = live.enter(format!("subtask {id}"));
            std::thread::Builder::new()
                .name(format!("sub-{}-{}", id.vertex, id.subtask))
                .spawn(move || {
                    let _counted = counted;
                    tracing::debug!("attempt {attempt}: subtask {id} starts");
                    // The subtask reports its own end (Finished / Failed) as an event.
                    if let Err(e) = run_subtask(setup) {
                        tracing::info!("attempt {attempt}: subtask {id} failed: {e}");
                    }
                })
                .map_err(|e| {
                    events.send(
                        id,
                        SubtaskEvent::Failed {
                            error: format!("spawning its thread: {e}"),
                        },
                    );
                    e
                })
                .with_context(|| format!("spawning subtask {id}"))?;
        }
        Ok(())
    }
}

//! Running a deployment on this TaskManager: plan the SQL, build the physical graph, wire
//! each local subtask's input gate and output channels (in memory to subtasks here, TCP to
//! subtasks elsewhere), and start `sluice_runtime::task::run_subtask` on a thread per
//! subtask.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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
        let ids: Vec<u64> = self
            .inner
            .attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect();
        for a in ids {
            self.cancel(a, why);
        }
    }

    pub(crate) fn deploy(&self, d: Deployment, _tx: &UnboundedSender<ToJm>) {
        let this = self.clone();
        // Planning, connector set-up and restore downloads block: not on the I/O threads.
        let spawned = std::thread::Builder::new()
            .name(format!("deploy-{}", d.attempt))
            .spawn(move || {
                let attempt = d.attempt;
                let subtasks = d.subtasks.clone();
                if let Err(e) = this.start(d) {
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

    fn start(&self, d: Deployment) -> Result<()> {
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
        let cancel = Arc::new(AtomicBool::new(false));
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
            let Some(input) = &graph.vertices[v].input else {
                continue;
            };
            let up = input.upstream;
            let sources = (0..graph.vertices[up].parallelism)
                .map(|u| {
                    if d.locations[up][u] == me {
                        InputSource::Local
                    } else {
                        InputSource::Remote(ChannelKey {
                            attempt: d.attempt,
                            vertex: v,
                            subtask: s,
                            channel: u,
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
                for dn in 0..graph.vertices[w].parallelism {
                    let out = match local_outputs.remove(&(w, dn, s)) {
                        Some(o) => o,
                        None => connect_remote(
                            &rt,
                            d.locations[w][dn],
                            ChannelKey {
                                attempt: d.attempt,
                                vertex: w,
                                subtask: dn,
                                channel: s,
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
            std::thread::Builder::new()
                .name(format!("sub-{}-{}", id.vertex, id.subtask))
                .spawn(move || {
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

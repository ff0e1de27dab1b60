//! The one-process form of the task layer: every subtask a thread, channels
//! in memory (`sync_channel`: a full channel blocks the sender), and — when
//! checkpointing is on or the job restores — a [`CheckpointCoordinator`] on
//! the calling thread driving them through the same commands and events the
//! cluster sends over TCP.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sluice_blob::checkpoint::CheckpointStore;
use sluice_sql::JobPlan;

use super::{
    EventSink, InputGate, JobGraph, OutputChannel, RestoreSnapshot, SnapshotStorage,
    SubtaskCommand, SubtaskEvent, SubtaskId, SubtaskSetup, TaskConfig, run_subtask,
};
use crate::connector::Connectors;
use crate::coordinator::{CheckpointConfig, CheckpointCoordinator, CheckpointStats, CommandSink};
use crate::error::{Context, Result, RuntimeError};
use crate::executor::{JobConfig, JobReport, PipelineReport};
use crate::message::{Envelope, Message};
use crate::metrics::MetricsRegistry;

/// An input gate over one in-memory channel shared by all upstream subtasks.
pub struct ChannelGate {
    rx: Receiver<Envelope>,
}

impl ChannelGate {
    pub fn new(rx: Receiver<Envelope>) -> Self {
        ChannelGate { rx }
    }
}

impl InputGate for ChannelGate {
    fn recv_timeout(&mut self, timeout: Duration) -> Result<Option<Envelope>> {
        match self.rx.recv_timeout(timeout) {
            Ok(e) => Ok(Some(e)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(RuntimeError::Task(
                "an upstream subtask stopped without finishing".into(),
            )),
        }
    }
}

/// The in-memory channel from upstream subtask `channel` to one downstream subtask.
pub struct ChannelOutput {
    channel: usize,
    target: usize,
    tx: SyncSender<Envelope>,
}

impl ChannelOutput {
    pub fn new(channel: usize, target: usize, tx: SyncSender<Envelope>) -> Self {
        ChannelOutput {
            channel,
            target,
            tx,
        }
    }
}

impl OutputChannel for ChannelOutput {
    fn send(&mut self, message: Message) -> Result<()> {
        self.tx
            .send(Envelope {
                channel: self.channel,
                message,
            })
            .map_err(|_| RuntimeError::Task(format!("downstream subtask {} stopped", self.target)))
    }
}

struct LocalCommands {
    senders: BTreeMap<SubtaskId, Mutex<Sender<SubtaskCommand>>>,
}

impl CommandSink for LocalCommands {
    fn send(&self, to: SubtaskId, command: SubtaskCommand) -> Result<()> {
        let tx = self
            .senders
            .get(&to)
            .ok_or_else(|| RuntimeError::Task(format!("no subtask {to}")))?;
        tx.lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(command)
            .map_err(|_| RuntimeError::Task(format!("subtask {to} has ended")))
    }
}

struct LocalEvents {
    tx: tokio::sync::mpsc::UnboundedSender<(SubtaskId, SubtaskEvent)>,
}

impl EventSink for LocalEvents {
    fn send(&self, from: SubtaskId, event: SubtaskEvent) {
        // The coordinator loop is gone only when the job is over.
        let _ = self.tx.send((from, event));
    }
}

/// Events are not needed without a coordinator: outcomes come from the threads.
struct NoEvents;

impl EventSink for NoEvents {
    fn send(&self, _from: SubtaskId, _event: SubtaskEvent) {}
}

/// Checkpointing of a local job.
pub struct LocalCheckpointing {
    /// Already claimed for its generation.
    pub store: CheckpointStore,
    pub config: CheckpointConfig,
}

#[derive(Default)]
pub struct LocalOptions {
    pub job_id: String,
    pub checkpointing: Option<LocalCheckpointing>,
    pub restore: Option<RestoreSnapshot>,
    pub allow_non_restored_state: bool,
    /// Savepoints and cancellation from another thread (see [`LocalControl::new`]).
    pub control: Option<ControlInbox>,
    /// Per-vertex parallelism instead of `JobConfig::parallelism` (a graph
    /// built at parallelism 1 is chained and cannot take overrides).
    pub vertex_parallelism: BTreeMap<super::VertexId, usize>,
}

enum ControlRequest {
    Savepoint {
        id: String,
        stop: Option<bool>,
        reply: Sender<Result<u64>>,
    },
    Cancel,
}

/// Drives a running local job from another thread.
#[derive(Clone)]
pub struct LocalControl {
    tx: tokio::sync::mpsc::UnboundedSender<ControlRequest>,
    stats: Arc<Mutex<CheckpointStats>>,
}

/// The job's end of a [`LocalControl`]: pass it in [`LocalOptions::control`].
pub struct ControlInbox {
    rx: tokio::sync::mpsc::UnboundedReceiver<ControlRequest>,
    stats: Arc<Mutex<CheckpointStats>>,
}

impl LocalControl {
    pub fn new() -> (LocalControl, ControlInbox) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let stats = Arc::new(Mutex::new(CheckpointStats::default()));
        (
            LocalControl {
                tx,
                stats: stats.clone(),
            },
            ControlInbox { rx, stats },
        )
    }

    /// Queues a savepoint; returns its checkpoint id (see [`stats`](Self::stats) for its outcome).
    pub fn trigger_savepoint(&self, savepoint_id: &str) -> Result<u64> {
        self.savepoint(savepoint_id, None)
    }

    /// Stops the job with a savepoint (`drain`: fire every timer first).
    pub fn stop_with_savepoint(&self, savepoint_id: &str, drain: bool) -> Result<u64> {
        self.savepoint(savepoint_id, Some(drain))
    }

    fn savepoint(&self, id: &str, stop: Option<bool>) -> Result<u64> {
        let (reply, rx) = channel();
        self.tx
            .send(ControlRequest::Savepoint {
                id: id.to_string(),
                stop,
                reply,
            })
            .map_err(|_| RuntimeError::Task("the job is not running".into()))?;
        rx.recv()
            .map_err(|_| RuntimeError::Task("the job ended before it took the request".into()))?
    }

    pub fn cancel(&self) {
        let _ = self.tx.send(ControlRequest::Cancel);
    }

    /// Checkpoint statistics as of the last event.
    pub fn stats(&self) -> CheckpointStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// What a local run did.
#[derive(Debug, Clone)]
pub struct LocalReport {
    pub job: JobReport,
    pub checkpoints: CheckpointStats,
}

/// Runs a job in this process (bounded sources: to completion), with the
/// checkpointing and restore of `opts`.
pub fn run_local(
    plan: &JobPlan,
    connectors: &Connectors,
    cfg: &JobConfig,
    opts: LocalOptions,
    metrics: &Arc<MetricsRegistry>,
) -> Result<LocalReport> {
    let started = Instant::now();
    let mut graph = JobGraph::new(plan, cfg.parallelism, cfg.max_parallelism)?;
    for (v, p) in &opts.vertex_parallelism {
        graph.set_parallelism(*v, *p)?;
    }
    let graph = Arc::new(graph);
    if let Some(r) = &opts.restore {
        r.check_against(&graph, opts.allow_non_restored_state)?;
    }
    let needs_runtime = opts.checkpointing.is_some() || opts.restore.is_some();
    let rt = if needs_runtime {
        Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("sluice-checkpoint-io")
                .enable_all()
                .build()
                .ctx(|| "starting the checkpoint I/O runtime".into())?,
        )
    } else {
        None
    };
    let storage = match (&rt, &opts.checkpointing, &opts.restore) {
        (Some(rt), Some(c), _) => Some(SnapshotStorage {
            store: c.store.clone(),
            runtime: rt.handle().clone(),
        }),
        (Some(rt), None, Some(r)) => Some(SnapshotStorage {
            store: r.store.clone(),
            runtime: rt.handle().clone(),
        }),
        _ => None,
    };
    let task_cfg = TaskConfig {
        // Groups of this attempt only: a subtask of an earlier one must not hold these back.
        job: JobConfig {
            alignment: Default::default(),
            ..cfg.clone()
        },
        job_id: opts.job_id.clone(),
        storage,
        // Without checkpoints nothing would ever commit an exactly-once sink's
        // output before the end: restoring alone runs at-least-once.
        mode: opts
            .checkpointing
            .as_ref()
            .map(|c| c.config.mode)
            .unwrap_or(super::CheckpointingMode::AtLeastOnce),
        cancelled: Default::default(),
    };
    // Channels into every vertex with an input: one receiver per subtask.
    let mut txs: Vec<Vec<SyncSender<Envelope>>> = Vec::new();
    let mut rxs: Vec<Vec<Option<Receiver<Envelope>>>> = Vec::new();
    for v in &graph.vertices {
        let (mut t, mut r) = (Vec::new(), Vec::new());
        if v.input.is_some() {
            for _ in 0..v.parallelism {
                let (tx, rx) = sync_channel(cfg.channel_capacity);
                t.push(tx);
                r.push(Some(rx));
            }
        }
        txs.push(t);
        rxs.push(r);
    }
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let events: Arc<dyn EventSink> = if needs_runtime {
        Arc::new(LocalEvents { tx: ev_tx })
    } else {
        drop(ev_tx);
        Arc::new(NoEvents)
    };
    let restore = opts.restore.map(Arc::new);
    let mut senders = BTreeMap::new();
    let mut threads = Vec::new();
    for id in graph.subtasks() {
        let v = graph.vertex(id.vertex)?;
        // The right input of a join has the channels after the left input's.
        let out_channel = graph.output_channel(id.vertex, id.subtask);
        let outputs: Vec<Box<dyn OutputChannel>> = match v.output {
            Some(next) => txs[next]
                .iter()
                .enumerate()
                .map(|(target, tx)| {
                    Box::new(ChannelOutput::new(out_channel, target, tx.clone()))
                        as Box<dyn OutputChannel>
                })
                .collect(),
            None => Vec::new(),
        };
        let input: Option<Box<dyn InputGate>> = if v.input.is_some() {
            let rx = rxs[id.vertex][id.subtask]
                .take()
                .ok_or_else(|| RuntimeError::Task("channel taken twice".into()))?;
            Some(Box::new(ChannelGate::new(rx)))
        } else {
            None
        };
        let (ctx, crx) = channel();
        senders.insert(id, Mutex::new(ctx));
        let setup = SubtaskSetup {
            graph: graph.clone(),
            id,
            config: task_cfg.clone(),
            connectors: connectors.clone(),
            input,
            outputs,
            commands: crx,
            events: events.clone(),
            restore: restore.clone(),
            metrics: metrics.clone(),
        };
        let name = format!("{} subtask {}/{}", v.name, id.subtask, v.parallelism);
        let h = std::thread::Builder::new()
            .name(format!("sluice-{id}"))
            .spawn(move || run_subtask(setup).map_err(|e| format!("{name}: {e}")))
            .ctx(|| "spawning a subtask thread".into())?;
        threads.push(h);
    }
    // Receivers hold the only senders now: a finished vertex closes its downstream's gate.
    drop(txs);
    let mut coordinator_error = None;
    let mut stats = CheckpointStats::default();
    if rt.is_none() {
        // No coordinator: subtasks whose input breaks learn at once that no Cancel will come.
        drop(senders);
    } else if let Some(rt) = &rt {
        let commands = Arc::new(LocalCommands { senders });
        let mut coord = opts.checkpointing.map(|c| {
            CheckpointCoordinator::new(
                c.config,
                c.store,
                opts.job_id.clone(),
                &graph,
                commands.clone(),
            )
        });
        if let (Some(c), Some(r)) = (coord.as_mut(), &restore) {
            c.restored_from(r);
        }
        let mut control = opts.control;
        let subtasks = graph.subtasks();
        let res: Result<()> = rt.block_on(async {
            let mut live = subtasks.len();
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut cancelled = false;
            while live > 0 {
                tokio::select! {
                    ev = ev_rx.recv() => {
                        let Some((from, ev)) = ev else { break };
                        if matches!(ev, SubtaskEvent::Finished | SubtaskEvent::Failed { .. }) {
                            live -= 1;
                        }
                        if matches!(ev, SubtaskEvent::Failed { .. }) && !cancelled {
                            // One failed subtask fails the job: stop the others now.
                            cancelled = true;
                            for s in subtasks.iter().rev() {
                                let _ = commands.send(*s, SubtaskCommand::Cancel);
                            }
                        }
                        if let Some(c) = coord.as_mut()
                            && let Err(e) = c.handle_event(from, &ev).await
                        {
                            for s in subtasks.iter().rev() {
                                let _ = commands.send(*s, SubtaskCommand::Cancel);
                            }
                            return Err(e);
                        }
                    }
                    _ = tick.tick() => {
                        if let Some(c) = coord.as_mut() {
                            c.tick().await?;
                        }
                    }
                    req = recv_control(&mut control) => {
                        match req {
                            Some(ControlRequest::Savepoint { id, stop, reply }) => {
                                let r = match coord.as_mut() {
                                    Some(c) => match stop {
                                        Some(drain) => c.stop_with_savepoint(id, drain),
                                        None => c.trigger_savepoint(id),
                                    },
                                    None => Err(RuntimeError::Task("checkpointing is off: no checkpoint storage".into())),
                                };
                                let _ = reply.send(r);
                            }
                            Some(ControlRequest::Cancel) => {
                                cancelled = true;
                                task_cfg.cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
                                for s in subtasks.iter().rev() {
                                    let _ = commands.send(*s, SubtaskCommand::Cancel);
                                }
                            }
                            None => control = None,
                        }
                    }
                }
                if let (Some(c), Some(ctl)) = (coord.as_ref(), control.as_ref()) {
                    *ctl.stats.lock().unwrap_or_else(|p| p.into_inner()) = c.stats().clone();
                }
            }
            Ok(())
        });
        if let Err(e) = res {
            coordinator_error = Some(e);
        }
        if let Some(c) = &coord {
            stats = c.stats().clone();
        }
    }
    let mut errors = Vec::new();
    for h in threads {
        match h.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("a subtask thread panicked".into()),
        }
    }
    drop(rt);
    if let Some(e) = coordinator_error {
        return Err(e);
    }
    if !errors.is_empty() {
        // The first failure is the cause; the others are tasks that lost their peer.
        let root = errors
            .iter()
            .find(|e| !e.contains("stopped") && !e.contains("closed"))
            .unwrap_or(&errors[0])
            .clone();
        return Err(RuntimeError::Task(format!("job failed: {root}")));
    }
    Ok(LocalReport {
        job: job_report(plan, metrics, started.elapsed()),
        checkpoints: stats,
    })
}

async fn recv_control(c: &mut Option<ControlInbox>) -> Option<ControlRequest> {
    match c {
        Some(c) => c.rx.recv().await,
        None => std::future::pending().await,
    }
}

fn job_report(plan: &JobPlan, metrics: &MetricsRegistry, elapsed: Duration) -> JobReport {
    let pipelines = plan
        .pipelines
        .iter()
        .enumerate()
        .map(|(pi, pipe)| {
            let pid = pi.to_string();
            let name = |t: &String| {
                plan.tables
                    .get(t)
                    .map(|d| d.name.clone())
                    .unwrap_or_else(|| t.clone())
            };
            let (source, sink) = (name(&pipe.source), name(&pipe.sink));
            let labels = [
                ("pipeline", pid.as_str()),
                ("source", source.as_str()),
                ("sink", sink.as_str()),
            ];
            let get = |n: &str| metrics.counter(n, &labels).load(Ordering::Relaxed);
            PipelineReport {
                source: source.clone(),
                sink: sink.clone(),
                records_in: get("sluice_source_records_total"),
                records_out: get("sluice_sink_records_total"),
                late_dropped: get("sluice_late_records_dropped_total"),
            }
        })
        .collect();
    JobReport { pipelines, elapsed }
}

//! [`run_subtask`]: one subtask's loop — source polling or input gate, the
//! operator chain, barrier alignment, snapshots and their upload, sink commits.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::Receiver;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::{DataType, SchemaRef};
use sluice_state::key_group_range;

use super::state::{PendingCommit, RestoreEnv, SinkState, SourceState, SubtaskState};
use super::upload::{SharedUploads, Upload};
use super::{
    CheckpointingMode, EventSink, InputGate, SubtaskCommand, SubtaskEvent, SubtaskId, SubtaskSetup,
    TaskConfig, VertexSpec,
};
use crate::connector::{
    PollStatus, SinkContext, SinkWriter, SourceContext, SourceOutput, SourceReader,
};
use crate::error::{Context, Result, RuntimeError};
use crate::exchange::ExchangeOutput;
use crate::executor::build_operators;
use crate::failpoint;
use crate::message::{Barrier, MAX_WATERMARK, Message};
use crate::operator::{Chain, Collector, Operator, VecCollector};
use crate::ops::stateless::now_ms;
use crate::watermark::{AlignmentMember, WatermarkGen};

/// How long a subtask waits on its input before it looks at commands and
/// processing time.
const INPUT_POLL: Duration = Duration::from_millis(100);

/// How long a source subtask that is too far ahead of its peers waits before it looks again.
const ALIGNMENT_WAIT: Duration = Duration::from_millis(1);

/// How long a sink at the end of its input waits for the outcome of the
/// checkpoint it took part in (the coordinator's timeout aborts it sooner).
const END_WAIT: Duration = Duration::from_secs(900);

/// How long a subtask whose input broke waits for a `Cancel` before it fails.
const CANCEL_GRACE: Duration = Duration::from_secs(2);

/// Runs one subtask until its input ends, it is cancelled, or it fails; the
/// outcome is also reported to `events` (`Finished` or `Failed`), after every
/// acknowledgement of its uploads.
pub fn run_subtask(setup: SubtaskSetup) -> Result<()> {
    let id = setup.id;
    let events = setup.events.clone();
    let mut uploads = Vec::new();
    // A panic (a bug, or a connector's assertion) must still end in a `Failed` event:
    // without one the job would wait for this subtask forever.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        match Subtask::open(setup) {
            Ok(mut t) => {
                let r = t.run();
                uploads = std::mem::take(&mut t.uploads);
                r
            }
            Err(e) => Err(e),
        }
    }))
    .unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic without a message");
        Err(RuntimeError::Task(format!("subtask {id} panicked: {what}")))
    });
    for u in uploads {
        let _ = u.join();
    }
    match &result {
        Ok(()) => events.send(id, SubtaskEvent::Finished),
        Err(e) => events.send(
            id,
            SubtaskEvent::Failed {
                error: e.to_string(),
            },
        ),
    }
    result
}

enum Tail {
    Exchange(ExchangeOutput),
    Sink {
        writer: Box<dyn SinkWriter>,
        records: Arc<AtomicU64>,
        watermark: Arc<AtomicI64>,
        schema: SchemaRef,
    },
}

impl Collector for Tail {
    fn collect(&mut self, batch: RecordBatch) -> Result<()> {
        match self {
            Tail::Exchange(x) => x.collect(batch),
            Tail::Sink {
                writer,
                records,
                schema,
                ..
            } => {
                records.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                // The sink sees its own column names, whatever the last operator called them.
                let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())
                    .ctx(|| "rows for the sink".into())?;
                writer.write(&batch)
            }
        }
    }

    fn watermark(&mut self, wm: i64) -> Result<()> {
        match self {
            Tail::Exchange(x) => x.watermark(wm),
            Tail::Sink { watermark, .. } => {
                watermark.store(wm, Ordering::Relaxed);
                Ok(())
            }
        }
    }
}

/// The source side of a source subtask.
struct SourceSide {
    reader: Box<dyn SourceReader>,
    uid: String,
    wm: Option<WatermarkGen>,
    /// Set when what this subtask reads ahead of its peers would wait in state downstream.
    align: Option<AlignmentMember>,
    /// The computed-column projection, run before the watermark is read.
    pre: Option<Box<dyn Operator>>,
    records_in: Arc<AtomicU64>,
}

/// Alignment of one barrier over the input channels.
struct Alignment {
    barrier: Barrier,
    received: Vec<bool>,
}

enum Flow {
    Continue,
    /// Cancelled: stop without finishing.
    Cancelled,
}

struct Subtask {
    id: SubtaskId,
    vertex: VertexSpec,
    cfg: TaskConfig,
    chain: Chain,
    tail: Tail,
    commands: Receiver<SubtaskCommand>,
    events: Arc<dyn EventSink>,
    input: Option<Box<dyn InputGate>>,
    channels: usize,
    /// Channels from this one on feed input 1 of a two-input vertex.
    side_from: usize,
    source: Option<SourceSide>,
    /// Input watermark (for a source: the one it emitted).
    watermark: i64,
    /// Sink committables not yet committed, oldest first.
    sink_pending: Vec<PendingCommit>,
    sink_uid: String,
    /// A checkpoint this sink took part in whose completion is not known yet.
    awaiting: Option<u64>,
    /// Highest barrier id aligned or given up.
    last_barrier: u64,
    uploads: Vec<JoinHandle<()>>,
    /// Shared files of incremental checkpoints this attempt has uploaded.
    shared: SharedUploads,
}

impl Subtask {
    fn open(s: SubtaskSetup) -> Result<Self> {
        let vertex = s.graph.vertex(s.id.vertex)?.clone();
        let p = vertex.parallelism;
        let st = s.id.subtask;
        let (src_name, sink_name) = pipeline_tables(&s.graph, vertex.pipeline);
        let pid = vertex.pipeline.to_string();
        let labels = [
            ("pipeline", pid.as_str()),
            ("source", src_name.as_str()),
            ("sink", sink_name.as_str()),
        ];
        let late = s
            .metrics
            .counter("sluice_late_records_dropped_total", &labels);
        let stages: Vec<sluice_sql::Stage> =
            vertex.stages.iter().map(|(_, st)| st.clone()).collect();
        let (mut ops, out_schema) = build_operators(
            &stages,
            vertex.input_schema.clone(),
            st,
            p,
            &s.config.job,
            &late,
        )?;
        let uids = vertex.operator_uids();
        if uids.len() != ops.len() {
            return Err(RuntimeError::Task(format!(
                "{}: {} operators for {} uids",
                vertex.name,
                ops.len(),
                uids.len()
            )));
        }
        let restore_rt = s
            .restore
            .as_ref()
            .map(|_| {
                s.config
                    .storage
                    .as_ref()
                    .map(|x| x.runtime.clone())
                    .ok_or_else(|| {
                        RuntimeError::Task(
                            "restoring needs the task config's snapshot storage (its runtime reads the files)".into(),
                        )
                    })
            })
            .transpose()?;
        let mut restored_wm = i64::MIN;
        let shared = SharedUploads::default();
        if let (Some(r), Some(rt)) = (&s.restore, &restore_rt) {
            for (op, uid) in ops.iter_mut().zip(&uids) {
                if !op.is_stateful() {
                    continue;
                }
                let range = key_group_range(s.graph.max_parallelism, p as u16, st as u16)
                    .ctx(|| format!("key groups of subtask {st} of {p}"))?;
                let env = RestoreEnv {
                    native: &s.config.job.native,
                    rt,
                    uploads: &shared,
                    metrics: &s.metrics,
                };
                let wm = r.restore_operator(uid, range, op.as_mut(), &env)?;
                restored_wm = restored_wm.max(wm);
            }
        }
        let chain = Chain::with_uids(ops, uids);
        let mut sink_uid = String::new();
        let mut restored_pending = Vec::new();
        let tail = match (&vertex.output_exchange, &vertex.sink) {
            (Some(x), _) => {
                let types: Vec<DataType> = out_schema
                    .fields()
                    .iter()
                    .map(|f| f.data_type().clone())
                    .collect();
                let sent = s.metrics.counter(
                    "sluice_exchange_records_total",
                    &[
                        ("pipeline", pid.as_str()),
                        ("vertex", &vertex.id.to_string()),
                    ],
                );
                if s.outputs.is_empty() {
                    return Err(RuntimeError::Task(format!(
                        "{}: no output channels",
                        vertex.name
                    )));
                }
                Tail::Exchange(ExchangeOutput::new(
                    x,
                    &types,
                    st,
                    s.outputs,
                    s.graph.max_parallelism,
                    sent,
                )?)
            }
            (None, Some(sink)) => {
                let ctx = SinkContext {
                    table: sink.table.clone(),
                    schema: sink.schema.clone(),
                    updating: sink.updating,
                    subtask: st,
                    parallelism: p,
                    job_id: s.config.job_id.clone(),
                    sink_uid: sink.uid.clone(),
                    exactly_once: s.config.mode == CheckpointingMode::ExactlyOnce
                        && s.config.storage.is_some(),
                    cancelled: s.config.cancelled.clone(),
                };
                let mut writer = s.connectors.get(&sink.table)?.create_sink(&ctx)?;
                if let Some(r) = &s.restore {
                    // Output of checkpoints that completed before the crash may or may
                    // not be committed. It is re-committed (idempotently) with this
                    // attempt's first completed checkpoint, not now: by then every sink
                    // subtask of the attempt has started and fenced what the crashed
                    // one left half-done, so what the external system reports as
                    // committed is settled.
                    writer.recover(&r.sink_origins(&sink.uid, st, p))?;
                    restored_pending = r.sink_commits(&sink.uid, st, p);
                }
                sink_uid = sink.uid.clone();
                let wm = s.metrics.gauge(
                    "sluice_sink_watermark_ms",
                    &[("pipeline", pid.as_str()), ("subtask", &st.to_string())],
                    i64::MIN,
                );
                Tail::Sink {
                    writer,
                    records: s.metrics.counter("sluice_sink_records_total", &labels),
                    watermark: wm,
                    schema: sink.schema.clone(),
                }
            }
            (None, None) => {
                return Err(RuntimeError::Task(format!(
                    "{}: neither an exchange nor a sink at its end",
                    vertex.name
                )));
            }
        };
        let mut chain = chain;
        let mut watermark = restored_wm;
        let source = match &vertex.source {
            None => None,
            Some(spec) => {
                let (positions, wm_floor) = match &s.restore {
                    Some(r) => r.source_positions(&spec.uid),
                    None => (Vec::new(), i64::MIN),
                };
                let ctx = SourceContext {
                    table: spec.table.clone(),
                    schema: spec.schema.clone(),
                    subtask: st,
                    parallelism: p,
                    restore: positions,
                    pending_records: s.metrics.gauge(
                        "sluice_source_pending_records",
                        &[
                            ("pipeline", pid.as_str()),
                            ("source", src_name.as_str()),
                            ("subtask", &st.to_string()),
                        ],
                        -1,
                    ),
                };
                let reader = s.connectors.get(&spec.table)?.create_source(&ctx)?;
                let idle = spec
                    .table
                    .option("scan.watermark.idle-timeout")
                    .and_then(sluice_sql::parse_duration_ms)
                    .map(Duration::from_millis)
                    .or(s.config.job.idle_timeout);
                let mut wm = spec
                    .watermark
                    .clone()
                    .map(|e| WatermarkGen::new(e, reader.splits(), idle));
                if let Some(w) = wm.as_mut() {
                    w.set_floor(wm_floor);
                    watermark = watermark.max(wm_floor);
                }
                // The computed-column projection runs before the watermark is read, so
                // it is the chain's first operator only when there is no watermark to take.
                let mut pre = None;
                if wm.is_some()
                    && chain
                        .ops
                        .first()
                        .map(|o| o.name() == "Project")
                        .unwrap_or(false)
                {
                    pre = chain.take_first().map(|(_, op)| op);
                }
                let align = match s.config.job.watermark_max_drift {
                    Some(drift)
                        if wm.is_some() && p > 1 && holds_by_watermark(&s.graph, &vertex) =>
                    {
                        Some(s.config.job.alignment.join(&vertex.uid, drift))
                    }
                    _ => None,
                };
                Some(SourceSide {
                    reader,
                    uid: spec.uid.clone(),
                    wm,
                    align,
                    pre,
                    records_in: s.metrics.counter("sluice_source_records_total", &labels),
                })
            }
        };
        let channels = s.graph.input_channels(vertex.id);
        if source.is_none() && s.input.is_none() {
            return Err(RuntimeError::Task(format!(
                "{}: subtask {st} has no input gate",
                vertex.name
            )));
        }
        let last_barrier = s.restore.as_ref().map(|r| r.checkpoint_id()).unwrap_or(0);
        let side_from = s.graph.side_input_channel(vertex.id).unwrap_or(usize::MAX);
        Ok(Subtask {
            id: s.id,
            vertex,
            cfg: s.config,
            chain,
            tail,
            commands: s.commands,
            events: s.events,
            input: s.input,
            channels,
            side_from,
            source,
            watermark,
            sink_pending: restored_pending,
            sink_uid,
            awaiting: None,
            last_barrier,
            uploads: Vec::new(),
            shared,
        })
    }

    fn run(&mut self) -> Result<()> {
        let flow = if self.source.is_some() {
            self.run_source()?
        } else {
            self.run_downstream()?
        };
        match flow {
            Flow::Cancelled => Ok(()),
            Flow::Continue => {
                self.chain.finish(&mut self.tail)?;
                self.end()
            }
        }
    }

    // ---- sources ----

    fn run_source(&mut self) -> Result<Flow> {
        let mut out = SourceOutput::default();
        let mut last_tick = Instant::now();
        loop {
            while let Ok(cmd) = self.commands.try_recv() {
                match cmd {
                    SubtaskCommand::TriggerCheckpoint(b) => {
                        if b.checkpoint_id > self.last_barrier {
                            self.last_barrier = b.checkpoint_id;
                            self.snapshot_and_forward(&b)?;
                        }
                    }
                    SubtaskCommand::Stop { drain, barrier } => {
                        if let Some(flow) = self.stop_source(drain, barrier)? {
                            return Ok(flow);
                        }
                    }
                    other => {
                        if let Flow::Cancelled = self.on_common_command(other)? {
                            return Ok(Flow::Cancelled);
                        }
                    }
                }
            }
            let src = self
                .source
                .as_mut()
                .ok_or_else(|| RuntimeError::Task("not a source".into()))?;
            out.batches.clear();
            out.finished_splits.clear();
            let status = if src.align.as_ref().is_some_and(|a| a.ahead(self.watermark)) {
                std::thread::sleep(ALIGNMENT_WAIT);
                PollStatus::Idle
            } else {
                src.reader.poll(&mut out)?
            };
            for (split, batch) in out.batches.drain(..) {
                src.records_in
                    .fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                let batch = match src.pre.as_mut() {
                    Some(p) => {
                        let mut c = VecCollector::default();
                        p.process(batch, &mut c)?;
                        match c.batches.pop() {
                            Some(b) => b,
                            None => continue,
                        }
                    }
                    None => batch,
                };
                if let Some(w) = src.wm.as_mut() {
                    w.observe(split, &batch)?;
                }
                self.chain.process(batch, &mut self.tail)?;
            }
            if let Some(w) = src.wm.as_mut() {
                for s in out.finished_splits.drain(..) {
                    w.finish_split(s);
                }
                if let Some(v) = w.advance() {
                    self.watermark = v;
                    self.chain.watermark(v, &mut self.tail)?;
                }
                if let Some(a) = &src.align {
                    a.publish(w.alignment_watermark());
                }
            }
            if last_tick.elapsed() >= Duration::from_millis(100) {
                last_tick = Instant::now();
                self.chain.processing_time(now_ms(), &mut self.tail)?;
            }
            if status == PollStatus::Finished {
                break;
            }
        }
        if let Some(a) = self.source.as_ref().and_then(|s| s.align.as_ref()) {
            a.publish(MAX_WATERMARK);
        }
        self.watermark = MAX_WATERMARK;
        self.chain.watermark(MAX_WATERMARK, &mut self.tail)?;
        Ok(Flow::Continue)
    }

    /// Stop-with-savepoint at a source. `Some(flow)` ends the source loop;
    /// `None` resumes reading (the savepoint was aborted before completing).
    fn stop_source(&mut self, drain: bool, barrier: Barrier) -> Result<Option<Flow>> {
        if drain {
            self.watermark = MAX_WATERMARK;
            self.chain.watermark(MAX_WATERMARK, &mut self.tail)?;
        }
        self.last_barrier = self.last_barrier.max(barrier.checkpoint_id);
        self.snapshot_and_forward(&barrier)?;
        if drain {
            // The stream ends after the savepoint's barrier.
            return Ok(Some(Flow::Continue));
        }
        loop {
            match self.commands.recv() {
                Ok(SubtaskCommand::AbortCheckpoint { checkpoint_id })
                    if checkpoint_id == barrier.checkpoint_id =>
                {
                    return Ok(None);
                }
                Ok(cmd) => {
                    if let Flow::Cancelled = self.on_common_command(cmd)? {
                        return Ok(Some(Flow::Cancelled));
                    }
                }
                Err(_) => return Ok(Some(Flow::Cancelled)),
            }
        }
    }

    // ---- subtasks with inputs ----

    fn run_downstream(&mut self) -> Result<Flow> {
        let n = self.channels.max(1);
        let mut wms = vec![i64::MIN; n];
        let mut ended = vec![false; n];
        let mut blocked = vec![false; n];
        let mut held: Vec<VecDeque<Message>> = vec![VecDeque::new(); n];
        let mut replay: VecDeque<(usize, Message)> = VecDeque::new();
        let mut aligning: Option<Alignment> = None;
        let mut current = self.watermark;
        let mut open = n;
        let aligned = self.cfg.mode == CheckpointingMode::ExactlyOnce;
        while open > 0 {
            while let Ok(cmd) = self.commands.try_recv() {
                if let SubtaskCommand::AbortCheckpoint { checkpoint_id } = &cmd
                    && aligning
                        .as_ref()
                        .is_some_and(|a| a.barrier.checkpoint_id == *checkpoint_id)
                {
                    self.last_barrier = self.last_barrier.max(*checkpoint_id);
                    aligning = None;
                    release(&mut blocked, &mut held, &mut replay);
                }
                if let Flow::Cancelled = self.on_common_command(cmd)? {
                    return Ok(Flow::Cancelled);
                }
            }
            let (ch, message) = match replay.pop_front() {
                Some(x) => x,
                None => {
                    let gate = self
                        .input
                        .as_mut()
                        .ok_or_else(|| RuntimeError::Task("no input gate".into()))?;
                    match gate.recv_timeout(INPUT_POLL) {
                        Ok(Some(env)) => (env.channel, env.message),
                        Ok(None) => {
                            self.chain.processing_time(now_ms(), &mut self.tail)?;
                            continue;
                        }
                        Err(e) => {
                            // A cancelled job tears its channels down: not a failure then.
                            if self.cancel_pending() {
                                return Ok(Flow::Cancelled);
                            }
                            return Err(e);
                        }
                    }
                }
            };
            if ch >= n {
                return Err(RuntimeError::Task(format!(
                    "message on channel {ch} of a subtask with {n} inputs"
                )));
            }
            if blocked[ch] {
                held[ch].push_back(message);
                continue;
            }
            match message {
                Message::Data(b) if ch >= self.side_from => {
                    self.chain.process_input(1, b, &mut self.tail)?
                }
                Message::Data(b) => self.chain.process(b, &mut self.tail)?,
                Message::Watermark(w) => {
                    wms[ch] = wms[ch].max(w);
                    let m = *wms.iter().min().unwrap_or(&i64::MIN);
                    if m > current {
                        current = m;
                        self.watermark = m;
                        self.chain.watermark(m, &mut self.tail)?;
                    }
                }
                Message::Barrier(b) => {
                    let id = b.checkpoint_id;
                    if id <= self.last_barrier {
                        continue;
                    }
                    match &mut aligning {
                        Some(a) if a.barrier.checkpoint_id == id => a.received[ch] = true,
                        Some(a) if a.barrier.checkpoint_id > id => continue,
                        _ => {
                            // A newer barrier gives up the older alignment (that checkpoint was abandoned).
                            if aligning.is_some() {
                                release(&mut blocked, &mut held, &mut replay);
                            }
                            let mut received = vec![false; n];
                            received[ch] = true;
                            aligning = Some(Alignment {
                                barrier: b,
                                received,
                            });
                        }
                    }
                    if aligned {
                        blocked[ch] = true;
                    }
                }
                Message::End => {
                    if !ended[ch] {
                        ended[ch] = true;
                        open -= 1;
                        wms[ch] = MAX_WATERMARK;
                        let m = *wms.iter().min().unwrap_or(&i64::MIN);
                        if m > current {
                            current = m;
                            self.watermark = m;
                            self.chain.watermark(m, &mut self.tail)?;
                        }
                    }
                }
            }
            let done = aligning
                .as_ref()
                .is_some_and(|a| (0..n).all(|i| a.received[i] || ended[i]));
            if done && let Some(a) = aligning.take() {
                self.last_barrier = a.barrier.checkpoint_id;
                self.snapshot_and_forward(&a.barrier)?;
                // Messages held back while aligning come first, then the gate again.
                release(&mut blocked, &mut held, &mut replay);
            }
        }
        Ok(Flow::Continue)
    }

    /// After the input broke: whether that is a cancellation (its command may
    /// trail the upstream's exit a little, as upstream subtasks stop first).
    fn cancel_pending(&self) -> bool {
        let deadline = Instant::now() + CANCEL_GRACE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.commands.recv_timeout(left) {
                Ok(SubtaskCommand::Cancel) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    }

    /// Commands every kind of subtask handles.
    fn on_common_command(&mut self, cmd: SubtaskCommand) -> Result<Flow> {
        match cmd {
            SubtaskCommand::CheckpointComplete { checkpoint_id } => {
                self.commit_sink(checkpoint_id)?;
            }
            SubtaskCommand::AbortCheckpoint { checkpoint_id } => {
                // The abort may come before the barrier itself: never take part in it then.
                self.last_barrier = self.last_barrier.max(checkpoint_id);
                if self.awaiting == Some(checkpoint_id) {
                    // Its committable stays pending and rides on the next checkpoint.
                    self.awaiting = None;
                }
            }
            SubtaskCommand::Cancel => return Ok(Flow::Cancelled),
            // Only sources act on these.
            SubtaskCommand::TriggerCheckpoint(_) | SubtaskCommand::Stop { .. } => {}
        }
        Ok(Flow::Continue)
    }

    // ---- checkpoints ----

    /// The barrier reached this subtask (aligned): synchronous snapshot,
    /// barrier downstream, upload in the background.
    fn snapshot_and_forward(&mut self, barrier: &Barrier) -> Result<()> {
        failpoint::hit("before_snapshot");
        let Some(storage) = self.cfg.storage.clone() else {
            // Checkpointing is off: pass the barrier on; sinks make what they have durable.
            return match &mut self.tail {
                Tail::Exchange(x) => x.barrier(barrier),
                Tail::Sink { writer, .. } => writer.flush(),
            };
        };
        let id = barrier.checkpoint_id;
        let snaps = self.chain.snapshot(id)?;
        let source = self.source.as_ref().map(|s| SourceState {
            uid: s.uid.clone(),
            position: s.reader.position(),
        });
        let sink = match &mut self.tail {
            Tail::Exchange(x) => {
                x.barrier(barrier)?;
                None
            }
            Tail::Sink { writer, .. } => {
                let committable = writer.prepare_commit(id)?;
                self.sink_pending.push(PendingCommit {
                    checkpoint_id: id,
                    generation: self
                        .cfg
                        .storage
                        .as_ref()
                        .map_or(0, |s| s.store.generation()),
                    committable,
                });
                self.awaiting = Some(id);
                Some(SinkState {
                    uid: self.sink_uid.clone(),
                    pending: self.sink_pending.clone(),
                })
            }
        };
        self.uploads.retain(|h| !h.is_finished());
        let job = Upload {
            storage,
            events: self.events.clone(),
            id: self.id,
            barrier: barrier.clone(),
            state: SubtaskState {
                vertex: self.vertex.uid.clone(),
                subtask: self.id.subtask,
                parallelism: self.vertex.parallelism,
                operators: Vec::new(),
                source,
                sink,
                watermark: self.watermark,
                uploaded_bytes: 0,
            },
            snaps,
            native_backend: self.cfg.job.native.backend.clone(),
            shared: self.shared.clone(),
        };
        let h = std::thread::Builder::new()
            .name(format!("sluice-upload-{}", self.id))
            .spawn(move || job.run())
            .ctx(|| "spawning a snapshot upload thread".into())?;
        self.uploads.push(h);
        Ok(())
    }

    fn commit_sink(&mut self, checkpoint_id: u64) -> Result<()> {
        if self.awaiting.is_some_and(|a| a <= checkpoint_id) {
            self.awaiting = None;
        }
        let Tail::Sink { writer, .. } = &mut self.tail else {
            return Ok(());
        };
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sink_pending)
            .into_iter()
            .partition(|c| c.checkpoint_id <= checkpoint_id);
        self.sink_pending = rest;
        for c in done {
            failpoint::hit("before_sink_commit");
            writer.commit(c.sequence(), &c.committable)?;
            failpoint::hit("after_sink_commit");
        }
        Ok(())
    }

    /// End of input: tell downstream, or (sink) commit and finish.
    fn end(&mut self) -> Result<()> {
        if let Tail::Exchange(x) = &mut self.tail {
            return x.end();
        }
        // Wait for the checkpoint this sink is part of, so its output is
        // committed after its `_metadata` exists, as for any other checkpoint.
        let deadline = Instant::now() + END_WAIT;
        while let Some(id) = self.awaiting {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.commands.recv_timeout(left) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(RuntimeError::Task(format!(
                        "no completion or abort of checkpoint {id} within {} s after the end of input",
                        END_WAIT.as_secs()
                    )));
                }
                Ok(SubtaskCommand::Cancel) | Err(_) => return Ok(()),
                Ok(SubtaskCommand::AbortCheckpoint { checkpoint_id }) if checkpoint_id == id => {
                    self.awaiting = None;
                }
                Ok(cmd) => {
                    self.on_common_command(cmd)?;
                }
            }
        }
        // What no completed checkpoint covers is committed with the end of input.
        let pending = std::mem::take(&mut self.sink_pending);
        if let Tail::Sink { writer, .. } = &mut self.tail {
            for c in pending {
                writer.commit(c.sequence(), &c.committable)?;
            }
            writer.finish()?;
        }
        Ok(())
    }
}

/// Messages held back during an alignment go back in front of the gate.
fn release(
    blocked: &mut [bool],
    held: &mut [VecDeque<Message>],
    replay: &mut VecDeque<(usize, Message)>,
) {
    for (ch, q) in held.iter_mut().enumerate() {
        blocked[ch] = false;
        replay.extend(q.drain(..).map(|m| (ch, m)));
    }
}

/// Whether an operator after the source vertex `source` keeps rows in state until the watermark
/// passes them (so that reading ahead of the slowest source subtask only fills that state).
fn holds_by_watermark(graph: &super::JobGraph, source: &super::VertexSpec) -> bool {
    use sluice_sql::{Stage, TimeKind};
    let mut next = Some(source.id);
    // A graph is a DAG of at most `vertices.len()` steps along `output`.
    for _ in 0..=graph.vertices.len() {
        let Some(v) = next.and_then(|id| graph.vertex(id).ok()) else {
            return false;
        };
        let holds = v.stages.iter().any(|(_, st)| match st {
            Stage::WindowAggregate { .. } | Stage::IntervalJoin { .. } => true,
            Stage::OverAggregate { time_kind, .. } | Stage::Deduplicate { time_kind, .. } => {
                *time_kind == TimeKind::Event
            }
            _ => false,
        });
        if holds {
            return true;
        }
        next = v.output;
    }
    false
}

fn pipeline_tables(graph: &super::JobGraph, pipeline: usize) -> (String, String) {
    let src = graph
        .vertices
        .iter()
        .find(|v| v.pipeline == pipeline && v.source.is_some())
        .and_then(|v| v.source.as_ref())
        .map(|s| s.table.name.clone())
        .unwrap_or_default();
    let sink = graph
        .vertices
        .iter()
        .find(|v| v.pipeline == pipeline && v.sink.is_some())
        .and_then(|v| v.sink.as_ref())
        .map(|s| s.table.name.clone())
        .unwrap_or_default();
    (src, sink)
}

//! The one-process executor: a job's pipelines cut at their exchanges into
//! vertices, each vertex run as `parallelism` subtask threads connected by
//! bounded channels (backpressure). With parallelism 1 a hash exchange has a
//! single target, so the vertices are chained into one thread instead.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sluice_sql::{Exchange, JobPlan, Pipeline, Stage};
use sluice_state::{KeyGroupRange, KeyedStateBackend, key_group_range};

use crate::connector::{
    Connectors, PollStatus, SinkContext, SinkWriter, SourceContext, SourceOutput, physical_schema,
};
use crate::error::{Context, Result, RuntimeError};
use crate::exchange::ExchangeOutput;
use crate::message::{Envelope, MAX_WATERMARK, Message, ROW_KIND_COLUMN};
use crate::metrics::MetricsRegistry;
use crate::operator::{Chain, Collector, Operator};
use crate::ops::group::GroupOp;
use crate::ops::over::OverOp;
use crate::ops::stateless::{FilterOp, ProjectOp, now_ms};
use crate::ops::window::WindowOp;
use crate::watermark::WatermarkGen;

/// Makes the keyed state backend of one operator subtask.
pub type StateFactory =
    Arc<dyn Fn(u16, KeyGroupRange) -> Result<Box<dyn KeyedStateBackend>> + Send + Sync>;

pub fn memory_state() -> StateFactory {
    Arc::new(|max_parallelism, range| {
        Ok(Box::new(
            sluice_state::MemoryBackend::new(max_parallelism, range)
                .ctx(|| "creating the memory state backend".into())?,
        ) as Box<dyn KeyedStateBackend>)
    })
}

#[derive(Clone)]
pub struct JobConfig {
    pub parallelism: usize,
    pub max_parallelism: u16,
    /// Batches buffered per channel before the sender blocks.
    pub channel_capacity: usize,
    pub state: StateFactory,
    /// A source split without data for this long stops holding the watermark back.
    pub idle_timeout: Option<Duration>,
}

impl JobConfig {
    pub fn new(parallelism: usize) -> Self {
        JobConfig {
            parallelism: parallelism.max(1),
            max_parallelism: sluice_state::DEFAULT_MAX_PARALLELISM,
            channel_capacity: 16,
            state: memory_state(),
            idle_timeout: None,
        }
    }
}

/// Schema after a stage, given the schema before it.
pub fn stage_output(stage: &Stage, input: &SchemaRef) -> SchemaRef {
    let f = |n: &str, t: DataType| Field::new(n, t, true);
    match stage {
        Stage::Project { exprs, names } => Arc::new(Schema::new(
            exprs
                .iter()
                .zip(names)
                .map(|(e, n)| f(n, e.data_type()))
                .collect::<Vec<_>>(),
        )),
        Stage::Filter { .. } | Stage::AssignWatermark { .. } | Stage::Exchange(_) => input.clone(),
        Stage::OverAggregate { aggs, .. } => {
            let mut v: Vec<Field> = input.fields().iter().map(|x| x.as_ref().clone()).collect();
            v.extend(
                aggs.iter()
                    .enumerate()
                    .map(|(i, a)| f(&format!("$agg{i}"), a.ty.clone())),
            );
            Arc::new(Schema::new(v))
        }
        Stage::WindowAggregate { keys, aggs, .. } => {
            let mut v: Vec<Field> = keys.iter().map(|&k| input.field(k).clone()).collect();
            v.push(f("window_start", sluice_sql::types::timestamp()));
            v.push(f("window_end", sluice_sql::types::timestamp()));
            v.extend(
                aggs.iter()
                    .enumerate()
                    .map(|(i, a)| f(&format!("$agg{i}"), a.ty.clone())),
            );
            Arc::new(Schema::new(v))
        }
        Stage::GroupAggregate { keys, aggs } => {
            let mut v: Vec<Field> = keys.iter().map(|&k| input.field(k).clone()).collect();
            v.extend(
                aggs.iter()
                    .enumerate()
                    .map(|(i, a)| f(&format!("$agg{i}"), a.ty.clone())),
            );
            Arc::new(Schema::new(v))
        }
    }
}

/// Builds the operators of `stages` for one subtask. Exchanges and watermark
/// assignment are not operators: the caller handles them.
pub fn build_operators(
    stages: &[Stage],
    input: SchemaRef,
    subtask: usize,
    parallelism: usize,
    cfg: &JobConfig,
    late: &Arc<AtomicU64>,
) -> Result<(Vec<Box<dyn Operator>>, SchemaRef)> {
    let mut ops: Vec<Box<dyn Operator>> = Vec::new();
    let mut schema = input;
    let range = || -> Result<KeyGroupRange> {
        key_group_range(cfg.max_parallelism, parallelism as u16, subtask as u16)
            .ctx(|| format!("key groups of subtask {subtask}"))
    };
    for s in stages {
        match s {
            Stage::Project { exprs, names } => {
                ops.push(Box::new(ProjectOp::new(exprs.clone(), names.clone())))
            }
            Stage::Filter { predicate } => ops.push(Box::new(FilterOp::new(predicate.clone()))),
            Stage::AssignWatermark { .. } | Stage::Exchange(_) => {}
            Stage::OverAggregate {
                keys,
                time,
                time_kind,
                range: r,
                aggs,
            } => {
                let backend = (cfg.state)(cfg.max_parallelism, range()?)?;
                ops.push(Box::new(OverOp::new(
                    schema.clone(),
                    keys.clone(),
                    *time,
                    *time_kind,
                    *r,
                    aggs,
                    backend,
                    late.clone(),
                )?));
            }
            Stage::WindowAggregate {
                keys,
                time,
                window,
                aggs,
            } => {
                let backend = (cfg.state)(cfg.max_parallelism, range()?)?;
                ops.push(Box::new(WindowOp::new(
                    schema.clone(),
                    keys.clone(),
                    *time,
                    *window,
                    aggs,
                    backend,
                    late.clone(),
                )?));
            }
            Stage::GroupAggregate { keys, aggs } => {
                let backend = (cfg.state)(cfg.max_parallelism, range()?)?;
                ops.push(Box::new(GroupOp::new(
                    schema.clone(),
                    keys.clone(),
                    aggs,
                    backend,
                )?));
            }
        }
        schema = stage_output(s, &schema);
    }
    Ok((ops, schema))
}

/// A pipeline cut into vertices at its exchanges (none when parallelism is 1).
struct Vertex {
    stages: Vec<Stage>,
    input: SchemaRef,
    /// Exchange to the next vertex.
    exchange: Option<Exchange>,
}

fn vertices(p: &Pipeline, source_schema: SchemaRef, parallelism: usize) -> Vec<Vertex> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut input = source_schema.clone();
    let mut schema = source_schema;
    for s in &p.stages {
        if let Stage::Exchange(x) = s {
            if parallelism > 1 {
                out.push(Vertex {
                    stages: std::mem::take(&mut cur),
                    input: input.clone(),
                    exchange: Some(x.clone()),
                });
                input = schema.clone();
            }
            continue;
        }
        schema = stage_output(s, &schema);
        cur.push(s.clone());
    }
    out.push(Vertex {
        stages: cur,
        input,
        exchange: None,
    });
    out
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

impl Tail {
    fn end(&mut self) -> Result<()> {
        match self {
            Tail::Exchange(x) => x.end(),
            Tail::Sink { writer, .. } => writer.finish(),
        }
    }

    fn barrier(&mut self, id: u64) -> Result<()> {
        match self {
            Tail::Exchange(x) => x.barrier(id),
            Tail::Sink { writer, .. } => writer.flush(),
        }
    }
}

/// Counts of one finished pipeline.
#[derive(Debug, Clone)]
pub struct PipelineReport {
    pub source: String,
    pub sink: String,
    pub records_in: u64,
    pub records_out: u64,
    pub late_dropped: u64,
}

#[derive(Debug, Clone)]
pub struct JobReport {
    pub pipelines: Vec<PipelineReport>,
    pub elapsed: Duration,
}

struct Task {
    name: String,
    body: Box<dyn FnOnce() -> Result<()> + Send>,
}

/// Runs a job to completion (bounded sources) or until a task fails.
#[allow(clippy::needless_range_loop)] // `st` indexes subtasks in several parallel vectors
pub fn run_job(
    plan: &JobPlan,
    connectors: &Connectors,
    cfg: &JobConfig,
    metrics: &Arc<MetricsRegistry>,
) -> Result<JobReport> {
    let started = Instant::now();
    let p = cfg.parallelism;
    let mut tasks: Vec<Task> = Vec::new();
    let mut counters = Vec::new();
    for (pi, pipe) in plan.pipelines.iter().enumerate() {
        let src = &plan.tables[&pipe.source];
        let sink = &plan.tables[&pipe.sink];
        let pid = pi.to_string();
        let labels = [
            ("pipeline", pid.as_str()),
            ("source", src.name.as_str()),
            ("sink", sink.name.as_str()),
        ];
        let rec_in = metrics.counter("sluice_source_records_total", &labels);
        let rec_out = metrics.counter("sluice_sink_records_total", &labels);
        let late = metrics.counter("sluice_late_records_dropped_total", &labels);
        counters.push((
            src.name.clone(),
            sink.name.clone(),
            rec_in.clone(),
            rec_out.clone(),
            late.clone(),
        ));
        let src_schema = physical_schema(src);
        let verts = vertices(pipe, src_schema.clone(), p);
        // Channels into every vertex but the first.
        let mut inputs: Vec<Vec<Option<Receiver<Envelope>>>> = Vec::new();
        let mut senders: Vec<Vec<SyncSender<Envelope>>> = Vec::new();
        for _ in 0..verts.len() {
            let (mut s, mut r) = (Vec::new(), Vec::new());
            for _ in 0..p {
                let (tx, rx) = sync_channel(cfg.channel_capacity);
                s.push(tx);
                r.push(Some(rx));
            }
            senders.push(s);
            inputs.push(r);
        }
        for (vi, v) in verts.iter().enumerate() {
            for st in 0..p {
                let (ops, out_schema) =
                    build_operators(&v.stages, v.input.clone(), st, p, cfg, &late)?;
                let tail = match &v.exchange {
                    Some(x) => {
                        let types: Vec<DataType> = out_schema
                            .fields()
                            .iter()
                            .map(|f| f.data_type().clone())
                            .collect();
                        let sent = metrics.counter(
                            "sluice_exchange_records_total",
                            &[("pipeline", pid.as_str()), ("vertex", &vi.to_string())],
                        );
                        Tail::Exchange(ExchangeOutput::new(
                            x,
                            &types,
                            st,
                            senders[vi + 1].clone(),
                            cfg.max_parallelism,
                            sent,
                        )?)
                    }
                    None => {
                        let mut sink_schema = physical_schema(sink);
                        if pipe.updating {
                            let mut f: Vec<Field> = sink_schema
                                .fields()
                                .iter()
                                .map(|x| x.as_ref().clone())
                                .collect();
                            f.push(Field::new(ROW_KIND_COLUMN, DataType::Int8, false));
                            sink_schema = Arc::new(Schema::new(f));
                        }
                        let ctx = SinkContext {
                            table: sink.clone(),
                            schema: sink_schema.clone(),
                            updating: pipe.updating,
                            subtask: st,
                            parallelism: p,
                        };
                        let writer = connectors.get(sink)?.create_sink(&ctx)?;
                        let wm = metrics.gauge(
                            "sluice_sink_watermark_ms",
                            &[("pipeline", pid.as_str()), ("subtask", &st.to_string())],
                            i64::MIN,
                        );
                        Tail::Sink {
                            writer,
                            records: rec_out.clone(),
                            watermark: wm,
                            schema: sink_schema,
                        }
                    }
                };
                let chain = Chain::new(ops);
                let name = format!(
                    "pipeline {pi} vertex {vi} ({}) subtask {st}/{p}",
                    chain.names().join(" -> ")
                );
                if vi == 0 {
                    let ctx = SourceContext {
                        table: src.clone(),
                        schema: src_schema.clone(),
                        subtask: st,
                        parallelism: p,
                    };
                    let reader = connectors.get(src)?.create_source(&ctx)?;
                    let wm = pipe.stages.iter().find_map(|s| match s {
                        Stage::AssignWatermark { expr, .. } => Some(expr.clone()),
                        _ => None,
                    });
                    let idle = src
                        .option("scan.watermark.idle-timeout")
                        .and_then(sluice_sql::parse_duration_ms)
                        .map(Duration::from_millis)
                        .or(cfg.idle_timeout);
                    let rec_in = rec_in.clone();
                    tasks.push(Task {
                        name,
                        body: Box::new(move || run_source(reader, wm, idle, chain, tail, rec_in)),
                    });
                } else {
                    let rx = inputs[vi][st]
                        .take()
                        .ok_or_else(|| RuntimeError::Task("channel taken twice".into()))?;
                    tasks.push(Task {
                        name,
                        body: Box::new(move || run_downstream(rx, p, chain, tail)),
                    });
                }
            }
        }
        drop(senders);
    }
    let errors: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
    let mut handles = Vec::new();
    for t in tasks {
        let errors = errors.clone();
        let name = t.name.clone();
        let h = std::thread::Builder::new()
            .name(format!(
                "sluice-{}",
                name.chars().take(12).collect::<String>()
            ))
            .spawn(move || {
                if let Err(e) = (t.body)() {
                    errors
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{name}: {e}"));
                }
            })
            .ctx(|| "spawning a subtask thread".into())?;
        handles.push(h);
    }
    for h in handles {
        if h.join().is_err() {
            errors
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push("a subtask thread panicked".into());
        }
    }
    let errs = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !errs.is_empty() {
        // The first failure is the cause; the others are tasks that lost their peer.
        let root = errs
            .iter()
            .find(|e| !e.contains("stopped") && !e.contains("closed"))
            .unwrap_or(&errs[0])
            .clone();
        return Err(RuntimeError::Task(format!("job failed: {root}")));
    }
    Ok(JobReport {
        pipelines: counters
            .into_iter()
            .map(|(s, k, i, o, l)| PipelineReport {
                source: s,
                sink: k,
                records_in: i.load(Ordering::Relaxed),
                records_out: o.load(Ordering::Relaxed),
                late_dropped: l.load(Ordering::Relaxed),
            })
            .collect(),
        elapsed: started.elapsed(),
    })
}

fn run_source(
    mut reader: Box<dyn crate::connector::SourceReader>,
    wm_expr: Option<sluice_sql::Expr>,
    idle: Option<Duration>,
    mut chain: Chain,
    mut tail: Tail,
    records_in: Arc<AtomicU64>,
) -> Result<()> {
    // The computed-column projection runs before the watermark is read, so
    // it is the chain's first operator only when there is no watermark to take.
    let mut wm = wm_expr.map(|e| WatermarkGen::new(e, reader.splits(), idle));
    let mut pre: Option<Box<dyn Operator>> = None;
    if wm.is_some()
        && chain
            .ops
            .first()
            .map(|o| o.name() == "Project")
            .unwrap_or(false)
    {
        pre = Some(chain.ops.remove(0));
    }
    let mut out = SourceOutput::default();
    let mut last_tick = Instant::now();
    loop {
        out.batches.clear();
        out.finished_splits.clear();
        let status = reader.poll(&mut out)?;
        for (split, batch) in out.batches.drain(..) {
            records_in.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            let batch = match pre.as_mut() {
                Some(p) => {
                    let mut c = crate::operator::VecCollector::default();
                    p.process(batch, &mut c)?;
                    match c.batches.pop() {
                        Some(b) => b,
                        None => continue,
                    }
                }
                None => batch,
            };
            if let Some(w) = wm.as_mut() {
                w.observe(split, &batch)?;
            }
            chain.process(batch, &mut tail)?;
        }
        if let Some(w) = wm.as_mut() {
            for s in out.finished_splits.drain(..) {
                w.finish_split(s);
            }
            if let Some(v) = w.advance() {
                chain.watermark(v, &mut tail)?;
            }
        }
        if last_tick.elapsed() >= Duration::from_millis(100) {
            last_tick = Instant::now();
            chain.processing_time(now_ms(), &mut tail)?;
        }
        match status {
            PollStatus::Finished => break,
            PollStatus::Active | PollStatus::Idle => {}
        }
    }
    chain.watermark(MAX_WATERMARK, &mut tail)?;
    chain.finish(&mut tail)?;
    tail.end()
}

fn run_downstream(
    rx: Receiver<Envelope>,
    inputs: usize,
    mut chain: Chain,
    mut tail: Tail,
) -> Result<()> {
    let mut wms = vec![i64::MIN; inputs];
    let mut ended = vec![false; inputs];
    let mut current = i64::MIN;
    let mut open = inputs;
    while open > 0 {
        let env = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => {
                chain.processing_time(now_ms(), &mut tail)?;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(RuntimeError::Task(
                    "an upstream subtask stopped without finishing".into(),
                ));
            }
        };
        let ch = env.channel;
        match env.message {
            Message::Data(b) => chain.process(b, &mut tail)?,
            Message::Watermark(w) => {
                wms[ch] = wms[ch].max(w);
                let m = *wms.iter().min().unwrap_or(&i64::MIN);
                if m > current {
                    current = m;
                    chain.watermark(m, &mut tail)?;
                }
            }
            Message::Barrier(id) => {
                // Unaligned in one process: the cluster aligns barriers per input before snapshotting.
                for s in chain.snapshot(id)? {
                    drop(s);
                }
                tail.barrier(id)?;
            }
            Message::End => {
                if !ended[ch] {
                    ended[ch] = true;
                    open -= 1;
                    wms[ch] = MAX_WATERMARK;
                    let m = *wms.iter().min().unwrap_or(&i64::MIN);
                    if m > current {
                        current = m;
                        chain.watermark(m, &mut tail)?;
                    }
                }
            }
        }
    }
    chain.finish(&mut tail)?;
    tail.end()
}

//! Job configuration, operator construction and the one-process entry point
//! [`run_job`]. The physical graph, the subtask loop and the in-memory
//! transport live in [`crate::task`].

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sluice_sql::{JobPlan, Stage};
use sluice_state::{KeyGroupRange, KeyedStateBackend, key_group_range};

use crate::connector::Connectors;
use crate::error::{Context, Result};
use crate::metrics::MetricsRegistry;
use crate::operator::Operator;
use crate::ops::dedup::DedupOp;
use crate::ops::group::GroupOp;
use crate::ops::join::IntervalJoinOp;
use crate::ops::over::OverOp;
use crate::ops::stateless::{FilterOp, ProjectOp};
use crate::ops::window::WindowOp;
use crate::task::local::LocalOptions;
use crate::task::state::NativeSnapshots;
use crate::watermark::AlignmentGroups;

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
    /// Incremental checkpoints and restoring native snapshots (set with `state`).
    pub native: NativeSnapshots,
    /// How far (event time) a source subtask may run ahead of the slowest subtask of the same source
    /// before it pauses, when a window, event-time OVER, interval join or event-time dedup downstream
    /// would keep what it reads in state until the slowest catches up; `None`: never pause.
    pub watermark_max_drift: Option<Duration>,
    /// The alignment groups of one attempt (see [`crate::watermark::AlignmentGroups`]).
    pub alignment: AlignmentGroups,
}

impl JobConfig {
    pub fn new(parallelism: usize) -> Self {
        JobConfig {
            parallelism: parallelism.max(1),
            max_parallelism: sluice_state::DEFAULT_MAX_PARALLELISM,
            channel_capacity: 16,
            state: memory_state(),
            idle_timeout: None,
            native: NativeSnapshots::default(),
            // A minute of windows more per source subtask, at most; far below what a skewed
            // input would otherwise hold (W2 at p=2: 83 minutes of windows, 1.5 GB).
            watermark_max_drift: Some(Duration::from_secs(60)),
            alignment: AlignmentGroups::default(),
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
        Stage::Filter { .. }
        | Stage::AssignWatermark { .. }
        | Stage::Exchange(_)
        | Stage::Deduplicate { .. } => input.clone(),
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
        Stage::IntervalJoin { right_columns, .. } => {
            // An outer join pads either side with NULLs.
            let mut v: Vec<Field> = input
                .fields()
                .iter()
                .map(|x| x.as_ref().clone().with_nullable(true))
                .collect();
            v.extend(right_columns.iter().map(|(n, t)| f(n, t.clone())));
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
            Stage::Deduplicate {
                keys,
                time,
                time_kind,
                keep_last,
            } => {
                let backend = (cfg.state)(cfg.max_parallelism, range()?)?;
                ops.push(Box::new(DedupOp::new(
                    schema.clone(),
                    keys.clone(),
                    *time,
                    *time_kind,
                    *keep_last,
                    backend,
                    late.clone(),
                )?));
            }
            Stage::IntervalJoin {
                kind,
                left_keys,
                right_keys,
                left_time,
                right_time,
                lower_ms,
                upper_ms,
                right_columns,
            } => {
                let backend = (cfg.state)(cfg.max_parallelism, range()?)?;
                let right = Arc::new(Schema::new(
                    right_columns
                        .iter()
                        .map(|(n, t)| Field::new(n, t.clone(), true))
                        .collect::<Vec<_>>(),
                ));
                ops.push(Box::new(IntervalJoinOp::new(
                    *kind,
                    schema.clone(),
                    right,
                    stage_output(s, &schema),
                    left_keys.clone(),
                    right_keys.clone(),
                    *left_time,
                    *right_time,
                    *lower_ms,
                    *upper_ms,
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

/// Runs a job to completion (bounded sources) or until a task fails, in this
/// process and without checkpoints: [`crate::task::local::run_local`] with
/// default options.
pub fn run_job(
    plan: &JobPlan,
    connectors: &Connectors,
    cfg: &JobConfig,
    metrics: &Arc<MetricsRegistry>,
) -> Result<JobReport> {
    crate::task::local::run_local(plan, connectors, cfg, LocalOptions::default(), metrics)
        .map(|r| r.job)
}

//! The physical job graph: each pipeline of a [`JobPlan`] cut at its exchanges
//! into vertices. With parallelism 1 a hash exchange has a single target, so
//! the pipeline stays one chained vertex (no thread hop, no channel).
//!
//! Ids are stable for a given plan and parallelism layout, so a JobManager and
//! its TaskManagers, each building the graph from the same SQL, agree on them.
//! State is keyed by operator uid (`p{pipeline}-s{stage index}`), which does
//! not depend on where the pipeline was cut, so a snapshot taken at one
//! parallelism restores at another (1 → 3 included).

use std::sync::Arc;

use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sluice_sql::{Exchange, Expr, JobPlan, JoinInput, Stage, TableDef};

use crate::connector::physical_schema;
use crate::error::{Result, RuntimeError};
use crate::executor::stage_output;
use crate::message::ROW_KIND_COLUMN;

/// Stages of one vertex, its input schema and the exchange after it.
type Cut = (Vec<(usize, Stage)>, SchemaRef, Option<Exchange>);

/// Index of a vertex in [`JobGraph::vertices`].
pub type VertexId = usize;

#[derive(Debug, Clone)]
pub struct JobGraph {
    pub max_parallelism: u16,
    pub vertices: Vec<VertexSpec>,
    /// Pipelines were kept as one vertex each (built at parallelism 1).
    pub chained: bool,
}

/// The exchange feeding a vertex from its upstream vertex.
#[derive(Debug, Clone)]
pub struct VertexInput {
    pub upstream: VertexId,
    pub exchange: Exchange,
}

#[derive(Debug, Clone)]
pub struct SourceSpec {
    pub table: TableDef,
    /// Key of the source positions in checkpoints: `p{pipeline}-source-{table}`.
    pub uid: String,
    pub schema: SchemaRef,
    pub watermark: Option<Expr>,
}

#[derive(Debug, Clone)]
pub struct SinkSpec {
    pub table: TableDef,
    /// `{pipeline}-{sink table}` (the connectors' `SinkContext::sink_uid`).
    pub uid: String,
    /// Physical columns, plus `$op` last when `updating`.
    pub schema: SchemaRef,
    pub updating: bool,
}

#[derive(Debug, Clone)]
pub struct VertexSpec {
    pub id: VertexId,
    /// `p{pipeline}-v{index in pipeline}`.
    pub uid: String,
    /// Human-readable: pipeline, source → sink, operators.
    pub name: String,
    pub pipeline: usize,
    pub parallelism: usize,
    /// The stages run by this vertex, each with its index in the pipeline
    /// (exchanges and watermark assignment are not operators).
    pub stages: Vec<(usize, Stage)>,
    /// Schema of the rows entering the first stage.
    pub input_schema: SchemaRef,
    /// `None` for a source vertex.
    pub input: Option<VertexInput>,
    /// The second input of a two-input vertex (an interval join's right side):
    /// its channels follow `input`'s at the subtask's gate.
    pub side_input: Option<VertexInput>,
    /// The vertex this one sends to; `None` for a sink vertex.
    pub output: Option<VertexId>,
    /// Exchange to `output`.
    pub output_exchange: Option<Exchange>,
    pub source: Option<SourceSpec>,
    pub sink: Option<SinkSpec>,
}

impl VertexSpec {
    pub fn is_source(&self) -> bool {
        self.source.is_some()
    }

    pub fn is_sink(&self) -> bool {
        self.sink.is_some()
    }

    /// Uids of this vertex's operators, in chain order.
    pub fn operator_uids(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter(|(_, s)| !matches!(s, Stage::AssignWatermark { .. } | Stage::Exchange(_)))
            .map(|(i, _)| operator_uid(self.pipeline, *i))
            .collect()
    }

    /// Uids of the operators that keep keyed state.
    pub fn stateful_operator_uids(&self) -> Vec<String> {
        self.stages
            .iter()
            .filter(|(_, s)| {
                matches!(
                    s,
                    Stage::OverAggregate { .. }
                        | Stage::WindowAggregate { .. }
                        | Stage::GroupAggregate { .. }
                        | Stage::Deduplicate { .. }
                        | Stage::IntervalJoin { .. }
                )
            })
            .map(|(i, _)| operator_uid(self.pipeline, *i))
            .collect()
    }
}

/// The uid of the operator of stage `stage` of pipeline `pipeline`.
pub fn operator_uid(pipeline: usize, stage: usize) -> String {
    format!("p{pipeline}-s{stage}")
}

impl JobGraph {
    /// Every vertex at `parallelism`; pipelines are cut at exchanges unless
    /// `parallelism` is 1.
    pub fn new(plan: &JobPlan, parallelism: usize, max_parallelism: u16) -> Result<Self> {
        let parallelism = parallelism.max(1);
        if parallelism > usize::from(max_parallelism) {
            return Err(RuntimeError::Plan(format!(
                "parallelism {parallelism} is above max parallelism {max_parallelism}"
            )));
        }
        let chained = parallelism == 1;
        let mut vertices: Vec<VertexSpec> = Vec::new();
        for (pi, pipe) in plan.pipelines.iter().enumerate() {
            let src = plan.tables.get(&pipe.source).ok_or_else(|| {
                RuntimeError::Plan(format!("unknown source table {}", pipe.source))
            })?;
            let sink = plan
                .tables
                .get(&pipe.sink)
                .ok_or_else(|| RuntimeError::Plan(format!("unknown sink table {}", pipe.sink)))?;
            let src_schema = physical_schema(src);
            let watermark = pipe.stages.iter().find_map(|s| match s {
                Stage::AssignWatermark { expr, .. } => Some(expr.clone()),
                _ => None,
            });
            // Cut points.
            let mut cuts: Vec<Cut> = Vec::new();
            let mut cur = Vec::new();
            let mut input = src_schema.clone();
            let mut schema = src_schema.clone();
            // A join's inputs come from two sources: its exchanges are always cut.
            let cut = !chained || pipe.right.is_some();
            for (si, s) in pipe.stages.iter().enumerate() {
                if let Stage::Exchange(x) = s {
                    if cut {
                        cuts.push((std::mem::take(&mut cur), input.clone(), Some(x.clone())));
                        input = schema.clone();
                    }
                    continue;
                }
                schema = stage_output(s, &schema);
                cur.push((si, s.clone()));
            }
            cuts.push((cur, input, None));
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
            let n = cuts.len();
            let first = vertices.len();
            // The right input's vertex goes just before the join's, so ids stay
            // in upstream-to-downstream order.
            let join_cut = cuts.iter().position(|(st, _, _)| {
                st.iter()
                    .any(|(_, s)| matches!(s, Stage::IntervalJoin { .. }))
            });
            let right = match (&pipe.right, join_cut) {
                (Some(r), Some(jc)) => Some((r, jc)),
                (None, None) => None,
                _ => {
                    return Err(RuntimeError::Plan(format!(
                        "pipeline {pi}: a join needs both its right input and its IntervalJoin stage"
                    )));
                }
            };
            let id_of = |vi: usize| match right {
                Some((_, jc)) if vi >= jc => first + vi + 1,
                _ => first + vi,
            };
            let mut prev_exchange: Option<Exchange> = None;
            for (vi, (stages, input_schema, exchange)) in cuts.into_iter().enumerate() {
                let id = id_of(vi);
                let mut side_input = None;
                if let Some((r, jc)) = right
                    && jc == vi
                {
                    let rv =
                        right_vertex(plan, pi, r, pipe.stages.len(), id - 1, parallelism, sink)?;
                    side_input = Some(VertexInput {
                        upstream: rv.id,
                        exchange: rv.output_exchange.clone().ok_or_else(|| {
                            RuntimeError::Plan(format!(
                                "pipeline {pi}: the join's right input has no exchange"
                            ))
                        })?,
                    });
                    vertices.push(rv);
                }
                let ops: Vec<String> = stages
                    .iter()
                    .filter(|(_, s)| !matches!(s, Stage::AssignWatermark { .. }))
                    .map(|(_, s)| stage_name(s))
                    .collect();
                vertices.push(VertexSpec {
                    id,
                    uid: format!("p{pi}-v{vi}"),
                    name: format!(
                        "pipeline {pi} ({} -> {}) vertex {vi}: {}",
                        src.name,
                        sink.name,
                        if ops.is_empty() {
                            "forward".to_string()
                        } else {
                            ops.join(" -> ")
                        }
                    ),
                    pipeline: pi,
                    parallelism,
                    stages,
                    input_schema,
                    input: prev_exchange.take().map(|exchange| VertexInput {
                        upstream: id_of(vi - 1),
                        exchange,
                    }),
                    side_input,
                    output: (vi + 1 < n).then(|| id_of(vi + 1)),
                    output_exchange: exchange.clone(),
                    source: (vi == 0).then(|| SourceSpec {
                        table: src.clone(),
                        uid: format!("p{pi}-source-{}", src.name),
                        schema: src_schema.clone(),
                        watermark: watermark.clone(),
                    }),
                    sink: (vi + 1 == n).then(|| SinkSpec {
                        table: sink.clone(),
                        uid: format!("{pi}-{}", sink.name),
                        schema: sink_schema.clone(),
                        updating: pipe.updating,
                    }),
                });
                prev_exchange = exchange;
            }
        }
        Ok(JobGraph {
            max_parallelism,
            vertices,
            chained,
        })
    }

    /// Changes one vertex's parallelism (a graph cut at its exchanges only:
    /// a chained pipeline has no exchange to route keys).
    pub fn set_parallelism(&mut self, vertex: VertexId, parallelism: usize) -> Result<()> {
        if self.chained && parallelism != 1 {
            return Err(RuntimeError::Plan(
                "a graph built at parallelism 1 is chained: build it at parallelism > 1 to change one vertex".into(),
            ));
        }
        if parallelism == 0 || parallelism > usize::from(self.max_parallelism) {
            return Err(RuntimeError::Plan(format!(
                "parallelism {parallelism} must be in 1..={}",
                self.max_parallelism
            )));
        }
        let v = self
            .vertices
            .get_mut(vertex)
            .ok_or_else(|| RuntimeError::Plan(format!("no vertex {vertex}")))?;
        v.parallelism = parallelism;
        Ok(())
    }

    pub fn vertex(&self, id: VertexId) -> Result<&VertexSpec> {
        self.vertices
            .get(id)
            .ok_or_else(|| RuntimeError::Task(format!("no vertex {id} in the job graph")))
    }

    /// Every subtask, vertex by vertex.
    pub fn subtasks(&self) -> Vec<super::SubtaskId> {
        self.vertices
            .iter()
            .flat_map(|v| {
                (0..v.parallelism).map(move |s| super::SubtaskId {
                    vertex: v.id,
                    subtask: s,
                })
            })
            .collect()
    }

    /// The subtasks of source vertices (where barriers are injected).
    pub fn source_subtasks(&self) -> Vec<super::SubtaskId> {
        self.subtasks()
            .into_iter()
            .filter(|s| self.vertices[s.vertex].is_source())
            .collect()
    }

    /// Number of input channels of a subtask of `vertex` (upstream parallelism,
    /// of both inputs for a two-input vertex; 0 for a source).
    pub fn input_channels(&self, vertex: VertexId) -> usize {
        self.input_sources(vertex).len()
    }

    /// Where each input channel of a subtask of `vertex` comes from, by
    /// channel index: `(upstream vertex, upstream subtask)`. The side input's
    /// channels follow the main input's.
    pub fn input_sources(&self, vertex: VertexId) -> Vec<(VertexId, usize)> {
        let Some(v) = self.vertices.get(vertex) else {
            return Vec::new();
        };
        v.input
            .iter()
            .chain(v.side_input.iter())
            .flat_map(|i| (0..self.vertices[i.upstream].parallelism).map(|s| (i.upstream, s)))
            .collect()
    }

    /// The first channel of `vertex`'s side input (`None` for a one-input vertex):
    /// a batch on a channel at or above it belongs to input 1.
    pub fn side_input_channel(&self, vertex: VertexId) -> Option<usize> {
        let v = self.vertices.get(vertex)?;
        v.side_input.as_ref()?;
        Some(
            v.input
                .as_ref()
                .map(|i| self.vertices[i.upstream].parallelism)
                .unwrap_or(0),
        )
    }

    /// The channel index the envelopes of subtask `subtask` of `vertex` carry
    /// at the gates of its output vertex.
    pub fn output_channel(&self, vertex: VertexId, subtask: usize) -> usize {
        let Some(w) = self.vertices.get(vertex).and_then(|v| v.output) else {
            return subtask;
        };
        match self.side_input_channel(w) {
            Some(first)
                if self.vertices[w].side_input.as_ref().map(|i| i.upstream) == Some(vertex) =>
            {
                first + subtask
            }
            _ => subtask,
        }
    }
}

/// The vertex of a join's right input: its source and stages up to the hash
/// exchange. Its stage indices follow the pipeline's (`offset` on), so its
/// operator uids are the pipeline's too.
fn right_vertex(
    plan: &JobPlan,
    pi: usize,
    right: &JoinInput,
    offset: usize,
    id: VertexId,
    parallelism: usize,
    sink: &TableDef,
) -> Result<VertexSpec> {
    let src = plan
        .tables
        .get(&right.source)
        .ok_or_else(|| RuntimeError::Plan(format!("unknown source table {}", right.source)))?;
    let schema = physical_schema(src);
    let (exchange, body) = match right.stages.split_last() {
        Some((Stage::Exchange(x), body)) => (x.clone(), body),
        _ => {
            return Err(RuntimeError::Plan(format!(
                "pipeline {pi}: the right input of a join must end in its exchange"
            )));
        }
    };
    if body.iter().any(|s| matches!(s, Stage::Exchange(_))) {
        return Err(RuntimeError::Plan(format!(
            "pipeline {pi}: the right input of a join has more than one exchange"
        )));
    }
    let stages: Vec<(usize, Stage)> = body
        .iter()
        .enumerate()
        .map(|(j, s)| (offset + j, s.clone()))
        .collect();
    let ops: Vec<String> = stages
        .iter()
        .filter(|(_, s)| !matches!(s, Stage::AssignWatermark { .. }))
        .map(|(_, s)| stage_name(s))
        .collect();
    Ok(VertexSpec {
        id,
        uid: format!("p{pi}-r0"),
        name: format!(
            "pipeline {pi} ({} -> {}) right input: {}",
            src.name,
            sink.name,
            if ops.is_empty() {
                "forward".to_string()
            } else {
                ops.join(" -> ")
            }
        ),
        pipeline: pi,
        parallelism,
        stages,
        input_schema: schema.clone(),
        input: None,
        side_input: None,
        // The join's vertex comes right after this one.
        output: Some(id + 1),
        output_exchange: Some(exchange),
        source: Some(SourceSpec {
            table: src.clone(),
            // Not `p{pi}-source-…`: a self-join reads the same table twice.
            uid: format!("p{pi}-right-source-{}", src.name),
            schema,
            watermark: body.iter().find_map(|s| match s {
                Stage::AssignWatermark { expr, .. } => Some(expr.clone()),
                _ => None,
            }),
        }),
        sink: None,
    })
}

fn stage_name(s: &Stage) -> String {
    match s {
        Stage::Project { .. } => "Project".into(),
        Stage::Filter { .. } => "Filter".into(),
        Stage::AssignWatermark { .. } => "Watermark".into(),
        Stage::Exchange(x) => format!("{x:?}"),
        Stage::OverAggregate { .. } => "OverAggregate".into(),
        Stage::WindowAggregate { .. } => "WindowAggregate".into(),
        Stage::GroupAggregate { .. } => "GroupAggregate".into(),
        Stage::Deduplicate { .. } => "Deduplicate".into(),
        Stage::IntervalJoin { .. } => "IntervalJoin".into(),
    }
}

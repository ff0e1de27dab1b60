//! The logical plan of a job: one pipeline per `INSERT INTO`, each a source
//! table, a list of stages, and a sink table. Exchanges are explicit stages so
//! the runtime can cut the pipeline into chained vertices without re-planning.

use std::collections::BTreeMap;

use arrow_schema::DataType;

use crate::catalog::TableDef;
use crate::expr::Expr;

#[derive(Debug, Clone)]
pub struct JobPlan {
    pub tables: BTreeMap<String, TableDef>,
    pub pipelines: Vec<Pipeline>,
    /// `SET 'key' = 'value'` statements, in order.
    pub config: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub struct Pipeline {
    pub source: String,
    pub sink: String,
    pub stages: Vec<Stage>,
    /// Names and types of the rows arriving at the sink.
    pub output: Vec<(String, String)>,
    /// True when the rows are a changelog (+I/-U/+U/-D) rather than append-only.
    pub updating: bool,
    /// The second input of a two-input pipeline (the right side of an interval
    /// join); `stages` then hold the left side up to its exchange, the join, and
    /// what follows it.
    pub right: Option<JoinInput>,
}

/// The right input of a join: a source table and its stages, ending in the
/// hash exchange on the join keys.
#[derive(Debug, Clone)]
pub struct JoinInput {
    pub source: String,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AggFunc {
    Count,
    Sum,
    Min,
    Max,
    Avg,
}

#[derive(Debug, Clone)]
pub struct AggCall {
    pub func: AggFunc,
    /// Input column; `None` for `COUNT(*)`.
    pub arg: Option<usize>,
    pub distinct: bool,
    pub ty: DataType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowKind {
    Tumble { size_ms: i64 },
    Hop { size_ms: i64, slide_ms: i64 },
    Session { gap_ms: i64 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeKind {
    Event,
    Processing,
}

/// Which rows of an interval join's inputs appear without a match (padded
/// with NULLs once their interval has passed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinKind {
    Inner,
    LeftOuter,
    RightOuter,
    FullOuter,
}

impl JoinKind {
    /// Whether unmatched rows of input `side` (0 left, 1 right) are emitted.
    pub fn pads(self, side: usize) -> bool {
        matches!(
            (self, side),
            (JoinKind::LeftOuter | JoinKind::FullOuter, 0)
                | (JoinKind::RightOuter | JoinKind::FullOuter, 1)
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            JoinKind::Inner => "inner",
            JoinKind::LeftOuter => "left outer",
            JoinKind::RightOuter => "right outer",
            JoinKind::FullOuter => "full outer",
        }
    }
}

#[derive(Debug, Clone)]
pub enum Exchange {
    Forward,
    /// Rows go to the subtask owning the key group of their key (empty key: subtask 0).
    Hash {
        keys: Vec<usize>,
    },
    Rebalance,
    Broadcast,
}

#[derive(Debug, Clone)]
pub enum Stage {
    Project {
        exprs: Vec<Expr>,
        names: Vec<String>,
    },
    Filter {
        predicate: Expr,
    },
    /// Per source partition: the watermark is the max of `expr` over the rows seen.
    AssignWatermark {
        rowtime: usize,
        expr: Expr,
    },
    Exchange(Exchange),
    /// Output: input columns, then one column per aggregate.
    OverAggregate {
        keys: Vec<usize>,
        time: usize,
        time_kind: TimeKind,
        /// RANGE frames give rows with equal timestamps the same result.
        range: bool,
        aggs: Vec<AggCall>,
    },
    /// Output: keys, window_start, window_end, aggregates.
    WindowAggregate {
        keys: Vec<usize>,
        time: usize,
        window: WindowKind,
        aggs: Vec<AggCall>,
    },
    /// Output: keys, aggregates, as a changelog keyed by `keys`.
    GroupAggregate {
        keys: Vec<usize>,
        aggs: Vec<AggCall>,
    },
    /// Interval join of the left input (this pipeline's rows) with the
    /// pipeline's right input, both hash-partitioned on their keys: rows with
    /// equal keys and `right.time + lower_ms <= left.time <= right.time + upper_ms`.
    /// Output: the left columns, then the right ones; append-only; the output
    /// watermark is the input's minus `max(-lower_ms, upper_ms)`. Outer joins
    /// also emit each unmatched row of a padded side, with NULLs for the other
    /// side, when the watermark passes the last time a match could arrive.
    IntervalJoin {
        kind: JoinKind,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
        left_time: usize,
        right_time: usize,
        lower_ms: i64,
        upper_ms: i64,
        /// Columns of the right input.
        right_columns: Vec<(String, DataType)>,
    },
    /// `ROW_NUMBER() OVER (PARTITION BY keys ORDER BY time ASC|DESC) … WHERE rn = 1`.
    /// Output: the input columns. Keep-first is append-only; keep-last is a
    /// changelog (+I, then -U/+U) keyed by `keys`.
    Deduplicate {
        keys: Vec<usize>,
        time: usize,
        time_kind: TimeKind,
        keep_last: bool,
    },
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        fn list<T: std::fmt::Display>(v: &[T]) -> String {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        }
        fn aggs(v: &[AggCall]) -> String {
            v.iter()
                .map(|a| {
                    format!(
                        "{:?}({}{})",
                        a.func,
                        if a.distinct { "DISTINCT " } else { "" },
                        a.arg.map(|i| format!("#{i}")).unwrap_or_else(|| "*".into())
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        }
        match self {
            Stage::Project { exprs, names } => {
                let items: Vec<String> = exprs
                    .iter()
                    .zip(names)
                    .map(|(e, n)| format!("{e} AS {n}"))
                    .collect();
                write!(f, "Project [{}]", items.join(", "))
            }
            Stage::Filter { predicate } => write!(f, "Filter {predicate}"),
            Stage::AssignWatermark { rowtime, expr } => {
                write!(f, "WatermarkAssigner rowtime=#{rowtime} watermark={expr}")
            }
            Stage::Exchange(x) => match x {
                Exchange::Forward => write!(f, "Exchange forward"),
                Exchange::Hash { keys } => write!(
                    f,
                    "Exchange hash[{}]",
                    keys.iter()
                        .map(|k| format!("#{k}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Exchange::Rebalance => write!(f, "Exchange rebalance"),
                Exchange::Broadcast => write!(f, "Exchange broadcast"),
            },
            Stage::OverAggregate {
                keys,
                time,
                time_kind,
                range,
                aggs: a,
            } => write!(
                f,
                "OverAggregate partition=[{}] order={:?}-time #{time} frame={} UNBOUNDED PRECEDING aggs=[{}]",
                list(&keys.iter().map(|k| format!("#{k}")).collect::<Vec<_>>()),
                time_kind,
                if *range { "RANGE" } else { "ROWS" },
                aggs(a)
            ),
            Stage::WindowAggregate {
                keys,
                time,
                window,
                aggs: a,
            } => write!(
                f,
                "WindowAggregate {window:?} time=#{time} keys=[{}] aggs=[{}]",
                list(&keys.iter().map(|k| format!("#{k}")).collect::<Vec<_>>()),
                aggs(a)
            ),
            Stage::Deduplicate {
                keys,
                time,
                time_kind,
                keep_last,
            } => write!(
                f,
                "Deduplicate keep={} partition=[{}] order={:?}-time #{time}{}",
                if *keep_last { "last" } else { "first" },
                list(&keys.iter().map(|k| format!("#{k}")).collect::<Vec<_>>()),
                time_kind,
                if *keep_last { " (changelog)" } else { "" }
            ),
            Stage::IntervalJoin {
                kind,
                left_keys,
                right_keys,
                left_time,
                right_time,
                lower_ms,
                upper_ms,
                right_columns,
            } => write!(
                f,
                "IntervalJoin {} keys=[{}] = right[{}] right.#{right_time} + {lower_ms} ms <= #{left_time} <= right.#{right_time} + {upper_ms} ms right=[{}]",
                kind.name(),
                list(
                    &left_keys
                        .iter()
                        .map(|k| format!("#{k}"))
                        .collect::<Vec<_>>()
                ),
                list(
                    &right_keys
                        .iter()
                        .map(|k| format!("#{k}"))
                        .collect::<Vec<_>>()
                ),
                list(
                    &right_columns
                        .iter()
                        .map(|(n, t)| format!("{n} {}", crate::types::sql_name(t)))
                        .collect::<Vec<_>>()
                ),
            ),
            Stage::GroupAggregate { keys, aggs: a } => write!(
                f,
                "GroupAggregate (changelog) keys=[{}] aggs=[{}]",
                list(&keys.iter().map(|k| format!("#{k}")).collect::<Vec<_>>()),
                aggs(a)
            ),
        }
    }
}

impl std::fmt::Display for JobPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, p) in self.pipelines.iter().enumerate() {
            let src = &self.tables[&p.source];
            writeln!(
                f,
                "pipeline {i}: {} -> {}{}",
                p.source,
                p.sink,
                if p.updating { " (updating)" } else { "" }
            )?;
            writeln!(f, "  Source {} [{}]", src.name, src.connector)?;
            let join = p
                .stages
                .iter()
                .position(|s| matches!(s, Stage::IntervalJoin { .. }));
            for (i, s) in p.stages.iter().enumerate() {
                if let (Some(j), Some(r)) = (join, &p.right)
                    && i == j
                {
                    let rt = &self.tables[&r.source];
                    writeln!(f, "  Right input: Source {} [{}]", rt.name, rt.connector)?;
                    for s in &r.stages {
                        writeln!(f, "    {s}")?;
                    }
                }
                writeln!(f, "  {s}")?;
            }
            let out: Vec<String> = p.output.iter().map(|(n, t)| format!("{n} {t}")).collect();
            writeln!(
                f,
                "  Sink {} [{}] ({})",
                p.sink,
                self.tables[&p.sink].connector,
                out.join(", ")
            )?;
        }
        Ok(())
    }
}

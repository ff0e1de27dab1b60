//! Sluice's SQL front end: Flink SQL job text → validated [`JobPlan`].
//!
//! Pure (no I/O, no async runtime) so the control plane can validate tenants'
//! SQL with [`check`] before anything is deployed; the engine calls [`plan`].
//! Every error carries a 1-based line and column into the submitted text and a
//! stable code ([`ErrorCode`]); what is not supported is rejected by name at
//! plan time, never mis-executed.
//!
//! Supported: `CREATE TABLE … WITH (…)` with physical and computed columns,
//! `WATERMARK FOR … AS …`, `PRIMARY KEY … NOT ENFORCED`; `SET 'k' = 'v'`;
//! `INSERT INTO … SELECT` (optionally in `EXECUTE STATEMENT SET BEGIN … END`);
//! projections, filters, scalar functions; `OVER (PARTITION BY … ORDER BY
//! <time> ROWS|RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)` aggregates;
//! `TUMBLE`/`HOP`/`SESSION` window TVFs grouped by `window_start, window_end`;
//! unbounded `GROUP BY` producing a changelog; deduplication
//! (`SELECT … FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY … ORDER BY
//! <time attribute> ASC|DESC) AS rn FROM t) WHERE rn = 1`, see `dedup.rs`);
//! event-time interval joins of two tables with watermarks (`FROM a, b WHERE
//! …`, `a [INNER] JOIN b ON …`, `a LEFT|RIGHT|FULL [OUTER] JOIN b ON …`: at
//! least one equality between the inputs and both a lower and an upper bound
//! on `a.t - b.t`, written with BETWEEN or comparisons and `± INTERVAL`; other
//! conjuncts filter the joined rows; outer joins pad unmatched rows with NULLs
//! once their interval has passed; see `join.rs`); `JSON_VALUE` with plain
//! member/index paths, `RETURNING` and `ON EMPTY` / `ON ERROR` (see
//! [`json_path`]).
//!
//! Rejected at plan time with their position: regular (unbounded) joins,
//! CROSS/NATURAL/USING joins, processing-time joins, joins of more than two
//! tables or of subqueries, predicates other than keys and time bounds in the
//! ON of an outer join, aggregation over a join.
//!
//! Test: `dev/cargo test -p sluice-sql`.

mod aggregations;
mod bind;
mod catalog;
mod dedup;
mod error;
mod expr;
mod functions;
mod join;
pub mod json_path;
mod options;
mod parse;
mod plan;
mod planner;
mod simplify;
pub mod types;

use std::collections::BTreeMap;

use serde::Serialize;

pub use catalog::{Column, TableDef, WatermarkDef};
pub use error::{ErrorCode, SqlError};
pub use expr::{BinaryOp, Expr, Func, Literal, parse_timestamp_ms};
pub use options::parse_duration_ms;
pub use plan::{
    AggCall, AggFunc, Exchange, JobPlan, JoinInput, JoinKind, Pipeline, Stage, TimeKind, WindowKind,
};

/// What a valid job does, for the control plane to show and store.
#[derive(Debug, Clone, Serialize)]
pub struct JobSummary {
    pub tables: Vec<TableSummary>,
    pub inserts: Vec<InsertSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TableSummary {
    pub name: String,
    pub connector: String,
    pub columns: Vec<Column>,
    pub has_watermark: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct InsertSummary {
    pub source: String,
    pub sink: String,
    /// True when the sink receives updates (+U/-U/-D), not only inserts.
    pub updating: bool,
}

/// Validates a job's SQL without running it.
pub fn check(sql: &str) -> Result<JobSummary, Vec<SqlError>> {
    let plan = plan(sql)?;
    Ok(JobSummary {
        tables: plan
            .tables
            .values()
            .map(|t| TableSummary {
                name: t.name.clone(),
                connector: t.connector.clone(),
                columns: t.physical.clone(),
                has_watermark: t.watermark.is_some(),
            })
            .collect(),
        inserts: plan
            .pipelines
            .iter()
            .map(|p| InsertSummary {
                source: p.source.clone(),
                sink: p.sink.clone(),
                updating: p.updating,
            })
            .collect(),
    })
}

/// Parses, validates and plans a job. All statements are checked; every error
/// found is returned (at most one per statement).
pub fn plan(sql: &str) -> Result<JobPlan, Vec<SqlError>> {
    let statements = parse::parse_statements(sql)?;
    let mut tables: BTreeMap<String, TableDef> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut pipelines = Vec::new();
    let mut config = Vec::new();
    // Tables whose CREATE failed: an INSERT naming them would only repeat that error.
    let mut broken: Vec<String> = Vec::new();
    for s in &statements {
        match s {
            parse::Statement::CreateTable(ct) => match catalog::build_table(ct) {
                Ok(t) => {
                    if tables.contains_key(&t.name) {
                        errors.push(SqlError::span(
                            ct.name_span,
                            ErrorCode::Duplicate,
                            format!("table '{}' is created twice", t.name),
                        ));
                    } else {
                        tables.insert(t.name.clone(), t);
                    }
                }
                Err(e) => {
                    broken.push(ct.name.clone());
                    errors.push(e)
                }
            },
            parse::Statement::Set { key, value, .. } => config.push((key.clone(), value.clone())),
            parse::Statement::Insert(ins) => match planner::plan_insert(ins, &tables) {
                Ok(p) => pipelines.push(p),
                Err(e)
                    if e.code == ErrorCode::UnknownTable
                        && broken.iter().any(|b| e.message.contains(&format!("'{b}'"))) => {}
                Err(e) => errors.push(e),
            },
        }
    }
    if errors.is_empty() && pipelines.is_empty() {
        errors.push(SqlError {
            line: 1,
            column: 1,
            message: "the job has no INSERT INTO statement, so it would do nothing".into(),
            code: ErrorCode::EmptyJob,
        });
    }
    if errors.is_empty() {
        Ok(JobPlan {
            tables,
            pipelines,
            config,
        })
    } else {
        errors.sort_by_key(|e| (e.line, e.column));
        Err(errors)
    }
}

//! Golden tests: SQL + input rows (and watermarks) → expected output rows.
//!
//! The pipeline's operators are built exactly as the executor builds them
//! (one subtask); the test feeds batches and watermarks in a fixed order, so
//! out-of-order input and late records have deterministic outcomes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
use sluice_runtime::connector::physical_schema;
use sluice_runtime::operator::{Chain, VecCollector};
use sluice_runtime::{JobConfig, MAX_WATERMARK, ROW_KIND_COLUMN, RowKind, build_operators};

const SRC: &str = "CREATE TABLE src (
  user_id STRING,
  v BIGINT,
  ts_ms BIGINT,
  ts AS TO_TIMESTAMP_LTZ(ts_ms, 3),
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH ('connector' = 'datagen');
";

enum In {
    Rows(Vec<(&'static str, i64, i64)>),
    Watermark(i64),
}

use In::{Rows, Watermark};

struct Out {
    rows: Vec<String>,
    late: u64,
}

fn cell(a: &ArrayRef, r: usize) -> String {
    if a.is_null(r) {
        return "NULL".into();
    }
    if let arrow_schema::DataType::Timestamp(_, _) = a.data_type() {
        let ms = a
            .as_primitive::<arrow_array::types::TimestampMillisecondType>()
            .value(r);
        return sluice_runtime::eval::format_timestamp(ms, "HH:mm:ss.SSS");
    }
    arrow_cast::display::array_value_to_string(a, r).unwrap_or_else(|e| panic!("display: {e}"))
}

use arrow_array::Array;

fn run(sql: &str, input: Vec<In>) -> Out {
    let plan = sluice_sql::plan(&format!("{SRC}{sql}")).unwrap_or_else(|e| panic!("plan: {e:?}"));
    let p = &plan.pipelines[0];
    let schema = physical_schema(&plan.tables["src"]);
    let late = Arc::new(AtomicU64::new(0));
    let (ops, _) = build_operators(&p.stages, schema.clone(), 0, 1, &JobConfig::new(1), &late)
        .unwrap_or_else(|e| panic!("build: {e}"));
    let mut chain = Chain::new(ops);
    let mut out = VecCollector::default();
    for i in input {
        match i {
            Rows(rows) => {
                let users: ArrayRef = Arc::new(StringArray::from(
                    rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                ));
                let v: ArrayRef = Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.1).collect::<Vec<_>>(),
                ));
                let ts: ArrayRef = Arc::new(Int64Array::from(
                    rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                ));
                let b = RecordBatch::try_new(schema.clone(), vec![users, v, ts])
                    .unwrap_or_else(|e| panic!("{e}"));
                chain
                    .process(b, &mut out)
                    .unwrap_or_else(|e| panic!("process: {e}"));
            }
            Watermark(w) => chain
                .watermark(w, &mut out)
                .unwrap_or_else(|e| panic!("watermark: {e}")),
        }
    }
    chain
        .watermark(MAX_WATERMARK, &mut out)
        .unwrap_or_else(|e| panic!("watermark: {e}"));
    chain
        .finish(&mut out)
        .unwrap_or_else(|e| panic!("finish: {e}"));
    let mut rows = Vec::new();
    for b in &out.batches {
        let s = b.schema();
        let kind = s
            .fields()
            .last()
            .map(|f| f.name() == ROW_KIND_COLUMN)
            .unwrap_or(false);
        let n = if kind {
            b.num_columns() - 1
        } else {
            b.num_columns()
        };
        for r in 0..b.num_rows() {
            let vals: Vec<String> = (0..n).map(|c| cell(b.column(c), r)).collect();
            let prefix = if kind {
                RowKind::from_i8(
                    b.column(n)
                        .as_primitive::<arrow_array::types::Int8Type>()
                        .value(r),
                )
                .short()
            } else {
                "+I"
            };
            rows.push(format!("{prefix}[{}]", vals.join(", ")));
        }
    }
    Out {
        rows,
        late: late.load(Ordering::Relaxed),
    }
}

const OVER_SNK: &str =
    "CREATE TABLE snk (user_id STRING, ts_ms BIGINT, n BIGINT) WITH ('connector' = 'blackhole');\n";

#[test]
fn over_rows_event_time_orders_and_drops_late() {
    let o = run(
        &format!(
            "{OVER_SNK}INSERT INTO snk SELECT user_id, ts_ms, COUNT(*) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) FROM src;"
        ),
        vec![
            Rows(vec![("a", 0, 5000), ("a", 0, 3000), ("b", 0, 4000)]),
            Watermark(4000),
            // 2000 is behind the watermark: late. 4500 is not.
            Rows(vec![("a", 0, 2000), ("a", 0, 6000), ("a", 0, 4500)]),
            Watermark(10_000),
        ],
    );
    assert_eq!(
        o.rows,
        [
            "+I[a, 3000, 1]",
            "+I[b, 4000, 1]",
            "+I[a, 4500, 2]",
            "+I[a, 5000, 3]",
            "+I[a, 6000, 4]"
        ]
    );
    assert_eq!(o.late, 1);
}

#[test]
fn over_range_gives_ties_the_same_result_and_other_aggregates() {
    let o = run(
        "CREATE TABLE snk (user_id STRING, ts_ms BIGINT, n BIGINT, s BIGINT, lo BIGINT, hi BIGINT, av BIGINT) WITH ('connector' = 'blackhole');
         INSERT INTO snk SELECT user_id, ts_ms,
           COUNT(*) OVER w2, SUM(v) OVER w2, MIN(v) OVER w2, MAX(v) OVER w2, AVG(v) OVER w2
         FROM src;"
            .replace("OVER w2", "OVER (PARTITION BY user_id ORDER BY ts RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)")
            .as_str(),
        vec![Rows(vec![("a", 10, 5000), ("a", 4, 5000), ("a", 1, 7000), ("b", 7, 1000)]), Watermark(8000)],
    );
    assert_eq!(
        o.rows,
        [
            "+I[b, 1000, 1, 7, 7, 7, 7]",
            "+I[a, 5000, 2, 14, 4, 10, 7]",
            "+I[a, 5000, 2, 14, 4, 10, 7]",
            "+I[a, 7000, 3, 15, 1, 10, 5]"
        ]
    );
}

const WIN_SNK: &str = "CREATE TABLE snk (user_id STRING, ws TIMESTAMP(3), we TIMESTAMP(3), n BIGINT, s BIGINT, d BIGINT) WITH ('connector' = 'blackhole');\n";

#[test]
fn tumble_windows_with_late_record_and_count_distinct() {
    let o = run(
        &format!("{WIN_SNK}INSERT INTO snk SELECT user_id, window_start, window_end, COUNT(*), SUM(v), COUNT(DISTINCT v)
          FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '10' SECOND)) GROUP BY user_id, window_start, window_end;"),
        vec![
            Rows(vec![("a", 1, 1000), ("a", 1, 9000), ("b", 5, 3000), ("a", 2, 12_000)]),
            Watermark(10_500),
            // The first window [0, 10 s) is closed: 8000 is late; 11000 is not.
            Rows(vec![("a", 3, 8000), ("a", 4, 11_000)]),
        ],
    );
    assert_eq!(
        o.rows,
        [
            "+I[a, 00:00:00.000, 00:00:10.000, 2, 2, 1]",
            "+I[b, 00:00:00.000, 00:00:10.000, 1, 5, 1]",
            "+I[a, 00:00:10.000, 00:00:20.000, 2, 6, 2]"
        ]
    );
    assert_eq!(o.late, 1);
}

#[test]
fn hop_windows_assign_each_row_to_every_window() {
    let o = run(
        "CREATE TABLE snk (ws TIMESTAMP(3), we TIMESTAMP(3), n BIGINT) WITH ('connector' = 'blackhole');
         INSERT INTO snk SELECT window_start, window_end, COUNT(*) FROM TABLE(HOP(TABLE src, DESCRIPTOR(ts), INTERVAL '5' SECOND, INTERVAL '10' SECOND)) GROUP BY window_start, window_end;",
        vec![Rows(vec![("a", 0, 1000), ("a", 0, 6000), ("a", 0, 12_000)])],
    );
    let mut rows = o.rows.clone();
    rows.sort();
    assert_eq!(
        rows,
        [
            "+I[00:00:00.000, 00:00:10.000, 2]",
            "+I[00:00:05.000, 00:00:15.000, 2]",
            "+I[00:00:10.000, 00:00:20.000, 1]",
            "+I[23:59:55.000, 00:00:05.000, 1]",
        ]
    );
}

#[test]
fn session_windows_merge_when_a_row_bridges_them() {
    let o = run(
        "CREATE TABLE snk (user_id STRING, ws TIMESTAMP(3), we TIMESTAMP(3), n BIGINT, s BIGINT) WITH ('connector' = 'blackhole');
         INSERT INTO snk SELECT user_id, window_start, window_end, COUNT(*), SUM(v) FROM TABLE(SESSION(TABLE src, DESCRIPTOR(ts), INTERVAL '3' SECOND)) GROUP BY user_id, window_start, window_end;",
        vec![
            Rows(vec![("a", 1, 1000), ("a", 2, 6000), ("b", 5, 2000)]),
            // Two sessions of a: [1, 4) and [6, 9); 4000 bridges them.
            Rows(vec![("a", 4, 4000)]),
            Watermark(8500),
            Rows(vec![("a", 8, 20_000)]),
        ],
    );
    assert_eq!(
        o.rows,
        [
            "+I[b, 00:00:02.000, 00:00:05.000, 1, 5]",
            "+I[a, 00:00:01.000, 00:00:09.000, 3, 7]",
            "+I[a, 00:00:20.000, 00:00:23.000, 1, 8]"
        ]
    );
}

#[test]
fn group_by_emits_a_changelog() {
    let o = run(
        "CREATE TABLE snk (user_id STRING, n BIGINT, s BIGINT) WITH ('connector' = 'print');
         INSERT INTO snk SELECT user_id, COUNT(*), SUM(v) FROM src GROUP BY user_id;",
        vec![Rows(vec![("a", 1, 0), ("b", 2, 0), ("a", 3, 0)])],
    );
    assert_eq!(
        o.rows,
        ["+I[a, 1, 1]", "+I[b, 1, 2]", "-U[a, 1, 1]", "+U[a, 2, 4]"]
    );
    // The final table: the last +I/+U per key.
    let mut table = std::collections::BTreeMap::new();
    for r in &o.rows {
        let key = r[3..4].to_string();
        if r.starts_with("+I") || r.starts_with("+U") {
            table.insert(key, r[2..].to_string());
        }
    }
    assert_eq!(
        table.values().cloned().collect::<Vec<_>>(),
        ["[a, 2, 4]", "[b, 1, 2]"]
    );
}

#[test]
fn scalar_functions_and_filters() {
    let o = run(
        "CREATE TABLE snk (a STRING, b STRING, c STRING, d BIGINT, e STRING, f STRING, g BOOLEAN, h STRING) WITH ('connector' = 'blackhole');
         INSERT INTO snk SELECT
           UPPER(user_id) || '-' || LOWER('X'),
           CASE WHEN v > 10 THEN 'big' WHEN v > 5 THEN 'mid' ELSE 'small' END,
           SUBSTRING(CONCAT(user_id, 'bcdef'), 2, 3),
           CAST(CAST(v AS STRING) AS BIGINT) * 2 + ts_ms % 1000,
           DATE_FORMAT(ts, 'yyyy-MM-dd HH:mm:ss'),
           COALESCE(REGEXP_EXTRACT(user_id, 'u([0-9]+)', 1), 'none'),
           v IN (3, 12) AND ts_ms BETWEEN 0 AND 100000,
           TRIM('  t  ')
         FROM src WHERE user_id LIKE 'u%' AND NOT v = 4;",
        vec![Rows(vec![("u17", 12, 86_400_123), ("u2", 4, 0), ("x", 3, 0), ("u9", 3, 5)])],
    );
    assert_eq!(
        o.rows,
        [
            "+I[U17-x, big, 17b, 147, 1970-01-02 00:00:00, 17, false, t]",
            "+I[U9-x, small, 9bc, 11, 1970-01-01 00:00:00, 9, true, t]",
        ]
    );
}

//! `check` on good and bad jobs: every rejection names what was wrong, where.

use sluice_sql::{ErrorCode, SqlError, check, plan};

const SEED: &str = r#"
CREATE TABLE events (
  user_id STRING,
  event STRING,
  event_time_ms BIGINT,
  event_time AS TO_TIMESTAMP_LTZ(event_time_ms, 3),
  WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = 'events',
  'properties.bootstrap.servers' = 'localhost:9092',
  'scan.startup.mode' = 'earliest-offset',
  'format' = 'json'
);

CREATE TABLE enriched (
  user_id STRING,
  event STRING,
  event_time_ms BIGINT,
  user_event_count BIGINT
) WITH (
  'connector' = 'kafka',
  'topic' = 'enriched',
  'properties.bootstrap.servers' = 'localhost:9092',
  'format' = 'json'
);

INSERT INTO enriched
SELECT user_id, event, event_time_ms,
  COUNT(*) OVER (PARTITION BY user_id ORDER BY event_time
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS user_event_count
FROM events;
"#;

fn one_error(sql: &str) -> SqlError {
    match check(sql) {
        Ok(s) => panic!("expected an error, the job was accepted: {s:?}"),
        Err(mut errs) => {
            assert_eq!(errs.len(), 1, "expected one error, got {errs:?}");
            errs.remove(0)
        }
    }
}

fn assert_error(sql: &str, code: ErrorCode, line: u64, column: u64, needle: &str) {
    let e = one_error(sql);
    assert_eq!(e.code, code, "{e}");
    assert_eq!((e.line, e.column), (line, column), "position of: {e}");
    assert!(
        e.message.contains(needle),
        "message {:?} should mention {needle:?}",
        e.message
    );
}

#[test]
fn seed_job_is_accepted() {
    let s = check(SEED).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(s.tables.len(), 2);
    assert_eq!(s.inserts.len(), 1);
    assert!(!s.inserts[0].updating);
    let p = plan(SEED).unwrap_or_else(|e| panic!("{e:?}"));
    let text = p.to_string();
    assert!(text.contains("OverAggregate"), "{text}");
    assert!(text.contains("Exchange hash"), "{text}");
    assert!(text.contains("WatermarkAssigner"), "{text}");
}

const SRC: &str = "CREATE TABLE src (\n  user_id INT,\n  ts TIMESTAMP(3),\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH ('connector' = 'datagen');\nCREATE TABLE snk (user_id INT, n BIGINT) WITH ('connector' = 'blackhole');\n";

#[test]
fn syntax_error_points_at_the_token() {
    // line 7: "INSERT INTO snk SELEC user_id, 1 FROM src"
    let sql = format!("{SRC}INSERT INTO snk SELEC user_id FROM src;");
    let e = one_error(&sql);
    assert_eq!(e.code, ErrorCode::SyntaxError, "{e}");
    assert_eq!(e.line, 7, "{e}");
    assert_eq!(e.column, 17, "{e}");
}

#[test]
fn unknown_column_is_located() {
    let sql = format!("{SRC}INSERT INTO snk SELECT user_idd, CAST(1 AS BIGINT) FROM src;");
    assert_error(&sql, ErrorCode::UnknownColumn, 7, 24, "user_idd");
}

#[test]
fn unknown_table_is_located() {
    let sql = format!("{SRC}INSERT INTO snk SELECT user_id, CAST(1 AS BIGINT) FROM nope;");
    assert_error(&sql, ErrorCode::UnknownTable, 7, 56, "nope");
}

#[test]
fn type_mismatch_in_a_comparison() {
    let sql = format!(
        "{SRC}INSERT INTO snk SELECT user_id, CAST(1 AS BIGINT) FROM src\nWHERE user_id = 'x';"
    );
    assert_error(&sql, ErrorCode::TypeMismatch, 8, 7, "INT and STRING");
}

#[test]
fn type_mismatch_into_the_sink() {
    let sql = format!("{SRC}INSERT INTO snk SELECT user_id, 'text' FROM src;");
    assert_error(&sql, ErrorCode::TypeMismatch, 7, 33, "column 'n'");
}

#[test]
fn unsupported_construct_is_named() {
    let sql = format!(
        "{SRC}INSERT INTO snk SELECT user_id, CAST(1 AS BIGINT) FROM src\nUNION ALL SELECT user_id, CAST(2 AS BIGINT) FROM src;"
    );
    let e = one_error(&sql);
    assert_eq!(e.code, ErrorCode::Unsupported, "{e}");
    assert!(e.message.contains("UNION"), "{e}");
    assert_eq!(e.line, 7, "{e}");

    let sql = format!(
        "{SRC}INSERT INTO snk SELECT a.user_id, CAST(1 AS BIGINT) FROM src a\n  JOIN src b ON a.user_id = b.user_id;"
    );
    assert_error(&sql, ErrorCode::Unsupported, 8, 8, "regular join");
}

#[test]
fn bad_connector_option_is_located() {
    let sql = "CREATE TABLE t (a INT) WITH (\n  'connector' = 'datagen',\n  'rows-per-secnd' = '10'\n);\nCREATE TABLE s (a INT) WITH ('connector' = 'blackhole');\nINSERT INTO s SELECT a FROM t;";
    assert_error(sql, ErrorCode::BadOption, 3, 3, "rows-per-secnd");
    let sql = "CREATE TABLE t (a INT) WITH ('connector' = 'datagen', 'number-of-rows' = 'ten');\nCREATE TABLE s (a INT) WITH ('connector' = 'blackhole');\nINSERT INTO s SELECT a FROM t;";
    assert_error(sql, ErrorCode::BadOption, 1, 74, "not an integer");
    let sql = "CREATE TABLE t (a INT) WITH ('connector' = 'kafka', 'topic' = 'x', 'format' = 'json');\nCREATE TABLE s (a INT) WITH ('connector' = 'blackhole');\nINSERT INTO s SELECT a FROM t;";
    assert_error(
        sql,
        ErrorCode::BadOption,
        1,
        14,
        "properties.bootstrap.servers",
    );
    let sql = "CREATE TABLE t (a INT) WITH ('connector' = 'kafkaa');\nCREATE TABLE s (a INT) WITH ('connector' = 'blackhole');\nINSERT INTO s SELECT a FROM t;";
    assert_error(
        sql,
        ErrorCode::BadOption,
        1,
        44,
        "unknown connector 'kafkaa'",
    );
}

#[test]
fn flink_ddl_errors_are_located() {
    let sql = "CREATE TABLE t (\n  a INT,\n  WATERMARK FOR b AS b - INTERVAL '1' SECOND\n) WITH ('connector' = 'datagen');";
    assert_error(sql, ErrorCode::UnknownColumn, 3, 3, "'b'");
    let sql = "CREATE TABLE t (\n  a ARRAY<INT>\n) WITH ('connector' = 'datagen');";
    assert_error(sql, ErrorCode::Unsupported, 2, 5, "ARRAY");
    let sql = "CREATE TABLE t (a INT, PRIMARY KEY (a) ENFORCED) WITH ('connector' = 'datagen');";
    assert_error(sql, ErrorCode::SyntaxError, 1, 40, "NOT");
}

#[test]
fn window_tvf_and_group_by_plan() {
    let sql = format!(
        "{SRC}CREATE TABLE w (user_id INT, ws TIMESTAMP(3), we TIMESTAMP(3), n BIGINT) WITH ('connector'='blackhole');\n\
         INSERT INTO w SELECT user_id, window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY user_id, window_start, window_end;\n\
         INSERT INTO snk SELECT user_id, COUNT(*) FROM src GROUP BY user_id;"
    );
    let p = plan(&sql).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.pipelines.len(), 2);
    assert!(!p.pipelines[0].updating);
    assert!(p.pipelines[1].updating);
    let text = p.to_string();
    assert!(
        text.contains("WindowAggregate Tumble { size_ms: 60000 }"),
        "{text}"
    );
    assert!(text.contains("GroupAggregate"), "{text}");
}

#[test]
fn statement_set_and_set_statements() {
    let sql = format!(
        "SET 'parallelism.default' = '2';\n{SRC}EXECUTE STATEMENT SET BEGIN\nINSERT INTO snk SELECT user_id, CAST(1 AS BIGINT) FROM src;\nINSERT INTO snk SELECT user_id, CAST(2 AS BIGINT) FROM src WHERE user_id > 3;\nEND;"
    );
    let p = plan(&sql).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.pipelines.len(), 2);
    assert_eq!(
        p.config,
        vec![("parallelism.default".to_string(), "2".to_string())]
    );
}

#[test]
fn several_statements_report_several_errors() {
    let sql = "CREATE TABLE t (a INT) WITH ('connector' = 'nope');\nCREATE TABLE s (a INT) WITH ('connector' = 'blackhole');\nINSERT INTO s SELECT b FROM s;";
    let errs = check(sql).expect_err("two errors");
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(errs[0].line, 1);
    assert_eq!(errs[1].line, 3);
}

#[test]
fn filter_on_a_computed_case_runs_first_as_int_compares() {
    let sql = "CREATE TABLE src (ev INT, event AS CASE ev WHEN 0 THEN 'click' WHEN 1 THEN 'view' ELSE 'other' END)\n  WITH ('connector' = 'datagen');\n\
               CREATE TABLE snk (event STRING) WITH ('connector' = 'blackhole');\n\
               INSERT INTO snk SELECT event FROM src WHERE event = 'view';";
    let p = plan(sql).unwrap_or_else(|e| panic!("{e:?}"));
    let text = p.to_string();
    let filter = text
        .lines()
        .position(|l| l.trim_start().starts_with("Filter"))
        .expect("a filter");
    let project = text
        .lines()
        .position(|l| l.trim_start().starts_with("Project"))
        .expect("a projection");
    assert!(filter < project, "{text}");
    assert!(
        text.contains("NOT COALESCE((ev#0 = 0), false) AND COALESCE((ev#0 = 1), false)"),
        "{text}"
    );
    assert!(
        !text
            .lines()
            .nth(filter)
            .unwrap_or_default()
            .contains("'view'"),
        "{text}"
    );
}

#[test]
fn jdbc_is_an_upsert_sink_with_a_key_and_never_a_source() {
    let counts = |key: &str| {
        format!(
            "CREATE TABLE clicks (user_id STRING, n INT) WITH ('connector' = 'datagen', 'number-of-rows' = '10');\n\
             CREATE TABLE totals (user_id STRING, total BIGINT{key}) WITH ('connector' = 'jdbc', \
             'url' = 'jdbc:postgresql://127.0.0.1:5432/db', 'table-name' = 'totals');\n\
             INSERT INTO totals SELECT user_id, COUNT(*) FROM clicks GROUP BY user_id;"
        )
    };
    check(&counts(", PRIMARY KEY (user_id) NOT ENFORCED"))
        .expect("an upsert into a keyed jdbc table");
    assert_error(&counts(""), ErrorCode::Unsupported, 3, 13, "no PRIMARY KEY");
    assert_error(
        "CREATE TABLE t (a INT) WITH ('connector' = 'jdbc', 'url' = 'postgres://h/db', 'table-name' = 't');\n\
         CREATE TABLE o (a INT) WITH ('connector' = 'blackhole');\n\
         INSERT INTO o SELECT a FROM t;",
        ErrorCode::BadOption,
        3,
        29,
        "cannot be read",
    );
    assert_error(
        "CREATE TABLE t (a INT) WITH ('connector' = 'jdbc', 'url' = 'postgres://h/db');",
        ErrorCode::BadOption,
        1,
        14,
        "table-name",
    );
}

#[path = "check/dedup_json.rs"]
mod dedup_json;
#[path = "check/join.rs"]
mod join;

//! Deduplication (`ROW_NUMBER() … WHERE rn = 1`) and `JSON_VALUE`: accepted
//! shapes and how they plan; every other ROW_NUMBER use and every JSON_VALUE
//! form outside the subset rejected by name at its line and column.

use sluice_sql::{ErrorCode, Stage, TimeKind, plan};

use super::one_error;

const SRC: &str = "CREATE TABLE ev (\n  user_id STRING,\n  item STRING,\n  v BIGINT,\n  payload STRING,\n  ts TIMESTAMP(3),\n  pt AS PROCTIME(),\n  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND\n) WITH ('connector' = 'datagen');\n\
CREATE TABLE out3 (user_id STRING, item STRING, v BIGINT) WITH ('connector' = 'blackhole');\n\
CREATE TABLE app3 (user_id STRING, item STRING, v BIGINT) WITH ('connector' = 'kafka', 'topic' = 't', 'properties.bootstrap.servers' = 'localhost:9092', 'format' = 'json');\n";

/// 1-based line and column of the first `needle` after the table definitions.
fn pos(sql: &str, needle: &str) -> (u64, u64) {
    let start = SRC.len();
    let at = start
        + sql[start..]
            .find(needle)
            .unwrap_or_else(|| panic!("{needle} not in {sql}"));
    let before = &sql[..at];
    let line = before.matches('\n').count() as u64 + 1;
    let col = before.rsplit('\n').next().unwrap_or("").chars().count() as u64 + 1;
    (line, col)
}

fn rejected(query: &str, code: ErrorCode, at: &str, message: &str) {
    let sql = format!("{SRC}{query}");
    let e = one_error(&sql);
    assert_eq!(e.code, code, "{e}");
    assert_eq!((e.line, e.column), pos(&sql, at), "position of: {e}");
    assert!(
        e.message.contains(message),
        "message {:?} should mention {message:?}",
        e.message
    );
}

fn dedup(order: &str, outer_where: &str) -> String {
    format!(
        "INSERT INTO out3 SELECT user_id, item, v FROM (\n  SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id, item ORDER BY {order}) AS rn FROM ev\n) WHERE {outer_where};"
    )
}

fn planned(query: &str) -> sluice_sql::Pipeline {
    let p = plan(&format!("{SRC}{query}")).unwrap_or_else(|e| panic!("{e:?}"));
    p.pipelines.into_iter().next().expect("a pipeline")
}

fn dedup_stage(p: &sluice_sql::Pipeline) -> (Vec<usize>, usize, TimeKind, bool) {
    let mut found = p.stages.iter().filter_map(|s| match s {
        Stage::Deduplicate {
            keys,
            time,
            time_kind,
            keep_last,
        } => Some((keys.clone(), *time, *time_kind, *keep_last)),
        _ => None,
    });
    found.next().expect("a Deduplicate stage")
}

#[test]
fn keep_first_on_event_time_is_append_only_after_a_hash_exchange() {
    let p = planned(&dedup("ts ASC", "rn = 1"));
    assert!(!p.updating);
    assert_eq!(dedup_stage(&p), (vec![0, 1], 4, TimeKind::Event, false));
    let i = p
        .stages
        .iter()
        .position(|s| matches!(s, Stage::Deduplicate { .. }))
        .expect("dedup");
    assert!(
        matches!(&p.stages[i - 1], Stage::Exchange(sluice_sql::Exchange::Hash { keys }) if keys == &vec![0, 1]),
        "{:?}",
        p.stages
    );
    // `rn <= 1`, `rn < 2` and `1 = rn` keep the first row too; ASC is the default order.
    for w in ["rn <= 1", "rn < 2", "1 = rn"] {
        assert!(!planned(&dedup("ts", w)).updating, "{w}");
    }
}

#[test]
fn keep_last_on_processing_time_is_a_changelog() {
    let q =
        "CREATE TABLE up3 (user_id STRING, item STRING, v BIGINT) WITH ('connector' = 'print');\n"
            .to_string()
            + &dedup("pt DESC", "rn = 1").replace("out3", "up3");
    let p = planned(&q);
    assert!(p.updating);
    assert_eq!(dedup_stage(&p), (vec![0, 1], 5, TimeKind::Processing, true));
    // An append-only sink cannot take it.
    rejected(
        &dedup("pt DESC", "rn = 1").replace("out3", "app3"),
        ErrorCode::Unsupported,
        "app3",
        "append-only",
    );
}

#[test]
fn explain_shows_the_deduplicate_operator() {
    let sql = format!("{SRC}{}", dedup("ts DESC", "rn = 1"));
    let text = plan(&sql).unwrap_or_else(|e| panic!("{e:?}")).to_string();
    assert!(
        text.contains("Exchange hash[#0, #1]\n  Deduplicate keep=last partition=[#0, #1] order=Event-time #4 (changelog)"),
        "{text}"
    );
    assert!(text.contains("(updating)"), "{text}");
}

#[test]
fn subquery_projection_partition_expressions_and_filters_compose() {
    let q = "INSERT INTO out3 SELECT UPPER(u), it, w * 2 FROM (\n  SELECT user_id AS u, item AS it, v + 1 AS w, ROW_NUMBER() OVER (PARTITION BY LOWER(user_id) ORDER BY ts) AS rn\n  FROM ev WHERE v > 0\n) t WHERE rn = 1 AND w > 3;";
    let p = planned(q);
    assert!(!p.updating);
    let (keys, time, _, _) = dedup_stage(&p);
    // The partition key is computed into an extra column after the 6 of the table.
    assert_eq!((keys, time), (vec![6], 4));
    let text = p
        .stages
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("Filter (v#2 > CAST(0 AS BIGINT))"), "{text}");
    // The outer condition runs after the deduplication, on the subquery's expression.
    let dedup_at = text.find("Deduplicate").expect("dedup");
    let outer_filter = text
        .find("Filter ((v#2 + CAST(1 AS BIGINT)) > CAST(3 AS BIGINT))")
        .expect("outer filter");
    assert!(dedup_at < outer_filter, "{text}");
    assert!(text.contains("UPPER(user_id#0) AS user_id"), "{text}");
    assert!(
        text.contains("((v#2 + CAST(1 AS BIGINT)) * CAST(2 AS BIGINT)) AS v"),
        "{text}"
    );
}

#[test]
fn other_row_number_uses_are_rejected_by_name() {
    rejected(
        &dedup("ts", "rn <= 3"),
        ErrorCode::Unsupported,
        "rn <= 3",
        "top-N",
    );
    rejected(
        &dedup("ts", "rn = 2"),
        ErrorCode::Unsupported,
        "rn = 2",
        "only deduplication",
    );
    rejected(
        &dedup("ts", "v > 1"),
        ErrorCode::Unsupported,
        "ROW_NUMBER",
        "without WHERE rn = 1",
    );
    rejected(
        &dedup("v", "rn = 1"),
        ErrorCode::Unsupported,
        "v) AS rn",
        "not a time attribute",
    );
    rejected(
        "INSERT INTO out3 SELECT user_id, item, rn FROM (\n  SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts) AS rn FROM ev\n) WHERE rn = 1;",
        ErrorCode::Unsupported,
        "rn FROM",
        "ROW_NUMBER() result 'rn'",
    );
    rejected(
        "INSERT INTO out3 SELECT * FROM (\n  SELECT user_id, item, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts) AS rn FROM ev\n) WHERE rn = 1;",
        ErrorCode::Unsupported,
        "* FROM",
        "ROW_NUMBER() result 'rn'",
    );
    rejected(
        "INSERT INTO out3 SELECT user_id, item, v FROM (\n  SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts DESC) AS rn FROM ev\n) WHERE rn = 1 AND v > 0;",
        ErrorCode::Unsupported,
        "v > 0",
        "keeping the last row",
    );
    rejected(
        "INSERT INTO out3 SELECT user_id, item, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts) FROM ev;",
        ErrorCode::Unsupported,
        "ROW_NUMBER",
        "outside the deduplication pattern",
    );
    rejected(
        "INSERT INTO out3 SELECT user_id, item, v FROM (SELECT user_id, item, v FROM ev);",
        ErrorCode::Unsupported,
        "SELECT user_id, item, v FROM ev",
        "subquery in FROM",
    );
}

const JSNK: &str =
    "CREATE TABLE j (a STRING, b INT, c DOUBLE, d BOOLEAN) WITH ('connector' = 'blackhole');\n";

#[test]
fn json_value_binds_returning_types_and_clauses() {
    let q = format!(
        "{JSNK}INSERT INTO j SELECT\n  JSON_VALUE(payload, '$.user.name'),\n  JSON_VALUE(payload, '$.items[0][\"n\"]' RETURNING INT DEFAULT -1 ON EMPTY NULL ON ERROR),\n  JSON_VALUE(payload, 'lax $.p' RETURNING DOUBLE ERROR ON ERROR),\n  JSON_VALUE(payload, '$.ok' RETURNING BOOLEAN DEFAULT FALSE ON ERROR)\nFROM ev;"
    );
    let p = planned(&q);
    let text = p.stages.last().map(|s| s.to_string()).unwrap_or_default();
    assert!(
        text.contains(
            "JSON_VALUE(payload#3, '$.user.name' RETURNING STRING NULL ON EMPTY NULL ON ERROR) AS a"
        ),
        "{text}"
    );
    assert!(
        text.contains("RETURNING INT DEFAULT -1 ON EMPTY NULL ON ERROR) AS b"),
        "{text}"
    );
    assert!(
        text.contains("RETURNING DOUBLE NULL ON EMPTY ERROR ON ERROR) AS c"),
        "{text}"
    );
    assert!(
        text.contains("RETURNING BOOLEAN NULL ON EMPTY DEFAULT false ON ERROR) AS d"),
        "{text}"
    );
}

#[test]
fn json_value_in_a_computed_column() {
    let sql = "CREATE TABLE raw (payload STRING,\n  name AS JSON_VALUE(payload, '$.name' DEFAULT 'anon' ON EMPTY ERROR ON ERROR)\n) WITH ('connector' = 'datagen');\n\
               CREATE TABLE names (name STRING) WITH ('connector' = 'blackhole');\n\
               INSERT INTO names SELECT name FROM raw;";
    let text = plan(sql).unwrap_or_else(|e| panic!("{e:?}")).to_string();
    assert!(
        text.contains("JSON_VALUE(payload#0, '$.name' RETURNING STRING DEFAULT 'anon' ON EMPTY ERROR ON ERROR) AS name"),
        "{text}"
    );
    let bad = "CREATE TABLE raw (payload STRING,\n  name AS JSON_VALUE(payload, '$.a[*]')\n) WITH ('connector' = 'datagen');";
    let e = one_error(bad);
    assert_eq!(
        (e.code, e.line, e.column),
        (ErrorCode::Unsupported, 2, 31),
        "{e}"
    );
}

#[test]
fn json_value_outside_the_subset_is_rejected_by_name() {
    let q = |call: &str| format!("{JSNK}INSERT INTO j SELECT {call}, 1, 1.0, true FROM ev;");
    rejected(
        &q("JSON_VALUE(payload, '$.items[*].n')"),
        ErrorCode::Unsupported,
        "'$.items",
        "wildcard",
    );
    rejected(
        &q("JSON_VALUE(payload, 'strict $.a')"),
        ErrorCode::Unsupported,
        "'strict",
        "strict mode",
    );
    rejected(
        &q("JSON_VALUE(payload, '$..a')"),
        ErrorCode::Unsupported,
        "'$..a'",
        "recursive descent",
    );
    rejected(
        &q("JSON_VALUE(payload, item)"),
        ErrorCode::Unsupported,
        "item)",
        "non-literal path",
    );
    rejected(
        &q("JSON_VALUE(payload, '$.a' RETURNING TIMESTAMP(3))"),
        ErrorCode::Unsupported,
        "JSON_VALUE",
        "RETURNING TIMESTAMP(3)",
    );
    rejected(
        &q("JSON_VALUE(payload, '$.a' RETURNING INT DEFAULT 'x' ON EMPTY)"),
        ErrorCode::TypeMismatch,
        "'x'",
        "DEFAULT … ON EMPTY is STRING",
    );
    rejected(
        &q("JSON_VALUE(payload, '$.a' NULL ON EMPTY DEFAULT 'a' ON EMPTY)"),
        ErrorCode::SyntaxError,
        "DEFAULT 'a'",
        "two ON EMPTY clauses",
    );
    rejected(
        &q("JSON_VALUE(v, '$.a')"),
        ErrorCode::TypeMismatch,
        "v, '$.a'",
        "STRING",
    );
    rejected(
        &q("UPPER(payload RETURNING INT)"),
        ErrorCode::Unsupported,
        "UPPER",
        "clauses inside the argument list of UPPER",
    );
}

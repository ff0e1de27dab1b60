//! Interval joins: the accepted forms (comma join with WHERE, JOIN … ON,
//! BETWEEN or two comparisons, either side first) and how they plan; every
//! other join rejected by name at its line and column.

use arrow_schema::DataType;
use sluice_sql::{ErrorCode, Exchange, JoinKind, Stage, plan};

use super::one_error;

const SRC: &str = "CREATE TABLE orders (\n  id BIGINT,\n  user_id STRING,\n  amount INT,\n  order_time TIMESTAMP(3),\n  WATERMARK FOR order_time AS order_time - INTERVAL '5' SECOND\n) WITH ('connector' = 'datagen');\n\
CREATE TABLE shipments (\n  order_id INT,\n  carrier STRING,\n  ship_ms BIGINT,\n  ship_time AS TO_TIMESTAMP_LTZ(ship_ms, 3),\n  WATERMARK FOR ship_time AS ship_time - INTERVAL '1' SECOND\n) WITH ('connector' = 'datagen');\n\
CREATE TABLE plain (id BIGINT, ts TIMESTAMP(3)) WITH ('connector' = 'datagen');\n\
CREATE TABLE out3 (id BIGINT, user_id STRING, carrier STRING) WITH ('connector' = 'blackhole');\n";

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

fn rejected(query: &str, at: &str, message: &str) {
    let sql = format!("{SRC}{query}");
    let e = one_error(&sql);
    assert_eq!(e.code, ErrorCode::Unsupported, "{e}");
    assert_eq!((e.line, e.column), pos(&sql, at), "position of: {e}");
    assert!(
        e.message.contains(message),
        "message {:?} should mention {message:?}",
        e.message
    );
}

/// (left keys, right keys, left time, right time, lower, upper) of the join,
/// the stages of both inputs and the pipeline's stages.
fn join_of(
    query: &str,
) -> (
    Vec<usize>,
    Vec<usize>,
    usize,
    usize,
    i64,
    i64,
    sluice_sql::Pipeline,
) {
    let p = plan(&format!("{SRC}{query}")).unwrap_or_else(|e| panic!("{e:?}"));
    let pipe = p.pipelines[0].clone();
    let j = pipe
        .stages
        .iter()
        .find_map(|s| match s {
            Stage::IntervalJoin {
                left_keys,
                right_keys,
                left_time,
                right_time,
                lower_ms,
                upper_ms,
                ..
            } => Some((
                left_keys.clone(),
                right_keys.clone(),
                *left_time,
                *right_time,
                *lower_ms,
                *upper_ms,
            )),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no join in {:?}", pipe.stages));
    (j.0, j.1, j.2, j.3, j.4, j.5, pipe)
}

#[test]
fn comma_join_with_between_plans_an_interval_join() {
    let (lk, rk, lt, rt, lower, upper, p) = join_of(
        "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o, shipments s\n\
         WHERE o.id = s.order_id AND s.ship_time BETWEEN o.order_time AND o.order_time + INTERVAL '4' HOUR;",
    );
    // order_id INT is widened to BIGINT on the right, appended as a key column.
    assert_eq!(lk, vec![0]);
    assert_eq!(rk, vec![4]);
    assert_eq!((lt, rt), (3, 3));
    // o.t - s.t in [-4 h, 0].
    assert_eq!((lower, upper), (-4 * 3_600_000, 0));
    assert_eq!(p.source, "orders");
    let right = p.right.as_ref().expect("right input");
    assert_eq!(right.source, "shipments");
    match right.stages.last() {
        Some(Stage::Exchange(Exchange::Hash { keys })) => assert_eq!(keys, &vec![4]),
        other => panic!("right input must end in a hash exchange, got {other:?}"),
    }
    let key_project = right.stages.iter().rev().nth(1);
    match key_project {
        Some(Stage::Project { exprs, .. }) => {
            assert_eq!(exprs.len(), 5);
            assert_eq!(exprs[4].data_type(), DataType::Int64);
        }
        other => panic!("expected the key projection, got {other:?}"),
    }
    assert!(!p.updating);
}

#[test]
fn join_on_with_strict_bounds_either_way_round() {
    let (lk, rk, _, _, lower, upper, p) = join_of(
        "INSERT INTO out3 SELECT o.id, user_id, carrier FROM orders AS o JOIN shipments AS s\n\
         ON s.order_id = o.id AND o.order_time >= s.ship_time - INTERVAL '10' SECOND\n\
         AND s.ship_time + INTERVAL '1' MINUTE > o.order_time WHERE o.amount > 3 AND s.carrier <> o.user_id;",
    );
    assert_eq!((lk.len(), rk.len()), (1, 1));
    // o.t >= s.t - 10 s, o.t < s.t + 60 s: strict bounds are 1 ms inside.
    assert_eq!((lower, upper), (-10_000, 59_999));
    // The other conjuncts filter the joined rows.
    let filter = p
        .stages
        .iter()
        .skip_while(|s| !matches!(s, Stage::IntervalJoin { .. }))
        .find(|s| matches!(s, Stage::Filter { .. }));
    assert!(filter.is_some(), "{:?}", p.stages);
    let text = sluice_sql::plan(&format!(
        "{SRC}INSERT INTO out3 SELECT o.id, user_id, carrier FROM orders o JOIN shipments s ON o.id = s.order_id AND o.order_time BETWEEN s.ship_time - INTERVAL '1' SECOND AND s.ship_time;"
    ))
    .unwrap_or_else(|e| panic!("{e:?}"))
    .to_string();
    assert!(text.contains("Right input: Source shipments"), "{text}");
    assert!(text.contains("IntervalJoin inner"), "{text}");
}

#[test]
fn select_star_and_self_join_with_aliases() {
    let sql = format!(
        "{SRC}CREATE TABLE pairs (a BIGINT, at TIMESTAMP(3), b BIGINT, bt TIMESTAMP(3)) WITH ('connector' = 'blackhole');\n\
         INSERT INTO pairs SELECT * FROM plain2 x, plain2 y WHERE x.id = y.id AND x.ts BETWEEN y.ts - INTERVAL '1' SECOND AND y.ts;"
    )
    .replace(
        "CREATE TABLE plain (id BIGINT, ts TIMESTAMP(3)) WITH ('connector' = 'datagen');",
        "CREATE TABLE plain (id BIGINT, ts TIMESTAMP(3)) WITH ('connector' = 'datagen');\nCREATE TABLE plain2 (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('connector' = 'datagen');",
    );
    let p = plan(&sql).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(p.pipelines[0].output.len(), 4);
    assert_eq!(
        p.pipelines[0].right.as_ref().map(|r| r.source.as_str()),
        Some("plain2")
    );
}

#[test]
fn regular_join_without_time_bounds_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o\nJOIN shipments s ON o.id = s.order_id;",
        "shipments s",
        "regular join",
    );
}

#[test]
fn join_with_only_one_time_bound_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o, shipments s\nWHERE o.id = s.order_id AND s.ship_time >= o.order_time;",
        "shipments s",
        "regular join",
    );
}

#[test]
fn join_without_equality_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o JOIN shipments s\nON s.ship_time BETWEEN o.order_time AND o.order_time + INTERVAL '1' HOUR;",
        "shipments s",
        "without an equality predicate",
    );
}

#[test]
fn outer_joins_plan_with_their_kind_and_where_after_the_join() {
    for (op, kind) in [
        ("LEFT", JoinKind::LeftOuter),
        ("LEFT OUTER", JoinKind::LeftOuter),
        ("RIGHT", JoinKind::RightOuter),
        ("RIGHT OUTER", JoinKind::RightOuter),
        ("FULL OUTER", JoinKind::FullOuter),
    ] {
        let (_, _, _, _, lower, upper, p) = join_of(&format!(
            "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o\n{op} JOIN shipments s ON o.id = s.order_id AND s.ship_time BETWEEN o.order_time AND o.order_time + INTERVAL '1' HOUR\nWHERE s.carrier IS NULL OR o.amount > 2;"
        ));
        assert_eq!((lower, upper), (-3_600_000, 0));
        let got = p.stages.iter().find_map(|s| match s {
            Stage::IntervalJoin { kind, .. } => Some(*kind),
            _ => None,
        });
        assert_eq!(got, Some(kind), "{op}");
        // WHERE filters the joined and padded rows, after the join.
        let after = p
            .stages
            .iter()
            .skip_while(|s| !matches!(s, Stage::IntervalJoin { .. }))
            .filter(|s| matches!(s, Stage::Filter { .. }))
            .count();
        assert_eq!(after, 1, "{op}: {:?}", p.stages);
        assert!(!p.updating, "outer interval joins are append-only");
    }
}

#[test]
fn outer_join_with_another_condition_in_on_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o\nLEFT JOIN shipments s ON o.id = s.order_id AND s.carrier <> 'x' AND s.ship_time BETWEEN o.order_time AND o.order_time + INTERVAL '1' HOUR;",
        "s.carrier <> 'x'",
        "ON clause of a LEFT OUTER interval join",
    );
}

#[test]
fn outer_join_without_time_bounds_in_on_is_a_regular_join() {
    // Bounds in WHERE do not bound an outer join: they filter its output.
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o\nFULL OUTER JOIN shipments s ON o.id = s.order_id\nWHERE s.ship_time BETWEEN o.order_time AND o.order_time + INTERVAL '1' HOUR;",
        "shipments s",
        "regular join",
    );
}

#[test]
fn cross_join_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o\nCROSS JOIN shipments s;",
        "shipments s",
        "CROSS JOIN",
    );
}

#[test]
fn join_using_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, 'x' FROM orders o\nJOIN orders p USING (id);",
        "orders p",
        "USING",
    );
}

#[test]
fn three_way_join_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o\nJOIN shipments s ON o.id = s.order_id\nJOIN shipments t ON o.id = t.order_id;",
        "shipments t",
        "more than two tables",
    );
}

#[test]
fn join_with_a_table_without_watermark_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, 'x' FROM orders o, plain p\nWHERE o.id = p.id AND p.ts BETWEEN o.order_time AND o.order_time + INTERVAL '1' SECOND;",
        "plain p",
        "no event-time attribute",
    );
}

#[test]
fn join_of_a_subquery_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, 'x' FROM orders o\nJOIN (SELECT * FROM shipments) s ON o.id = s.order_id;",
        "SELECT * FROM shipments",
        "subquery",
    );
}

#[test]
fn aggregation_over_a_join_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, CAST(COUNT(*) AS STRING) FROM orders o, shipments s\nWHERE o.id = s.order_id AND s.ship_time BETWEEN o.order_time AND o.order_time + INTERVAL '1' HOUR\nGROUP BY o.id, o.user_id;",
        "o.id, o.user_id;",
        "GROUP BY over a join",
    );
}

#[test]
fn ambiguous_and_wrongly_qualified_columns_are_located() {
    let q = "INSERT INTO out3 SELECT id, o.user_id, s.carrier FROM orders o, orders s\nWHERE o.id = s.id AND s.order_time BETWEEN o.order_time AND o.order_time + INTERVAL '1' HOUR;";
    let sql = format!("{SRC}{q}").replace("s.carrier", "s.user_id");
    let e = one_error(&sql);
    assert_eq!(e.code, ErrorCode::UnknownColumn, "{e}");
    assert!(e.message.contains("ambiguous"), "{e}");
    assert_eq!((e.line, e.column), pos(&sql, "id, o.user_id"), "{e}");

    let sql = format!(
        "{SRC}INSERT INTO out3 SELECT o.id, x.user_id, s.carrier FROM orders o, shipments s\nWHERE o.id = s.order_id AND s.ship_time BETWEEN o.order_time AND o.order_time + INTERVAL '1' HOUR;"
    );
    let e = one_error(&sql);
    assert_eq!(e.code, ErrorCode::UnknownColumn, "{e}");
    assert!(e.message.contains("'x.user_id'"), "{e}");
}

#[test]
fn empty_time_interval_is_rejected() {
    rejected(
        "INSERT INTO out3 SELECT o.id, o.user_id, s.carrier FROM orders o, shipments s\nWHERE o.id = s.order_id AND o.order_time > s.ship_time AND o.order_time < s.ship_time;",
        "shipments s",
        "empty",
    );
}

#[test]
fn join_with_an_upsert_table_is_rejected() {
    let sql = format!(
        "{SRC}CREATE TABLE users (id BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts, PRIMARY KEY (id) NOT ENFORCED) WITH ('connector' = 'upsert-kafka', 'topic' = 'u', 'properties.bootstrap.servers' = 'localhost:9092', 'key.format' = 'json', 'value.format' = 'json');\n\
         INSERT INTO out3 SELECT o.id, o.user_id, 'x' FROM orders o JOIN users u ON o.id = u.id AND u.ts BETWEEN o.order_time AND o.order_time + INTERVAL '1' HOUR;"
    );
    let e = one_error(&sql);
    assert_eq!(e.code, ErrorCode::Unsupported, "{e}");
    assert!(e.message.contains("changelog"), "{e}");
    assert_eq!((e.line, e.column), pos(&sql, "users u ON"), "{e}");
}

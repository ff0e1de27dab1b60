//! Interval joins through the `sluice-engine` binary: `explain` shows the
//! join and its right input; `run` in one process at parallelism 1 and 2, and
//! a JobManager with two TaskManagers (the join's two inputs cross between
//! them over TCP), write exactly the joined rows of two JSON-file tables.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::Value;
use sluice_connectors::filesystem::committed_files;
use sluice_test_support::process::stop_owned;

use crate::cluster::{JmOpts, TmOpts, engine, job_id, start_jm, start_tm_with};

const ORDERS: u64 = 300;

/// Order `i` at `i` seconds; its shipment `(i * 7 % 15)` seconds later, the
/// shipments file out of order by up to 15 s (its watermark trails by 20 s).
fn write_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let (orders, shipments) = (dir.join("orders"), dir.join("shipments"));
    std::fs::create_dir_all(&orders).expect("mkdir");
    std::fs::create_dir_all(&shipments).expect("mkdir");
    // One file per table: the filesystem source reads a subtask's files one
    // after the other, so a second file would start behind the first's watermark.
    {
        let o: Vec<String> = (0..ORDERS)
            .map(|i| {
                format!(
                    r#"{{"id":{i},"user_id":"u{}","order_ms":{}}}"#,
                    i % 7,
                    i * 1000
                )
            })
            .collect();
        std::fs::write(orders.join("part-0.json"), o.join("\n") + "\n").expect("write orders");
        // In id order: a later row may be an earlier shipment (by up to 14 s).
        let s: Vec<String> = (0..ORDERS)
            .map(|i| {
                let ship = i * 1000 + (i * 7 % 15) * 1000;
                format!(r#"{{"order_id":{i},"ship_ms":{ship}}}"#)
            })
            .collect();
        std::fs::write(shipments.join("part-0.json"), s.join("\n") + "\n")
            .expect("write shipments");
    }
    (orders, shipments)
}

const INNER: &str = "FROM orders o, shipments s\nWHERE o.id = s.order_id AND s.ship_time BETWEEN o.order_time AND o.order_time + INTERVAL '10' SECOND";
const LEFT: &str = "FROM orders o LEFT JOIN shipments s\nON o.id = s.order_id AND s.ship_time BETWEEN o.order_time AND o.order_time + INTERVAL '10' SECOND";

fn write_job(dir: &Path, out: &Path) -> PathBuf {
    write_join(dir, out, INNER)
}

fn write_join(dir: &Path, out: &Path, from: &str) -> PathBuf {
    let (orders, shipments) = write_inputs(dir);
    let job = dir.join(format!(
        "join-{}.sql",
        out.file_name().and_then(|f| f.to_str()).unwrap_or("x")
    ));
    std::fs::write(
        &job,
        format!(
            "CREATE TABLE orders (id BIGINT, user_id STRING, order_ms BIGINT,\n  order_time AS TO_TIMESTAMP_LTZ(order_ms, 3),\n  WATERMARK FOR order_time AS order_time - INTERVAL '1' SECOND\n) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\n\
             CREATE TABLE shipments (order_id BIGINT, ship_ms BIGINT,\n  ship_time AS TO_TIMESTAMP_LTZ(ship_ms, 3),\n  WATERMARK FOR ship_time AS ship_time - INTERVAL '20' SECOND\n) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\n\
             CREATE TABLE shipped (id BIGINT, user_id STRING, ship_ms BIGINT)\n  WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\n\
             INSERT INTO shipped\nSELECT o.id, o.user_id, s.ship_ms {from};\n",
            orders.display(),
            shipments.display(),
            out.display()
        ),
    )
    .expect("write job");
    job
}

/// Orders shipped within 10 s: `(id, user, ship_ms)`.
fn expected() -> Vec<(u64, String, u64)> {
    (0..ORDERS)
        .filter(|i| i * 7 % 15 <= 10)
        .map(|i| (i, format!("u{}", i % 7), i * 1000 + (i * 7 % 15) * 1000))
        .collect()
}

/// Every order, with its shipment if it came within 10 s.
fn expected_left() -> Vec<(u64, String, Option<u64>)> {
    (0..ORDERS)
        .map(|i| {
            let d = i * 7 % 15;
            (
                i,
                format!("u{}", i % 7),
                (d <= 10).then_some(i * 1000 + d * 1000),
            )
        })
        .collect()
}

fn output_left(out: &Path) -> Vec<(u64, String, Option<u64>)> {
    let mut rows = Vec::new();
    for f in committed_files(out).expect("list output") {
        for line in std::fs::read_to_string(&f).expect("read").lines() {
            let v: Value = serde_json::from_str(line).expect("output JSON");
            rows.push((
                v["id"].as_u64().expect("id"),
                v["user_id"].as_str().expect("user_id").to_string(),
                v["ship_ms"].as_u64(),
            ));
        }
    }
    rows.sort();
    rows
}

fn output(out: &Path) -> Vec<(u64, String, u64)> {
    let mut rows = Vec::new();
    for f in committed_files(out).expect("list output") {
        for line in std::fs::read_to_string(&f).expect("read").lines() {
            let v: Value = serde_json::from_str(line).expect("output JSON");
            rows.push((
                v["id"].as_u64().expect("id"),
                v["user_id"].as_str().expect("user_id").to_string(),
                v["ship_ms"].as_u64().expect("ship_ms"),
            ));
        }
    }
    rows.sort();
    rows
}

#[test]
fn explain_shows_the_interval_join_and_its_right_input() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = write_job(dir.path(), &dir.path().join("out"));
    let out = engine()
        .args(["explain", &job.to_string_lossy(), "-p", "2"])
        .stdout(Stdio::piped())
        .output()
        .expect("sluice-engine explain");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Right input: Source shipments [filesystem]",
        "IntervalJoin inner keys=[#0] = right[#0] right.#2 + -10000 ms <= #3 <= right.#2 + 0 ms",
    ] {
        assert!(text.contains(needle), "{needle:?} not in:\n{text}");
    }
}

#[test]
fn run_joins_json_files_at_parallelism_1_and_2() {
    let want = expected();
    assert_eq!(want.len(), 220);
    for p in [1, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let summary = crate::run_engine(&write_job(dir.path(), &out), p);
        assert_eq!(summary["pipelines"][0]["late_dropped"], 0, "{summary}");
        assert_eq!(output(&out), want, "parallelism {p}");
    }
}

#[test]
fn run_left_outer_join_pads_orders_without_shipment() {
    let want = expected_left();
    assert_eq!(want.iter().filter(|r| r.2.is_none()).count(), 80);
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let summary = crate::run_engine(&write_join(dir.path(), &out, LEFT), 2);
    assert_eq!(summary["pipelines"][0]["late_dropped"], 0, "{summary}");
    assert_eq!(output_left(&out), want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_taskmanagers_run_the_join_across_tcp() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().join("out");
    let job = write_job(dir.path(), &out);
    let id = job_id();
    let ckpt = format!("file://{}/job", dir.path().display());
    let jm = start_jm(
        dir.path(),
        &job,
        &id,
        &ckpt,
        JmOpts {
            interval_ms: 100,
            ..JmOpts::default()
        },
    )
    .await;
    let a = start_tm_with(&jm.rpc, "a", 1, dir.path(), TmOpts::default());
    let b = start_tm_with(&jm.rpc, "b", 1, dir.path(), TmOpts::default());
    jm.wait_state(&id, "FINISHED").await;
    assert_eq!(output(&out), expected());
    let j = jm.get(&format!("/jobs/{id}")).await;
    let vertices = j["vertices"].as_array().expect("vertices");
    assert_eq!(vertices.len(), 3, "two sources and the join: {j}");
    let join = j["plan"]["nodes"].as_array().and_then(|n| {
        n.iter()
            .find(|v| v["inputs"].as_array().is_some_and(|i| i.len() == 2))
    });
    assert!(join.is_some(), "the join vertex has two inputs: {j}");
    for pid in [a, b, jm.pid] {
        stop_owned(pid);
    }
}

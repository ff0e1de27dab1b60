//! Interval joins: golden operator tests (SQL + rows of both inputs +
//! watermarks → joined rows, fed in a fixed order so bounds, out-of-order and
//! late rows have deterministic outcomes), and whole jobs through the task
//! layer (two source vertices feeding one two-input vertex over hash
//! exchanges) at parallelism 1 and 2 on both state backends, and restored from
//! a mid-way checkpoint at another parallelism.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use sluice_runtime::connector::physical_schema;
use sluice_runtime::operator::{Chain, VecCollector};
use sluice_runtime::{JobConfig, MAX_WATERMARK, build_operators};
use sluice_sql::Stage;

const TABLES: &str = "CREATE TABLE l (k STRING, v BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts - INTERVAL '1' SECOND) WITH ('connector' = 'datagen');
CREATE TABLE r (k STRING, w BIGINT, ts TIMESTAMP(3), WATERMARK FOR ts AS ts) WITH ('connector' = 'datagen');
CREATE TABLE out4 (k STRING, v BIGINT, w BIGINT, lt TIMESTAMP(3), rt TIMESTAMP(3)) WITH ('connector' = 'blackhole');
";

enum In {
    Left(Vec<(&'static str, i64, i64)>),
    Right(Vec<(&'static str, i64, i64)>),
    Watermark(i64),
}

use In::{Left, Right, Watermark};

struct Out {
    rows: Vec<String>,
    watermarks: Vec<i64>,
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

fn batch(schema: &arrow_schema::SchemaRef, rows: &[(&str, i64, i64)]) -> RecordBatch {
    let k: ArrayRef = Arc::new(StringArray::from(
        rows.iter().map(|r| r.0).collect::<Vec<_>>(),
    ));
    let v: ArrayRef = Arc::new(Int64Array::from(
        rows.iter().map(|r| r.1).collect::<Vec<_>>(),
    ));
    let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(
        rows.iter().map(|r| r.2).collect::<Vec<_>>(),
    ));
    RecordBatch::try_new(schema.clone(), vec![k, v, ts]).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs the join's vertex (its first operator is the join: the inputs have
/// no computed columns) over `input`, then the end of input.
fn run(query: &str, input: Vec<In>) -> Out {
    let plan =
        sluice_sql::plan(&format!("{TABLES}{query}")).unwrap_or_else(|e| panic!("plan: {e:?}"));
    let p = &plan.pipelines[0];
    let right = p.right.as_ref().expect("a join pipeline");
    // The right input runs no operator before its exchange.
    assert!(
        right
            .stages
            .iter()
            .all(|s| matches!(s, Stage::AssignWatermark { .. } | Stage::Exchange(_))),
        "{:?}",
        right.stages
    );
    let (ls, rs) = (
        physical_schema(&plan.tables[&p.source]),
        physical_schema(&plan.tables[&right.source]),
    );
    let late = Arc::new(AtomicU64::new(0));
    let (ops, _) = build_operators(&p.stages, ls.clone(), 0, 1, &JobConfig::new(1), &late)
        .unwrap_or_else(|e| panic!("build: {e}"));
    assert!(
        ops[0].name().starts_with("IntervalJoin"),
        "{}",
        ops[0].name()
    );
    let mut chain = Chain::new(ops);
    let mut out = VecCollector::default();
    for i in input {
        match i {
            Left(rows) => chain
                .process_input(0, batch(&ls, &rows), &mut out)
                .unwrap_or_else(|e| panic!("left: {e}")),
            Right(rows) => chain
                .process_input(1, batch(&rs, &rows), &mut out)
                .unwrap_or_else(|e| panic!("right: {e}")),
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
        for r in 0..b.num_rows() {
            let vals: Vec<String> = (0..b.num_columns()).map(|c| cell(b.column(c), r)).collect();
            rows.push(format!("+I[{}]", vals.join(", ")));
        }
    }
    Out {
        rows,
        watermarks: out.watermarks,
        late: late.load(Ordering::Relaxed),
    }
}

const BETWEEN: &str = "INSERT INTO out4 SELECT a.k, a.v, b.w, a.ts, b.ts FROM l a, r b
WHERE a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND;";

#[test]
fn inner_join_within_bounds_out_of_order_and_late_rows() {
    // a.ts - b.ts in [-2000, 1000]: the output watermark is held back 2 s.
    let o = run(
        BETWEEN,
        vec![
            Left(vec![("k1", 1, 10_000), ("k2", 2, 10_000)]),
            Right(vec![
                ("k1", 10, 11_000), // -1000: joins (k1, 1)
                ("k1", 11, 12_500), // -2500: outside
                ("k2", 20, 9_000),  // +1000: on the bound, joins (k2, 2)
                ("k2", 21, 8_999),  // +1001: outside
                ("k3", 30, 10_000), // no left row with k3
            ]),
            Watermark(9_500),
            // Behind k1's 10 000 but ahead of the watermark: joins 11 000 only.
            Left(vec![("k1", 3, 9_600)]),
            // At or behind the watermark: late, dropped.
            Left(vec![("k1", 4, 9_400)]),
            Right(vec![("k1", 12, 9_500)]),
            Watermark(13_000),
            // 12 500 is still kept (until 13 500): it joins.
            Left(vec![("k1", 5, 13_100), ("k2", 6, 13_100)]),
        ],
    );
    assert_eq!(
        o.rows,
        [
            "+I[k1, 1, 10, 00:00:10.000, 00:00:11.000]",
            "+I[k2, 2, 20, 00:00:10.000, 00:00:09.000]",
            "+I[k1, 3, 10, 00:00:09.600, 00:00:11.000]",
            "+I[k1, 5, 11, 00:00:13.100, 00:00:12.500]",
        ]
    );
    assert_eq!(o.late, 2);
    assert_eq!(o.watermarks, [7_500, 11_000, MAX_WATERMARK]);
}

#[test]
fn join_on_with_strict_bounds_duplicates_and_a_residual_filter() {
    // a.ts >= b.ts and a.ts < b.ts + 1 s: a.ts - b.ts in [0, 999].
    let o = run(
        "INSERT INTO out4 SELECT a.k, a.v, b.w, a.ts, b.ts FROM l AS a JOIN r AS b
ON b.k = a.k AND a.ts >= b.ts AND a.ts < b.ts + INTERVAL '1' SECOND WHERE a.v + b.w < 95;",
        vec![
            Right(vec![
                ("k1", 10, 5_000),
                ("k1", 10, 5_000), // the same row twice: joins twice
                ("k1", 90, 5_000), // 1 + 90 < 95 but 7 + 90 is not
                ("k2", 10, 5_000),
            ]),
            Left(vec![
                ("k1", 1, 5_999), // on the upper bound
                ("k1", 2, 6_000), // 1 ms outside
                ("k1", 7, 5_000), // on the lower bound
                ("k1", 8, 4_999), // 1 ms outside
                ("k2", 3, 5_500),
            ]),
        ],
    );
    assert_eq!(
        o.rows,
        [
            "+I[k1, 1, 10, 00:00:05.999, 00:00:05.000]",
            "+I[k1, 1, 10, 00:00:05.999, 00:00:05.000]",
            "+I[k1, 1, 90, 00:00:05.999, 00:00:05.000]",
            "+I[k1, 7, 10, 00:00:05.000, 00:00:05.000]",
            "+I[k1, 7, 10, 00:00:05.000, 00:00:05.000]",
            "+I[k2, 3, 10, 00:00:05.500, 00:00:05.000]",
        ]
    );
    assert_eq!(o.late, 0);
    // Held back by max(-lower, upper) = 999 ms.
    assert_eq!(o.watermarks, [MAX_WATERMARK]);
}

fn outer(kind: &str) -> Out {
    run(
        &format!(
            "INSERT INTO out4 SELECT a.k, a.v, b.w, a.ts, b.ts FROM l a {kind} JOIN r b
ON a.k = b.k AND b.ts BETWEEN a.ts - INTERVAL '1' SECOND AND a.ts + INTERVAL '2' SECOND;"
        ),
        vec![
            Left(vec![
                ("k1", 1, 10_000),
                ("k2", 2, 10_000),
                ("k3", 3, 10_000),
            ]),
            // (k1, 10) joins (k1, 1); (k4, 40) joins nothing.
            Right(vec![("k1", 10, 11_000), ("k4", 40, 10_000)]),
            // Left rows are kept until t + 2 s, right rows until t + 1 s: all
            // of them go now, the unmatched ones of a padded side with NULLs,
            // before the watermark (12 500 - 2 000) is passed on.
            Watermark(12_500),
            // Late: dropped, not padded.
            Left(vec![("k5", 5, 9_000)]),
            // Never matched: padded at the end of input.
            Left(vec![("k1", 6, 13_000)]),
        ],
    )
}

#[test]
fn left_outer_join_pads_unmatched_left_rows_when_their_interval_passed() {
    let o = outer("LEFT");
    assert_eq!(
        o.rows,
        [
            "+I[k1, 1, 10, 00:00:10.000, 00:00:11.000]",
            "+I[k2, 2, NULL, 00:00:10.000, NULL]",
            "+I[k3, 3, NULL, 00:00:10.000, NULL]",
            "+I[k1, 6, NULL, 00:00:13.000, NULL]",
        ]
    );
    assert_eq!(o.late, 1);
    assert_eq!(o.watermarks, [10_500, MAX_WATERMARK]);
}

#[test]
fn right_and_full_outer_joins_pad_their_sides() {
    let o = outer("RIGHT OUTER");
    assert_eq!(
        o.rows,
        [
            "+I[k1, 1, 10, 00:00:10.000, 00:00:11.000]",
            "+I[NULL, NULL, 40, NULL, 00:00:10.000]",
        ]
    );
    let o = outer("FULL OUTER");
    assert_eq!(
        o.rows,
        [
            "+I[k1, 1, 10, 00:00:10.000, 00:00:11.000]",
            "+I[k2, 2, NULL, 00:00:10.000, NULL]",
            "+I[k3, 3, NULL, 00:00:10.000, NULL]",
            "+I[NULL, NULL, 40, NULL, 00:00:10.000]",
            "+I[k1, 6, NULL, 00:00:13.000, NULL]",
        ]
    );
    assert_eq!(o.late, 1);
}

/// Whole jobs: a self-join of the deterministic checkpoint-test source,
/// checked against the pairs computed directly from that source.
mod jobs {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use sluice_blob::checkpoint::CheckpointStore;
    use sluice_blob::{BlobPath, BlobStore, FsStore};
    use sluice_runtime::coordinator::CheckpointConfig;
    use sluice_runtime::task::local::{LocalCheckpointing, LocalOptions, run_local};
    use sluice_runtime::task::{CheckpointingMode, JobGraph, RestoreSnapshot};
    use sluice_runtime::{JobConfig, MetricsRegistry, StateFactory, memory_state};
    use sluice_state::KeyedStateBackend;

    use super::super::testconn::{self, Committed, SPLITS, SRC, SourceOptions, materialize};

    const ROWS: usize = 300;

    const JOIN: &str = "
CREATE TABLE pairs (user_id STRING, a BIGINT, b BIGINT, a_ms BIGINT, b_ms BIGINT) WITH ('connector' = 'print');
INSERT INTO pairs SELECT x.user_id, x.v, y.v, x.ts_ms, y.ts_ms FROM src x JOIN src y
  ON x.user_id = y.user_id AND y.ts BETWEEN x.ts - INTERVAL '200' MILLISECOND AND x.ts + INTERVAL '100' MILLISECOND
  WHERE x.v <> y.v;
";

    fn oracle() -> Vec<String> {
        let rows: Vec<(String, i64, i64)> = (0..SPLITS)
            .flat_map(|s| (0..ROWS).map(move |j| testconn::row(s, j)))
            .collect();
        let mut out = Vec::new();
        for x in &rows {
            for y in &rows {
                let d = y.2 - x.2;
                if x.0 == y.0 && (-200..=100).contains(&d) && x.1 != y.1 {
                    out.push(format!("[{}, {}, {}, {}, {}]", x.0, x.1, y.1, x.2, y.2));
                }
            }
        }
        out.sort();
        out
    }

    fn rocksdb(dir: &std::path::Path) -> StateFactory {
        let dir = dir.to_path_buf();
        Arc::new(move |max_parallelism, range| {
            let b = sluice_state_rocksdb::RocksDbBackend::open_temp(
                Some(&dir),
                max_parallelism,
                range,
                sluice_state_rocksdb::RocksDbConfig::default(),
            )
            .map_err(|e| sluice_runtime::RuntimeError::State {
                context: "rocksdb".into(),
                source: e,
            })?;
            Ok(Box::new(b) as Box<dyn KeyedStateBackend>)
        })
    }

    fn store(
        rt: &tokio::runtime::Runtime,
        dir: &std::path::Path,
        generation: u64,
    ) -> CheckpointStore {
        rt.block_on(async {
            let fs: Arc<dyn BlobStore> = Arc::new(FsStore::open(dir).await.expect("fs store"));
            let s = CheckpointStore::new(fs, BlobPath::new("jobs/j1").expect("root"), generation)
                .expect("checkpoint store");
            s.claim().await.expect("claim");
            s
        })
    }

    /// Left outer: every row with the rows of its key 5 to 100 ms after it,
    /// or alone (itself excluded by the 5 ms).
    const OUTER: &str = "
CREATE TABLE pairs (user_id STRING, a BIGINT, b BIGINT, a_ms BIGINT, b_ms BIGINT) WITH ('connector' = 'print');
INSERT INTO pairs SELECT x.user_id, x.v, y.v, x.ts_ms, y.ts_ms FROM src x LEFT JOIN src y
  ON x.user_id = y.user_id AND y.ts BETWEEN x.ts + INTERVAL '5' MILLISECOND AND x.ts + INTERVAL '100' MILLISECOND;
";

    fn outer_oracle() -> Vec<String> {
        let rows: Vec<(String, i64, i64)> = (0..SPLITS)
            .flat_map(|s| (0..ROWS).map(move |j| testconn::row(s, j)))
            .collect();
        let mut out = Vec::new();
        for x in &rows {
            let before = out.len();
            for y in &rows {
                let d = y.2 - x.2;
                if x.0 == y.0 && (5..=100).contains(&d) {
                    out.push(format!("[{}, {}, {}, {}, {}]", x.0, x.1, y.1, x.2, y.2));
                }
            }
            if out.len() == before {
                out.push(format!("[{}, {}, NULL, {}, NULL]", x.0, x.1, x.2));
            }
        }
        out.sort();
        out
    }

    fn run(
        parallelism: usize,
        state: StateFactory,
        checkpointing: Option<(CheckpointStore, u64)>,
        restore: Option<RestoreSnapshot>,
        seed: Committed,
        sql: &str,
    ) -> Committed {
        let committed = Arc::new(Mutex::new(seed));
        let source = SourceOptions {
            rows_per_split: ROWS,
            // Small batches: enough polls (5 ms apart) for several checkpoints.
            batch: 5,
            pause: Duration::from_millis(if checkpointing.is_some() { 5 } else { 0 }),
        };
        let connectors = testconn::connectors(source, committed.clone(), None);
        let mut cfg = JobConfig::new(parallelism);
        cfg.state = state;
        let plan =
            sluice_sql::plan(&format!("{SRC}{sql}")).unwrap_or_else(|e| panic!("plan: {e:?}"));
        run_local(
            &plan,
            &connectors,
            &cfg,
            LocalOptions {
                job_id: "j1".into(),
                checkpointing: checkpointing.map(|(store, interval_ms)| LocalCheckpointing {
                    store,
                    config: CheckpointConfig {
                        interval_ms,
                        min_pause_ms: 0,
                        timeout_ms: 30_000,
                        retain_last: 1000,
                        mode: CheckpointingMode::ExactlyOnce,
                    },
                }),
                restore,
                ..Default::default()
            },
            &MetricsRegistry::new(),
        )
        .unwrap_or_else(|e| panic!("run: {e}"));
        drop(connectors);
        std::mem::take(&mut *committed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Equal as multisets; on a difference, says how and shows a few rows.
    fn assert_same(got: &[String], want: &[String], what: &str) {
        if got == want {
            return;
        }
        let (mut missing, mut extra) = (Vec::new(), Vec::new());
        let (mut i, mut j) = (0, 0);
        while i < got.len() || j < want.len() {
            match (got.get(i), want.get(j)) {
                (Some(g), Some(w)) if g == w => {
                    i += 1;
                    j += 1;
                }
                (Some(g), w) if w.is_none_or(|w| g < w) => {
                    extra.push(g);
                    i += 1;
                }
                (_, Some(w)) => {
                    missing.push(w);
                    j += 1;
                }
                _ => break,
            }
        }
        panic!(
            "{what}: {} rows, {} expected; {} missing (first {:?}), {} extra (first {:?})",
            got.len(),
            want.len(),
            missing.len(),
            &missing[..missing.len().min(5)],
            extra.len(),
            &extra[..extra.len().min(5)]
        );
    }

    fn pairs(c: &Committed) -> Vec<String> {
        let rows = c.rows("-pairs", None);
        assert!(rows.iter().all(|r| r.starts_with("+I")), "append-only");
        materialize(&rows)
    }

    #[test]
    fn join_vertex_has_two_inputs_on_consecutive_channels() {
        let plan =
            sluice_sql::plan(&format!("{SRC}{JOIN}")).unwrap_or_else(|e| panic!("plan: {e:?}"));
        for p in [1, 2] {
            let mut g = JobGraph::new(&plan, p, 128).unwrap_or_else(|e| panic!("graph: {e}"));
            // Left source, right source, then the join (with the sink chained).
            assert_eq!(g.vertices.len(), 3, "parallelism {p}");
            assert_eq!(g.source_subtasks().len(), 2 * p);
            if p == 2 {
                g.set_parallelism(1, 3).unwrap_or_else(|e| panic!("{e}"));
            }
            let join = &g.vertices[2];
            assert_eq!(join.input.as_ref().map(|i| i.upstream), Some(0));
            assert_eq!(join.side_input.as_ref().map(|i| i.upstream), Some(1));
            let right_p = g.vertices[1].parallelism;
            assert_eq!(g.input_channels(2), p + right_p);
            assert_eq!(g.side_input_channel(2), Some(p));
            assert_eq!(g.output_channel(0, p - 1), p - 1);
            assert_eq!(g.output_channel(1, 0), p);
            assert_eq!(g.input_sources(2).last().copied(), Some((1, right_p - 1)));
            assert_eq!(join.stateful_operator_uids().len(), 1);
            assert_ne!(
                g.vertices[0].source.as_ref().map(|s| s.uid.clone()),
                g.vertices[1].source.as_ref().map(|s| s.uid.clone()),
                "a self-join's two sources need their own positions"
            );
        }
    }

    #[test]
    fn parallel_jobs_join_every_pair_on_both_backends() {
        let expected = oracle();
        assert!(expected.len() > 500, "{} pairs", expected.len());
        let rocks = tempfile::tempdir().expect("rocksdb dir");
        for p in [1, 2] {
            let c = run(p, memory_state(), None, None, Committed::default(), JOIN);
            assert_same(&pairs(&c), &expected, &format!("memory, parallelism {p}"));
            let c = run(
                p,
                rocksdb(rocks.path()),
                None,
                None,
                Committed::default(),
                JOIN,
            );
            assert_same(&pairs(&c), &expected, &format!("rocksdb, parallelism {p}"));
        }
    }

    #[test]
    fn join_state_survives_a_checkpoint_and_restores_rescaled_on_rocksdb() {
        restore_mid_way(JOIN, oracle());
    }

    /// The matched flags are state too: a restored row that had matched must
    /// not be padded, one that had not must be.
    #[test]
    fn outer_join_state_survives_a_checkpoint_and_restores_rescaled_on_rocksdb() {
        let expected = outer_oracle();
        assert!(expected.iter().any(|r| r.contains("NULL")));
        assert!(expected.iter().any(|r| !r.contains("NULL")));
        restore_mid_way(OUTER, expected);
    }

    fn restore_mid_way(sql: &str, expected: Vec<String>) {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("test runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let gen1 = store(&rt, dir.path(), 1);
        let a = run(
            2,
            memory_state(),
            Some((gen1.clone(), 30)),
            None,
            Committed::default(),
            sql,
        );
        assert_same(&pairs(&a), &expected, "checkpointed run");
        let completed = rt.block_on(gen1.list_completed()).expect("list");
        assert!(completed.len() >= 2, "{} checkpoints", completed.len());
        let mid = &completed[completed.len() / 2];

        let gen2 = store(&rt, dir.path(), 2);
        let snapshot = rt
            .block_on(RestoreSnapshot::load(&gen2, &mid.dir))
            .expect("load");
        // One state file per join subtask (two); the sources keep positions.
        let files: usize = snapshot
            .state
            .subtasks
            .iter()
            .map(|s| s.operators.len())
            .sum();
        assert_eq!(files, 2);
        let positions = snapshot
            .state
            .subtasks
            .iter()
            .filter(|s| s.source.is_some())
            .count();
        assert_eq!(positions, 4, "left and right sources, two subtasks each");
        let rocks = tempfile::tempdir().expect("rocksdb dir");
        let b = run(
            3,
            rocksdb(rocks.path()),
            Some((gen2, 30)),
            Some(snapshot),
            a.before(mid.checkpoint_id),
            sql,
        );
        assert_same(&pairs(&b), &expected, "restored run");
    }
}

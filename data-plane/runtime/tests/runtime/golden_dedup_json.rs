//! Golden tests of deduplication (`ROW_NUMBER() … WHERE rn = 1`) and
//! `JSON_VALUE`: SQL + input rows and watermarks → expected rows, with the
//! operators built as the task layer builds them. Keep-last results are
//! checked as the changelog and as the final table; the deduplication state
//! goes through a snapshot and a restore (also into two subtasks).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arrow_array::cast::AsArray;
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use sluice_runtime::connector::physical_schema;
use sluice_runtime::operator::{Chain, VecCollector};
use sluice_runtime::{JobConfig, MAX_WATERMARK, ROW_KIND_COLUMN, RowKind, build_operators};
use sluice_state::ReadSeek;

const SRC: &str = "CREATE TABLE ev (
  user_id STRING,
  item STRING,
  v BIGINT,
  payload STRING,
  ts_ms BIGINT,
  ts AS TO_TIMESTAMP_LTZ(ts_ms, 3),
  pt AS PROCTIME(),
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH ('connector' = 'datagen');
CREATE TABLE out4 (user_id STRING, item STRING, v BIGINT, ts_ms BIGINT) WITH ('connector' = 'print');
";

type Row = (&'static str, &'static str, i64, Option<&'static str>, i64);

enum In {
    Rows(Vec<Row>),
    Watermark(i64),
}

use In::{Rows, Watermark};

struct Job {
    chain: Chain,
    schema: arrow_schema::SchemaRef,
    out: VecCollector,
    late: Arc<AtomicU64>,
}

fn job(sql: &str, subtask: usize, parallelism: usize) -> Job {
    let plan = sluice_sql::plan(&format!("{SRC}{sql}")).unwrap_or_else(|e| panic!("plan: {e:?}"));
    let p = &plan.pipelines[0];
    let schema = physical_schema(&plan.tables["ev"]);
    let late = Arc::new(AtomicU64::new(0));
    let (ops, _) = build_operators(
        &p.stages,
        schema.clone(),
        subtask,
        parallelism,
        &JobConfig::new(parallelism),
        &late,
    )
    .unwrap_or_else(|e| panic!("build: {e}"));
    Job {
        chain: Chain::new(ops),
        schema,
        out: VecCollector::default(),
        late,
    }
}

impl Job {
    fn feed(&mut self, input: Vec<In>) -> Result<(), String> {
        for i in input {
            match i {
                Rows(rows) => {
                    let s = |f: fn(&Row) -> &'static str| -> ArrayRef {
                        Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
                    };
                    let cols: Vec<ArrayRef> = vec![
                        s(|r| r.0),
                        s(|r| r.1),
                        Arc::new(Int64Array::from(
                            rows.iter().map(|r| r.2).collect::<Vec<_>>(),
                        )),
                        Arc::new(StringArray::from(
                            rows.iter().map(|r| r.3).collect::<Vec<_>>(),
                        )),
                        Arc::new(Int64Array::from(
                            rows.iter().map(|r| r.4).collect::<Vec<_>>(),
                        )),
                    ];
                    let b = RecordBatch::try_new(self.schema.clone(), cols)
                        .unwrap_or_else(|e| panic!("{e}"));
                    self.chain
                        .process(b, &mut self.out)
                        .map_err(|e| e.to_string())?;
                }
                Watermark(w) => self
                    .chain
                    .watermark(w, &mut self.out)
                    .map_err(|e| e.to_string())?,
            }
        }
        Ok(())
    }

    fn end(&mut self) -> Vec<String> {
        self.chain
            .watermark(MAX_WATERMARK, &mut self.out)
            .unwrap_or_else(|e| panic!("watermark: {e}"));
        self.chain
            .finish(&mut self.out)
            .unwrap_or_else(|e| panic!("finish: {e}"));
        rows(&self.out)
    }

    /// Snapshot of the one stateful operator, as the bytes of its state file.
    fn snapshot(&mut self) -> Vec<u8> {
        let mut snaps = self.chain.snapshot(1).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(snaps.len(), 1, "one stateful operator");
        let (_, pending) = snaps.remove(0);
        let mut bytes = Vec::new();
        pending
            .write_to(&mut bytes)
            .unwrap_or_else(|e| panic!("{e}"));
        bytes
    }

    fn restore(&mut self, file: &[u8], watermark: i64) {
        let mut cursor = Cursor::new(file.to_vec());
        let mut files: Vec<&mut dyn ReadSeek> = vec![&mut cursor];
        for op in self.chain.ops.iter_mut().filter(|o| o.is_stateful()) {
            op.restore(&mut files, watermark)
                .unwrap_or_else(|e| panic!("restore: {e}"));
        }
    }
}

fn cell(a: &ArrayRef, r: usize) -> String {
    if a.is_null(r) {
        return "NULL".into();
    }
    arrow_cast::display::array_value_to_string(a, r).unwrap_or_else(|e| panic!("display: {e}"))
}

fn rows(out: &VecCollector) -> Vec<String> {
    let mut rows = Vec::new();
    for b in &out.batches {
        let kind = b
            .schema()
            .fields()
            .last()
            .map(|f| f.name() == ROW_KIND_COLUMN)
            .unwrap_or(false);
        let n = b.num_columns() - usize::from(kind);
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
    rows
}

fn run(sql: &str, input: Vec<In>) -> (Vec<String>, u64) {
    let mut j = job(sql, 0, 1);
    j.feed(input).unwrap_or_else(|e| panic!("{e}"));
    let rows = j.end();
    (rows, j.late.load(Ordering::Relaxed))
}

/// The table an upsert sink ends with: key = the first two columns.
fn final_table(changelog: &[String]) -> Vec<String> {
    let mut table = BTreeMap::new();
    for r in changelog {
        let body = &r[3..r.len() - 1];
        let key: Vec<&str> = body.split(", ").take(2).collect();
        let key = key.join(", ");
        match &r[..2] {
            "+I" | "+U" => {
                table.insert(key, body.to_string());
            }
            _ => {
                table.remove(&key);
            }
        }
    }
    table.into_values().collect()
}

fn dedup(order: &str) -> String {
    format!(
        "INSERT INTO out4 SELECT user_id, item, v, ts_ms FROM (
           SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id, item ORDER BY {order}) AS rn FROM ev
         ) WHERE rn = 1;"
    )
}

fn r(u: &'static str, i: &'static str, v: i64, ts: i64) -> Row {
    (u, i, v, None, ts)
}

fn keep_first_input() -> Vec<In> {
    vec![
        Rows(vec![
            r("a", "x", 1, 5000),
            r("a", "x", 2, 3000),
            r("b", "x", 3, 4000),
            r("a", "y", 4, 6000),
        ]),
        Watermark(4500),
        // 2000 is behind the watermark: late. (a, y) at 5500 is earlier than its
        // waiting 6000 row and replaces it; (b, x) was emitted already.
        Rows(vec![
            r("a", "x", 5, 2000),
            r("a", "y", 6, 5500),
            r("b", "x", 7, 4800),
        ]),
    ]
}

const KEEP_FIRST_OUT: [&str; 3] = [
    "+I[a, x, 2, 3000]",
    "+I[b, x, 3, 4000]",
    "+I[a, y, 6, 5500]",
];

#[test]
fn keep_first_on_event_time_keeps_the_earliest_row_whatever_the_arrival_order() {
    let (rows, late) = run(&dedup("ts ASC"), keep_first_input());
    assert_eq!(rows, KEEP_FIRST_OUT);
    assert_eq!(late, 1);
}

#[test]
fn keep_first_on_processing_time_keeps_the_first_arrival() {
    let (rows, late) = run(
        &dedup("pt"),
        vec![
            Rows(vec![
                r("a", "x", 1, 9000),
                r("a", "x", 2, 1000),
                r("b", "x", 3, 0),
            ]),
            Rows(vec![
                r("b", "x", 4, 0),
                r("a", "y", 5, 0),
                r("a", "x", 6, 0),
            ]),
        ],
    );
    assert_eq!(
        rows,
        ["+I[a, x, 1, 9000]", "+I[b, x, 3, 0]", "+I[a, y, 5, 0]"]
    );
    assert_eq!(late, 0);
}

#[test]
fn without_partition_by_one_row_is_kept_for_the_whole_stream() {
    let (rows, _) = run(
        "INSERT INTO out4 SELECT user_id, item, v, ts_ms FROM (
           SELECT *, ROW_NUMBER() OVER (ORDER BY ts) AS rn FROM ev) WHERE rn = 1;",
        vec![
            Rows(vec![r("b", "x", 1, 4000), r("a", "y", 2, 3000)]),
            Rows(vec![r("c", "z", 3, 3500)]),
        ],
    );
    assert_eq!(rows, ["+I[a, y, 2, 3000]"]);
}

#[test]
fn keep_last_on_event_time_is_a_changelog_of_the_latest_row() {
    let (rows, _) = run(
        &dedup("ts DESC"),
        vec![
            Rows(vec![
                r("a", "x", 1, 1000),
                r("b", "x", 2, 1000),
                r("a", "x", 3, 3000),
            ]),
            // Older than the kept row: ignored. A tie: the later arrival wins.
            Rows(vec![
                r("a", "x", 4, 2000),
                r("a", "x", 5, 3000),
                r("b", "x", 6, 500),
            ]),
            Watermark(10_000),
            Rows(vec![r("b", "x", 7, 1500)]),
        ],
    );
    assert_eq!(
        rows,
        [
            "+I[a, x, 1, 1000]",
            "+I[b, x, 2, 1000]",
            "-U[a, x, 1, 1000]",
            "+U[a, x, 3, 3000]",
            "-U[a, x, 3, 3000]",
            "+U[a, x, 5, 3000]",
            "-U[b, x, 2, 1000]",
            "+U[b, x, 7, 1500]",
        ]
    );
    assert_eq!(final_table(&rows), ["a, x, 5, 3000", "b, x, 7, 1500"]);
}

#[test]
fn keep_last_on_processing_time_follows_arrival() {
    let (rows, _) = run(
        &dedup("pt DESC"),
        vec![
            Rows(vec![r("a", "x", 1, 5000), r("a", "x", 2, 1000)]),
            Rows(vec![r("b", "y", 3, 0), r("a", "x", 4, 0)]),
        ],
    );
    assert_eq!(
        rows,
        [
            "+I[a, x, 1, 5000]",
            "-U[a, x, 1, 5000]",
            "+U[a, x, 2, 1000]",
            "+I[b, y, 3, 0]",
            "-U[a, x, 2, 1000]",
            "+U[a, x, 4, 0]",
        ]
    );
    assert_eq!(final_table(&rows), ["a, x, 4, 0", "b, y, 3, 0"]);
}

#[test]
fn dedup_state_survives_a_snapshot_and_restores_into_two_subtasks() {
    let mut input = keep_first_input();
    let after = input.split_off(2);
    let mut first = job(&dedup("ts"), 0, 1);
    first.feed(input).unwrap_or_else(|e| panic!("{e}"));
    let before: Vec<String> = rows(&first.out);
    assert_eq!(before, KEEP_FIRST_OUT[..2]);
    let file = first.snapshot();

    // Same parallelism: the run goes on as if uninterrupted.
    let mut again = job(&dedup("ts"), 0, 1);
    again.restore(&file, 4500);
    again.feed(after).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.end(), KEEP_FIRST_OUT[2..]);
    assert_eq!(again.late.load(Ordering::Relaxed), 1);

    // Rescaled to two subtasks, each restores its key groups: the waiting
    // (a, y) row comes out once, from the subtask that owns its key.
    let mut out = Vec::new();
    for s in 0..2 {
        let mut j = job(&dedup("ts"), s, 2);
        j.restore(&file, 4500);
        out.extend(j.end());
    }
    assert_eq!(out, ["+I[a, y, 4, 6000]"]);
}

#[test]
fn keep_last_state_is_restored_so_updates_retract_the_stored_row() {
    let mut first = job(&dedup("ts DESC"), 0, 1);
    first
        .feed(vec![Rows(vec![r("a", "x", 1, 1000)])])
        .unwrap_or_else(|e| panic!("{e}"));
    let file = first.snapshot();
    let mut again = job(&dedup("ts DESC"), 0, 1);
    again.restore(&file, i64::MIN);
    again
        .feed(vec![Rows(vec![r("a", "x", 2, 500), r("a", "x", 3, 2000)])])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again.end(), ["-U[a, x, 1, 1000]", "+U[a, x, 3, 2000]"]);
}

const JSON_SNK: &str = "CREATE TABLE j (a STRING, b INT, c DOUBLE, d BOOLEAN, e STRING, f STRING) WITH ('connector' = 'blackhole');
INSERT INTO j SELECT
  JSON_VALUE(payload, '$.user.name'),
  JSON_VALUE(payload, '$.items[0].n' RETURNING INT DEFAULT -1 ON EMPTY NULL ON ERROR),
  JSON_VALUE(payload, '$.p' RETURNING DOUBLE),
  JSON_VALUE(payload, '$.ok' RETURNING BOOLEAN DEFAULT FALSE ON ERROR),
  JSON_VALUE(payload, '$[\"a.b\"][''c'']' DEFAULT 'none' ON EMPTY),
  JSON_VALUE(payload, '$.user')
FROM ev;";

fn p(payload: Option<&'static str>) -> Row {
    ("u", "i", 0, payload, 0)
}

#[test]
fn json_value_paths_types_missing_members_and_malformed_json() {
    let (rows, _) = run(
        JSON_SNK,
        vec![Rows(vec![
            p(Some(
                r#"{"user":{"name":"ann"},"items":[{"n":7},{"n":8}],"p":1.5,"ok":true,"a.b":{"c":"dot"}}"#,
            )),
            // Numbers and strings convert; an empty array is a missing index.
            p(Some(
                r#"{"user":{"name":42},"items":[],"p":"2.25","ok":"false"}"#,
            )),
            // JSON null is empty; "abc" is no DOUBLE and 1 no BOOLEAN: errors.
            p(Some(
                r#"{"user":null,"items":[{"n":"12"}],"p":"abc","ok":1}"#,
            )),
            // A value too large for INT is an error too.
            p(Some(r#"{"items":[{"n":3000000000}],"p":-3}"#)),
            p(Some("not json")),
            p(None),
        ])],
    );
    assert_eq!(
        rows,
        [
            "+I[ann, 7, 1.5, true, dot, NULL]",
            "+I[42, -1, 2.25, false, none, NULL]",
            "+I[NULL, 12, NULL, false, none, NULL]",
            "+I[NULL, NULL, -3.0, NULL, none, NULL]",
            "+I[NULL, NULL, NULL, false, NULL, NULL]",
            "+I[NULL, NULL, NULL, NULL, NULL, NULL]",
        ]
    );
}

#[test]
fn json_value_error_clauses_fail_the_job_with_the_reason() {
    let sql = |clause: &str| {
        format!(
            "CREATE TABLE j (a BIGINT) WITH ('connector' = 'blackhole');
             INSERT INTO j SELECT JSON_VALUE(payload, '$.n' RETURNING BIGINT {clause}) FROM ev;"
        )
    };
    let mut ok = job(&sql("ERROR ON ERROR"), 0, 1);
    ok.feed(vec![Rows(vec![p(Some(r#"{"n": 5}"#)), p(Some("{}"))])])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.end(), ["+I[5]", "+I[NULL]"]);

    let mut bad = job(&sql("ERROR ON ERROR"), 0, 1);
    let e = bad
        .feed(vec![Rows(vec![p(Some(r#"{"n": "#))])])
        .expect_err("malformed JSON with ERROR ON ERROR");
    assert!(
        e.contains("malformed JSON") && e.contains("ERROR ON ERROR"),
        "{e}"
    );

    let mut empty = job(&sql("ERROR ON EMPTY"), 0, 1);
    let e = empty
        .feed(vec![Rows(vec![p(Some(r#"{"m": 1}"#))])])
        .expect_err("missing member with ERROR ON EMPTY");
    assert!(e.contains("no scalar value at '$.n'"), "{e}");
}

/// Whole jobs through the task layer (hash exchange, subtasks as threads,
/// checkpoints): deduplication over the deterministic checkpoint-test source,
/// checked against the rows computed directly from that source, and a restore
/// from a mid-way checkpoint at another parallelism on RocksDB.
mod jobs {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use sluice_blob::checkpoint::CheckpointStore;
    use sluice_blob::{BlobPath, BlobStore, FsStore};
    use sluice_runtime::coordinator::CheckpointConfig;
    use sluice_runtime::task::local::{LocalCheckpointing, LocalOptions, run_local};
    use sluice_runtime::task::{CheckpointingMode, RestoreSnapshot};
    use sluice_runtime::{JobConfig, MetricsRegistry, StateFactory, memory_state};
    use sluice_state::KeyedStateBackend;

    use super::super::testconn::{self, Committed, SPLITS, SRC, SourceOptions, materialize};

    const ROWS: usize = 600;

    const SINKS: &str = "
CREATE TABLE firsts (user_id STRING, v BIGINT, ts_ms BIGINT) WITH ('connector' = 'print');
CREATE TABLE lasts (user_id STRING, v BIGINT, ts_ms BIGINT) WITH ('connector' = 'print');
INSERT INTO firsts SELECT user_id, v, ts_ms FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts) AS rn FROM src) WHERE rn = 1;
INSERT INTO lasts SELECT user_id, v, ts_ms FROM (
  SELECT *, ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY ts DESC) AS rn FROM src) WHERE rn = 1;
";

    /// Per key, the row with the smallest and with the largest timestamp.
    fn oracle() -> (Vec<String>, Vec<String>) {
        let mut first: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut last: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        for s in 0..SPLITS {
            for j in 0..ROWS {
                let (k, v, ts) = testconn::row(s, j);
                let f = first.entry(k.clone()).or_insert((v, ts));
                if ts < f.1 {
                    *f = (v, ts);
                }
                let l = last.entry(k).or_insert((v, ts));
                if ts > l.1 {
                    *l = (v, ts);
                }
            }
        }
        let fmt = |m: BTreeMap<String, (i64, i64)>| {
            let mut v: Vec<String> = m
                .into_iter()
                .map(|(k, (v, ts))| format!("[{k}, {v}, {ts}]"))
                .collect();
            v.sort();
            v
        };
        (fmt(first), fmt(last))
    }

    fn store(
        rt: &tokio::runtime::Runtime,
        dir: &std::path::Path,
        generation: u64,
    ) -> CheckpointStore {
        rt.block_on(async {
            let fs: Arc<dyn BlobStore> = Arc::new(FsStore::open(dir).await.expect("fs store"));
            let s = CheckpointStore::new(fs, BlobPath::new("jobs/d1").expect("root"), generation)
                .expect("checkpoint store");
            s.claim().await.expect("claim");
            s
        })
    }

    fn run(
        parallelism: usize,
        state: StateFactory,
        checkpointing: Option<(CheckpointStore, u64)>,
        restore: Option<RestoreSnapshot>,
        seed: Committed,
    ) -> Committed {
        let committed = Arc::new(Mutex::new(seed));
        let source = SourceOptions {
            rows_per_split: ROWS,
            batch: 20,
            pause: Duration::from_millis(if checkpointing.is_some() { 5 } else { 0 }),
        };
        let connectors = testconn::connectors(source, committed.clone(), None);
        let mut cfg = JobConfig::new(parallelism);
        cfg.state = state;
        let plan =
            sluice_sql::plan(&format!("{SRC}{SINKS}")).unwrap_or_else(|e| panic!("plan: {e:?}"));
        run_local(
            &plan,
            &connectors,
            &cfg,
            LocalOptions {
                job_id: "d1".into(),
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

    fn tables(c: &Committed) -> (Vec<String>, Vec<String>) {
        let strip = |rows: Vec<String>| {
            // Keep-first must be append-only.
            assert!(rows.iter().all(|r| r.starts_with("+I")), "{rows:?}");
            materialize(&rows)
        };
        (
            strip(c.rows("-firsts", None)),
            materialize(&c.rows("-lasts", None)),
        )
    }

    #[test]
    fn parallel_jobs_keep_the_first_and_last_row_of_every_key() {
        let (first, last) = oracle();
        assert_eq!(first.len(), 11);
        for p in [1, 3] {
            let c = run(p, memory_state(), None, None, Committed::default());
            assert_eq!(tables(&c), (first.clone(), last.clone()), "parallelism {p}");
        }
    }

    #[test]
    fn restore_from_a_mid_way_checkpoint_at_another_parallelism_on_rocksdb() {
        let (first, last) = oracle();
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
        );
        assert_eq!(
            tables(&a),
            (first.clone(), last.clone()),
            "checkpointed run"
        );
        let completed = rt.block_on(gen1.list_completed()).expect("list");
        assert!(completed.len() >= 2, "{} checkpoints", completed.len());
        let mid = &completed[completed.len() / 2];

        let gen2 = store(&rt, dir.path(), 2);
        let snapshot = rt
            .block_on(RestoreSnapshot::load(&gen2, &mid.dir))
            .expect("load");
        // One state file per deduplication operator (two pipelines) and old subtask (two).
        let files: usize = snapshot
            .state
            .subtasks
            .iter()
            .map(|s| s.operators.len())
            .sum();
        assert_eq!(files, 2 * 2);
        let rocks = tempfile::tempdir().expect("rocksdb dir");
        let rocks_dir = rocks.path().to_path_buf();
        let rocksdb: StateFactory = Arc::new(move |max_parallelism, range| {
            let b = sluice_state_rocksdb::RocksDbBackend::open_temp(
                Some(&rocks_dir),
                max_parallelism,
                range,
                sluice_state_rocksdb::RocksDbConfig::default(),
            )
            .map_err(|e| sluice_runtime::RuntimeError::State {
                context: "rocksdb".into(),
                source: e,
            })?;
            Ok(Box::new(b) as Box<dyn KeyedStateBackend>)
        });
        let b = run(
            3,
            rocksdb,
            Some((gen2, 30)),
            Some(snapshot),
            a.before(mid.checkpoint_id),
        );
        assert_eq!(tables(&b), (first, last), "restored run");
    }
}

//! Checkpoints, savepoints and restores of whole jobs on the filesystem blob
//! store, compared with an uninterrupted run of the same job ("golden"):
//! whatever the crash point, rescaling and backend, the committed output must
//! be the same rows, each exactly once.

use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow_schema::DataType;
use sluice_blob::checkpoint::CheckpointStore;
use sluice_blob::{BlobPath, BlobStore, FsStore};
use sluice_runtime::coordinator::CheckpointConfig;
use sluice_runtime::task::local::{
    ChannelGate, LocalCheckpointing, LocalControl, LocalOptions, LocalReport, run_local,
};
use sluice_runtime::task::{
    CheckpointingMode, EngineState, EventSink, JobGraph, NativeSnapshots, OperatorState,
    RestoreSnapshot, SnapshotStorage, SubtaskCommand, SubtaskEvent, SubtaskId, SubtaskSetup,
    SubtaskState, TaskConfig, run_subtask,
};
use sluice_runtime::{
    Barrier, Envelope, JobConfig, Message, MetricsRegistry, StateFactory, memory_state,
};
use sluice_state::{KeyedStateBackend, key_group_of, subtask_for_key_group};

use super::testconn::{self, Committed, SRC, SourceOptions, materialize};

const SINKS: &str = "
CREATE TABLE win (user_id STRING, ws TIMESTAMP(3), we TIMESTAMP(3), n BIGINT, s BIGINT) WITH ('connector' = 'print');
CREATE TABLE ovr (user_id STRING, ts_ms BIGINT, n BIGINT, s BIGINT) WITH ('connector' = 'print');
CREATE TABLE grp (user_id STRING, n BIGINT, s BIGINT) WITH ('connector' = 'print');
INSERT INTO win SELECT user_id, window_start, window_end, COUNT(*), SUM(v)
  FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY user_id, window_start, window_end;
INSERT INTO ovr SELECT user_id, ts_ms,
  COUNT(*) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW),
  SUM(v) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
  FROM src;
INSERT INTO grp SELECT user_id, COUNT(*), SUM(v) FROM src GROUP BY user_id;
";

const SINK_NAMES: [&str; 3] = ["-win", "-ovr", "-grp"];

pub(super) fn plan() -> sluice_sql::JobPlan {
    sluice_sql::plan(&format!("{SRC}{SINKS}")).unwrap_or_else(|e| panic!("plan: {e:?}"))
}

pub(super) fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("test runtime")
}

/// The job's checkpoint storage at `generation`, claimed.
pub(super) fn store(
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

/// The job's checkpoint storage at `generation` in a fresh bucket of the test S3 service, claimed.
pub(super) fn s3_store(
    rt: &tokio::runtime::Runtime,
    bucket: &str,
    generation: u64,
) -> CheckpointStore {
    rt.block_on(async {
        let svc = sluice_test_support::s3();
        let opts = sluice_blob_s3::S3Options::compatible(
            &svc.endpoint,
            &svc.region,
            &svc.access_key_id,
            &svc.secret_access_key,
        );
        let loc = sluice_blob::BlobLocation::parse(&format!("s3://{bucket}/checkpoints"))
            .expect("location");
        let s3 = sluice_blob_s3::S3Store::connect(&loc, &opts)
            .await
            .expect("connect to S3");
        s3.ensure_bucket().await.expect("bucket");
        let blob: Arc<dyn BlobStore> = Arc::new(s3);
        let s = CheckpointStore::new(blob, BlobPath::new("jobs/j1").expect("root"), generation)
            .expect("checkpoint store");
        s.claim().await.expect("claim");
        s
    })
}

pub(super) fn rocksdb_state(dir: std::path::PathBuf) -> StateFactory {
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

pub(super) struct Job {
    pub(super) parallelism: usize,
    pub(super) state: StateFactory,
    pub(super) source: SourceOptions,
    pub(super) checkpointing: Option<(CheckpointStore, CheckpointConfig)>,
    pub(super) restore: Option<RestoreSnapshot>,
    pub(super) seed: Committed,
    pub(super) control: Option<sluice_runtime::task::local::ControlInbox>,
    /// The sinks also commit into files here.
    pub(super) persist: Option<std::path::PathBuf>,
    pub(super) vertex_parallelism: std::collections::BTreeMap<usize, usize>,
    /// Incremental (native) checkpoints and their conversion.
    pub(super) native: NativeSnapshots,
}

pub(super) struct Ran {
    pub(super) committed: Committed,
    pub(super) report: LocalReport,
    pub(super) records_in: u64,
    /// Operator subtasks restored by opening native files, and by converting them.
    pub(super) restored_native: u64,
    pub(super) restored_converted: u64,
}

pub(super) fn slow() -> SourceOptions {
    SourceOptions {
        rows_per_split: 1000,
        batch: 20,
        pause: Duration::from_millis(5),
    }
}

pub(super) fn fast() -> SourceOptions {
    SourceOptions {
        rows_per_split: 1000,
        batch: 100,
        pause: Duration::ZERO,
    }
}

pub(super) fn job(parallelism: usize, source: SourceOptions) -> Job {
    Job {
        parallelism,
        state: memory_state(),
        source,
        checkpointing: None,
        restore: None,
        seed: Committed::default(),
        control: None,
        persist: None,
        vertex_parallelism: Default::default(),
        native: NativeSnapshots::default(),
    }
}

/// What the engine binary gives a job: RocksDB state takes incremental checkpoints
/// (`incremental`), and native snapshots convert for any other restore.
pub(super) fn native(incremental: bool) -> NativeSnapshots {
    NativeSnapshots {
        backend: incremental.then(|| "rocksdb".to_string()),
        converter: Some(Arc::new(
            |dir: &std::path::Path, out: &mut dyn std::io::Write| {
                sluice_state_rocksdb::native_to_canonical(dir, out)
            },
        )),
    }
}

pub(super) fn checkpoint_cfg(interval_ms: u64, retain_last: usize) -> CheckpointConfig {
    CheckpointConfig {
        interval_ms,
        min_pause_ms: 0,
        timeout_ms: 30_000,
        retain_last,
        mode: CheckpointingMode::ExactlyOnce,
    }
}

/// Runs the job with a deadline, so that a hang fails the test instead of blocking the suite.
pub(super) fn run(j: Job) -> sluice_runtime::Result<Ran> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let _ = tx.send(run_unbounded(j));
    });
    rx.recv_timeout(Duration::from_secs(120))
        .expect("the job did not end within 120 s")
}

fn run_unbounded(j: Job) -> sluice_runtime::Result<Ran> {
    let committed = Arc::new(Mutex::new(j.seed));
    let connectors = testconn::connectors(j.source, committed.clone(), j.persist);
    let mut cfg = JobConfig::new(j.parallelism);
    cfg.state = j.state;
    cfg.native = j.native;
    let metrics = MetricsRegistry::new();
    let report = run_local(
        &plan(),
        &connectors,
        &cfg,
        LocalOptions {
            job_id: "j1".into(),
            checkpointing: j
                .checkpointing
                .map(|(store, config)| LocalCheckpointing { store, config }),
            restore: j.restore,
            allow_non_restored_state: false,
            control: j.control,
            vertex_parallelism: j.vertex_parallelism.clone(),
        },
        &metrics,
    )?;
    let records_in = metrics.counter_sum("sluice_source_records_total");
    let restored_native = metrics.counter_sum("sluice_state_restored_native_total");
    let restored_converted = metrics.counter_sum("sluice_state_restored_converted_total");
    drop(connectors);
    let committed = std::mem::take(&mut *committed.lock().unwrap_or_else(|p| p.into_inner()));
    Ok(Ran {
        committed,
        report,
        records_in,
        restored_native,
        restored_converted,
    })
}

pub(super) fn golden() -> Vec<Vec<String>> {
    let a = run(job(2, fast())).expect("uninterrupted run");
    assert_eq!(a.records_in, 3 * 4 * 1000);
    SINK_NAMES
        .iter()
        .map(|s| materialize(&a.committed.rows(s, None)))
        .collect()
}

pub(super) fn assert_same(expected: &[Vec<String>], got: &Committed, what: &str) {
    for (i, s) in SINK_NAMES.iter().enumerate() {
        let rows = materialize(&got.rows(s, None));
        assert!(!expected[i].is_empty(), "{s}: no golden rows");
        assert_eq!(rows.len(), expected[i].len(), "{what}: {s} row count");
        assert_eq!(rows, expected[i], "{what}: {s} rows");
    }
}

#[test]
fn checkpoint_mid_way_then_restore_at_parallelism_3_on_rocksdb_matches_an_uninterrupted_run() {
    let expected = golden();
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    // Run 1: parallelism 2, memory state, a checkpoint every 40 ms; keep them all.
    let gen1 = store(&rt, dir.path(), 1);
    let mut j = job(2, slow());
    j.checkpointing = Some((gen1.clone(), checkpoint_cfg(40, 1000)));
    let b = run(j).expect("checkpointed run");
    // Checkpoints alone change nothing about the output.
    assert_same(&expected, &b.committed, "checkpointed run");
    let stats = &b.report.checkpoints;
    assert!(stats.counts.completed >= 3, "{stats:?}");
    let completed = rt.block_on(gen1.list_completed()).expect("list");
    assert_eq!(completed.len() as u64, stats.counts.completed);
    let mid = &completed[completed.len() / 2];

    // Run 2 restarts from the middle checkpoint as if the first run had died
    // right after writing its _metadata, before the sinks committed it.
    let gen2 = store(&rt, dir.path(), 2);
    let snapshot = rt
        .block_on(RestoreSnapshot::load(&gen2, &mid.dir))
        .expect("load");
    let subtask_files: usize = snapshot
        .state
        .subtasks
        .iter()
        .map(|s| s.operators.len())
        .sum();
    assert!(
        subtask_files >= 3 * 2,
        "state files of 3 operators x 2 subtasks"
    );
    let rocks = tempfile::tempdir().expect("rocksdb dir");
    let mut j = job(3, slow());
    j.state = rocksdb_state(rocks.path().to_path_buf());
    j.checkpointing = Some((gen2.clone(), checkpoint_cfg(40, 2)));
    j.restore = Some(snapshot);
    j.seed = b.committed.before(mid.checkpoint_id);
    let c = run(j).expect("restored run");
    assert!(
        c.records_in > 0 && c.records_in < 3 * 4 * 1000,
        "the restored sources resume from their positions, read {}",
        c.records_in
    );
    assert_eq!(
        c.report.checkpoints.restored.as_ref().map(|r| r.id),
        Some(mid.checkpoint_id)
    );
    assert_same(&expected, &c.committed, "restored run");
    // Retention of the second run kept its newest two.
    let kept = rt.block_on(gen2.list_completed()).expect("list");
    assert!(
        kept.iter().filter(|h| h.generation == 2).count() <= 2,
        "{kept:?}"
    );
}

#[test]
fn checkpoints_on_s3_restore_at_parallelism_1() {
    let expected = golden();
    let rt = rt();
    let bucket = format!(
        "ckpt-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0)
    );
    let gen1 = s3_store(&rt, &bucket, 1);
    let mut j = job(2, slow());
    j.checkpointing = Some((gen1.clone(), checkpoint_cfg(40, 1000)));
    let b = run(j).expect("checkpointed run on S3");
    let completed = rt.block_on(gen1.list_completed()).expect("list");
    assert!(completed.len() >= 2, "{completed:?}");
    let mid = &completed[completed.len() / 2];
    let gen2 = s3_store(&rt, &bucket, 2);
    let snapshot = rt
        .block_on(RestoreSnapshot::load(&gen2, &mid.dir))
        .expect("load from S3");
    let mut j = job(1, fast());
    j.checkpointing = Some((gen2, checkpoint_cfg(0, 3)));
    j.restore = Some(snapshot);
    // The first run committed checkpoint `mid` (and more); a re-commit is a no-op.
    j.seed = b.committed.before(mid.checkpoint_id + 1);
    let c = run(j).expect("restored run");
    assert_same(&expected, &c.committed, "restored from S3");
}

#[test]
fn vertices_at_different_parallelisms_restore_into_others() {
    let expected = golden();
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let gen1 = store(&rt, dir.path(), 1);
    // Sources at 1, keyed vertices at 3 (every pipeline: vertex 0 source, vertex 1 keyed).
    let mut j = job(2, slow());
    j.vertex_parallelism = [(0, 1), (1, 3), (2, 1), (3, 3), (4, 1), (5, 3)].into();
    j.checkpointing = Some((gen1.clone(), checkpoint_cfg(40, 1000)));
    let b = run(j).expect("mixed parallelism run");
    assert_same(&expected, &b.committed, "mixed parallelism run");
    let completed = rt.block_on(gen1.list_completed()).expect("list");
    assert!(completed.len() >= 2, "{completed:?}");
    let mid = &completed[completed.len() / 2];
    let gen2 = store(&rt, dir.path(), 2);
    let snapshot = rt
        .block_on(RestoreSnapshot::load(&gen2, &mid.dir))
        .expect("load");
    // Sources at 4 (one split each), keyed vertices at 2.
    let mut j = job(2, fast());
    j.vertex_parallelism = [(0, 4), (1, 2), (2, 4), (3, 2), (4, 4), (5, 2)].into();
    j.checkpointing = Some((gen2, checkpoint_cfg(0, 3)));
    j.restore = Some(snapshot);
    j.seed = b.committed.before(mid.checkpoint_id);
    let c = run(j).expect("restored run");
    assert_same(&expected, &c.committed, "restored at other parallelisms");
}

#[test]
fn checkpoints_that_time_out_are_aborted_and_the_output_stays_exactly_once() {
    let expected = golden();
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let gen1 = store(&rt, dir.path(), 1);
    let mut j = job(2, slow());
    let mut cfg = checkpoint_cfg(20, 3);
    cfg.timeout_ms = 1;
    j.checkpointing = Some((gen1, cfg));
    let b = run(j).expect("run with timing-out checkpoints");
    let stats = &b.report.checkpoints;
    assert!(stats.counts.failed >= 1, "{stats:?}");
    // The last attempts may fail for another reason: sources finishing first.
    assert!(
        stats.history.iter().any(|r| r
            .failure_message
            .as_deref()
            .is_some_and(|m| m.contains("timed out"))),
        "{stats:?}"
    );
    // Aborted checkpoints' committables ride on the next one or the end of input.
    assert_same(&expected, &b.committed, "aborted checkpoints");
}

#[test]
fn stop_with_savepoint_then_restore_at_parallelism_1_matches_an_uninterrupted_run() {
    let expected = golden();
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let gen1 = store(&rt, dir.path(), 1);
    let (control, inbox) = LocalControl::new();
    let mut j = job(2, slow());
    // No periodic checkpoints: only the savepoint.
    j.checkpointing = Some((gen1.clone(), checkpoint_cfg(0, 3)));
    j.control = Some(inbox);
    let handle = std::thread::spawn(move || run(j));
    // Let it get going before stopping it.
    std::thread::sleep(Duration::from_millis(300));
    let id = control
        .stop_with_savepoint("sp-1", false)
        .expect("stop with savepoint");
    let b = handle.join().expect("job thread").expect("stopped run");
    let sp = b
        .report
        .checkpoints
        .latest_savepoint
        .clone()
        .expect("a savepoint");
    assert_eq!(sp.id, id);
    assert!(b.records_in < 3 * 4 * 1000, "stopped before the end");
    let sp_dir = gen1.savepoint_dir("sp-1").expect("dir");
    let snapshot = rt
        .block_on(RestoreSnapshot::load(&gen1, &sp_dir))
        .expect("load savepoint");
    assert!(snapshot.metadata.shared_files.is_empty());
    // Parallelism 1: every pipeline is one chained vertex reading all old files.
    let gen2 = store(&rt, dir.path(), 2);
    let mut j = job(1, fast());
    j.checkpointing = Some((gen2, checkpoint_cfg(0, 3)));
    j.restore = Some(snapshot);
    j.seed = b.committed;
    let c = run(j).expect("restored run");
    assert_same(&expected, &c.committed, "restored from savepoint");
}

#[test]
fn stop_with_drain_fires_every_timer_before_the_savepoint() {
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let gen1 = store(&rt, dir.path(), 1);
    let (control, inbox) = LocalControl::new();
    let mut j = job(2, slow());
    j.checkpointing = Some((gen1.clone(), checkpoint_cfg(0, 3)));
    j.control = Some(inbox);
    let handle = std::thread::spawn(move || run(j));
    std::thread::sleep(Duration::from_millis(300));
    control
        .stop_with_savepoint("sp-drain", true)
        .expect("stop with drain");
    let b = handle.join().expect("job thread").expect("drained run");
    assert!(b.records_in < 3 * 4 * 1000, "stopped before the end");
    let pipes = &b.report.job.pipelines;
    // Every row read ended up in a fired window / an emitted OVER row.
    let win: i64 = materialize(&b.committed.rows("-win", None))
        .iter()
        .map(|r| {
            r.trim_matches(|c| c == '[' || c == ']')
                .split(", ")
                .nth(3)
                .and_then(|n| n.parse::<i64>().ok())
                .expect("count column")
        })
        .sum();
    assert_eq!(win as u64, pipes[0].records_in);
    assert_eq!(
        b.committed.rows("-ovr", None).len() as u64,
        pipes[1].records_in
    );
    let meta = rt
        .block_on(gen1.load_savepoint("sp-drain"))
        .expect("savepoint metadata");
    assert_eq!(meta.kind, sluice_blob::checkpoint::SnapshotKind::Savepoint);
}

#[test]
fn a_newer_generation_fences_the_coordinator_and_retention_keeps_the_last_two() {
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let gen1 = store(&rt, dir.path(), 1);
    let (control, inbox) = LocalControl::new();
    let mut j = job(2, slow());
    j.source.rows_per_split = 100_000;
    j.checkpointing = Some((gen1.clone(), checkpoint_cfg(20, 2)));
    j.control = Some(inbox);
    let handle = std::thread::spawn(move || run(j));
    let deadline = Instant::now() + Duration::from_secs(30);
    while control.stats().counts.completed < 4 {
        assert!(
            Instant::now() < deadline,
            "no checkpoints: {:?}",
            control.stats()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let listed = rt.block_on(gen1.list_completed()).expect("list");
    // Retention runs after each completion; one more may have completed since.
    assert!((2..=3).contains(&listed.len()), "{listed:?}");
    // A newer cluster claims generation 2: the old coordinator must stop.
    let _gen2 = store(&rt, dir.path(), 2);
    let err = match handle.join().expect("job thread") {
        Ok(_) => panic!("a fenced job ran on"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("fenced"), "{err}");
    let listed = rt.block_on(gen1.list_completed()).expect("list");
    assert!((2..=3).contains(&listed.len()), "{listed:?}");
    let newest = listed.iter().map(|h| h.checkpoint_id).max().unwrap_or(0);
    assert!(
        listed.iter().all(|h| h.checkpoint_id + 2 >= newest),
        "{listed:?}"
    );
}

struct Events(Mutex<Sender<(SubtaskId, SubtaskEvent)>>);

impl EventSink for Events {
    fn send(&self, from: SubtaskId, event: SubtaskEvent) {
        let _ = self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send((from, event));
    }
}

/// Runs the GROUP BY vertex's subtask 0 of 2 on hand-fed input channels:
/// channel 0 delivers `a`, the barrier, then `b` at once; channel 1 delivers
/// `c`, and `d` and its barrier only 200 ms later. Returns the keys in the
/// checkpoint's committable and in the committed output after the end.
fn feed_skewed(mode: CheckpointingMode) -> (Vec<String>, Vec<String>) {
    let plan = sluice_sql::plan(&format!(
        "{SRC}CREATE TABLE grp (user_id STRING, n BIGINT, s BIGINT) WITH ('connector' = 'print');
         INSERT INTO grp SELECT user_id, COUNT(*), SUM(v) FROM src GROUP BY user_id;"
    ))
    .expect("plan");
    let graph = Arc::new(JobGraph::new(&plan, 2, 128).expect("graph"));
    assert_eq!(graph.vertices.len(), 2, "cut at the hash exchange");
    let v = &graph.vertices[1];
    let Some(sluice_sql::Exchange::Hash { keys }) = v.input.as_ref().map(|i| i.exchange.clone())
    else {
        panic!("hash exchange expected")
    };
    let schema = v.input_schema.clone();
    let types: Vec<DataType> = schema
        .fields()
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    let batch_of = |key: &str| -> RecordBatch {
        let cols: Vec<ArrayRef> = types
            .iter()
            .map(|t| -> ArrayRef {
                match t {
                    DataType::Utf8 => Arc::new(StringArray::from(vec![key])),
                    DataType::Timestamp(..) => Arc::new(TimestampMillisecondArray::from(vec![0])),
                    _ => Arc::new(Int64Array::from(vec![1])),
                }
            })
            .collect();
        RecordBatch::try_new(schema.clone(), cols).expect("batch")
    };
    // Keys that the hash exchange sends to subtask 0 of 2.
    let enc = sluice_runtime::keys::KeyEncoder::new(keys, &types).expect("key encoder");
    let mut ours = (0..1000).map(|i| format!("key{i}")).filter(|k| {
        let b = batch_of(k);
        let kb = enc.encode(&b).expect("encode");
        subtask_for_key_group(key_group_of(kb.key(0), 128), 128, 2) == 0
    });
    let [a, b, c, d] = [(); 4].map(|_| ours.next().expect("a key of subtask 0"));

    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&rt, dir.path(), 1);
    let committed = Arc::new(Mutex::new(Committed::default()));
    let connectors = testconn::connectors(fast(), committed.clone(), None);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Envelope>(64);
    let (ctx, crx) = channel();
    let (etx, erx) = channel();
    let setup = SubtaskSetup {
        graph: graph.clone(),
        id: SubtaskId {
            vertex: 1,
            subtask: 0,
        },
        config: TaskConfig {
            job: JobConfig::new(2),
            job_id: "j1".into(),
            storage: Some(SnapshotStorage {
                store,
                runtime: rt.handle().clone(),
            }),
            mode,
            cancelled: Default::default(),
        },
        connectors,
        input: Some(Box::new(ChannelGate::new(rx))),
        outputs: Vec::new(),
        commands: crx,
        events: Arc::new(Events(Mutex::new(etx))),
        restore: None,
        metrics: MetricsRegistry::new(),
    };
    let task = std::thread::spawn(move || run_subtask(setup));
    let send = |channel: usize, message: Message| {
        tx.send(Envelope { channel, message }).expect("send");
    };
    let barrier = Barrier {
        checkpoint_id: 1,
        savepoint: None,
    };
    send(0, Message::Data(batch_of(&a)));
    send(0, Message::Barrier(barrier.clone()));
    send(0, Message::Data(batch_of(&b)));
    send(1, Message::Data(batch_of(&c)));
    std::thread::sleep(Duration::from_millis(200));
    send(1, Message::Data(batch_of(&d)));
    send(1, Message::Barrier(barrier));
    let (_, ev) = erx.recv_timeout(Duration::from_secs(20)).expect("an event");
    let SubtaskEvent::Acknowledge {
        checkpoint_id: 1,
        state,
    } = ev
    else {
        panic!("expected an acknowledgement, got {ev:?}")
    };
    assert_eq!(state.operators.len(), 1, "the GroupAggregate's state file");
    let sink = state.sink.expect("sink state");
    let text = String::from_utf8(sink.pending[0].committable.clone()).expect("utf8");
    let keys_in = |rows: &mut dyn Iterator<Item = &str>| -> Vec<String> {
        let mut k: Vec<String> = rows
            .filter_map(|r| r.get(3..).and_then(|x| x.split(',').next()))
            .map(str::to_string)
            .collect();
        k.sort();
        k
    };
    let at_barrier = keys_in(&mut text.lines().skip(2));
    ctx.send(SubtaskCommand::CheckpointComplete { checkpoint_id: 1 })
        .expect("command");
    send(0, Message::End);
    send(1, Message::End);
    task.join().expect("task thread").expect("subtask");
    let all = committed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .rows("-grp", None);
    let mut end = keys_in(&mut all.iter().map(String::as_str));
    end.dedup();
    let mut want_end = vec![a, b.clone(), c, d];
    want_end.sort();
    assert_eq!(end, want_end);
    (at_barrier, vec![b])
}

#[test]
fn exactly_once_aligns_barriers_over_skewed_inputs() {
    let (at_barrier, after) = feed_skewed(CheckpointingMode::ExactlyOnce);
    assert_eq!(at_barrier.len(), 3, "a, c and d: {at_barrier:?}");
    assert!(
        !at_barrier.contains(&after[0]),
        "b came after the barrier on its channel: {at_barrier:?}"
    );
}

#[test]
fn at_least_once_does_not_hold_back_channels() {
    let (at_barrier, after) = feed_skewed(CheckpointingMode::AtLeastOnce);
    assert_eq!(at_barrier.len(), 4, "{at_barrier:?}");
    assert!(at_barrier.contains(&after[0]));
}

#[test]
fn state_of_an_operator_the_job_lacks_needs_allow_non_restored_state() {
    let rt = rt();
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store(&rt, dir.path(), 1);
    let graph = JobGraph::new(&plan(), 2, 128).expect("graph");
    let state = EngineState {
        format: sluice_runtime::task::ENGINE_STATE_FORMAT,
        max_parallelism: 128,
        subtasks: vec![SubtaskState {
            vertex: "p7-v1".into(),
            subtask: 0,
            parallelism: 1,
            operators: vec![OperatorState {
                uid: "p7-s3".into(),
                file: sluice_blob::checkpoint::FileRef {
                    path: "p7-s3-0-of-1.state".into(),
                    size_bytes: 0,
                    crc32: 0,
                },
                native: None,
            }],
            source: None,
            sink: None,
            watermark: 0,
            uploaded_bytes: 0,
        }],
    };
    let meta = sluice_blob::checkpoint::SnapshotMetadata {
        job_id: "j1".into(),
        generation: 1,
        checkpoint_id: 1,
        kind: sluice_blob::checkpoint::SnapshotKind::Checkpoint,
        created_at_ms: 0,
        files: Vec::new(),
        shared_files: Vec::new(),
        engine_state: state.to_json().expect("json"),
    };
    let dir_path = store.checkpoint_dir(1).expect("dir");
    let snap = RestoreSnapshot::new(store, dir_path, meta).expect("snapshot");
    let err = snap
        .check_against(&graph, false)
        .expect_err("unknown operator state accepted");
    assert!(err.to_string().contains("p7-s3"), "{err}");
    snap.check_against(&graph, true).expect("allowed");
    let other_max = JobGraph::new(&plan(), 2, 64).expect("graph");
    assert!(snap.check_against(&other_max, true).is_err());
}

/// Crash points and the hit at which the child process dies (12 subtasks per
/// checkpoint at parallelism 2: hit 20 of a per-subtask point is in the 2nd checkpoint).
const CRASHES: [(&str, u32); 5] = [
    ("before_snapshot", 20),
    ("after_upload", 20),
    ("after_checkpoint_complete", 3),
    ("before_sink_commit", 10),
    ("after_sink_commit", 10),
];

const CHILD_ENV: &str = "SLUICE_TEST_CRASH_DIR";

/// Kills a real process (`std::process::abort` at a failpoint) at every
/// crash point, restarts from the latest checkpoint at another parallelism,
/// and checks that the committed output is the uninterrupted run's, each row once.
#[test]
fn crash_at_each_failpoint_then_restore_latest_loses_and_duplicates_nothing() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        // The child: run until the armed failpoint aborts the process.
        let dir = std::path::PathBuf::from(dir);
        let rt = rt();
        let gen1 = store(&rt, &dir.join("ck"), 1);
        let mut j = job(2, slow());
        // Incremental snapshots written by RocksDB here, converted into memory below.
        j.state = rocksdb_state(dir.clone());
        j.native = native(true);
        j.checkpointing = Some((gen1, checkpoint_cfg(40, 1000)));
        j.persist = Some(dir.join("out"));
        let r = run(j);
        panic!(
            "the failpoint did not fire: the job ended with {:?}",
            r.map(|r| r.records_in)
        );
    }
    let expected = golden();
    for (point, hit) in CRASHES {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("out")).expect("out dir");
        let mut child = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "checkpoints::crash_at_each_failpoint_then_restore_latest_loses_and_duplicates_nothing",
                "--nocapture",
            ])
            .env(CHILD_ENV, dir.path())
            .env("SLUICE_FAILPOINTS", format!("{point}:{hit}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting the child");
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().expect("child status").is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{point}: the child did not end within 60 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = child.wait_with_output().expect("child output");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.code().is_none() && stderr.contains(&format!("failpoint {point}")),
            "{point}: the child was not aborted at the failpoint ({}): {stderr}",
            out.status
        );
        let rt = rt();
        let gen2 = store(&rt, &dir.path().join("ck"), 2);
        let latest = rt
            .block_on(RestoreSnapshot::latest(&gen2))
            .expect("latest checkpoint");
        if point != "before_snapshot" {
            assert!(
                latest.is_some(),
                "{point}: a checkpoint completed before the crash"
            );
        }
        let mut j = job(3, fast());
        j.native = native(false);
        j.checkpointing = Some((gen2, checkpoint_cfg(40, 3)));
        j.restore = latest;
        j.seed = Committed::load(&dir.path().join("out"));
        j.persist = Some(dir.path().join("out"));
        let c = run(j).expect("restarted run");
        assert_same(&expected, &Committed::load(&dir.path().join("out")), point);
        drop(c);
    }
}

//! Kafka source positions and the exactly-once sink against the real broker
//! (tansu). Exactly-once output is checked by reading the raw log and
//! resolving transactions through their markers
//! (`sluice_test_support::kafka_log`), because tansu does not filter aborted
//! records for read_committed consumers.

use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::util::Timeout;
use sluice_runtime::connector::{
    Connectors, PollStatus, SinkContext, SinkWriter, SourceContext, SourceOutput, SourceReader,
    physical_schema,
};
use sluice_test_support::kafka_log::{Fate, read_partition};
use sluice_test_support::{kafka, unique_name};

const T: Duration = Duration::from_secs(15);

fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("admin client: {e}"));
    let res = sluice_connector_kafka::block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Timeout::After(T))),
    ));
    for r in res.unwrap_or_else(|e| panic!("create_topics: {e}")) {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

fn connectors() -> Connectors {
    let mut c = Connectors::default();
    sluice_connectors::register(&mut c);
    sluice_connector_kafka::register(&mut c);
    c
}

fn plan_table(sql: &str, name: &str) -> sluice_sql::TableDef {
    let plan = sluice_sql::plan(sql).unwrap_or_else(|e| panic!("{e:?}"));
    plan.tables[name].clone()
}

fn produce(bootstrap: &str, topic: &str, partitions: i32, ids: std::ops::RangeInclusive<i64>) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    for i in ids {
        let v = format!("{{\"id\":{i}}}");
        let part = (i % i64::from(partitions)) as i32;
        p.send(BaseRecord::<(), _>::to(topic).payload(&v).partition(part))
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
    p.flush(T).unwrap_or_else(|e| panic!("{e}"));
}

fn drain(r: &mut dyn SourceReader) -> Vec<i64> {
    let mut ids = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "source did not finish"
        );
        let mut o = SourceOutput::default();
        let s = r.poll(&mut o).unwrap_or_else(|e| panic!("{e}"));
        for (_, b) in o.batches {
            ids.extend(b.column(0).as_primitive::<Int64Type>().values().iter());
        }
        if s == PollStatus::Finished {
            return ids;
        }
    }
}

fn assert_exactly(mut ids: Vec<i64>, want: std::ops::RangeInclusive<i64>) {
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "{} ids delivered twice", n - ids.len());
    assert_eq!(ids, want.collect::<Vec<_>>());
}

/// With more subtasks than partitions, a subtask without partitions stays (idle,
/// no splits) when the source is unbounded, so checkpoints go on; bounded, it ends.
#[test]
fn a_subtask_without_partitions_stays_idle_unless_bounded() {
    let bootstrap = kafka().bootstrap_servers.clone();
    let topic = unique_name("few-");
    create_topic(&bootstrap, &topic, 2);
    for (bounded, want) in [
        ("unbounded", PollStatus::Idle),
        ("latest-offset", PollStatus::Finished),
    ] {
        let t = plan_table(
            &format!(
                "CREATE TABLE src (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{topic}',
                   'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
                   'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = '{bounded}');
                 CREATE TABLE snk (id BIGINT) WITH ('connector' = 'blackhole');
                 INSERT INTO snk SELECT id FROM src;"
            ),
            "src",
        );
        let ctx = SourceContext {
            table: t.clone(),
            schema: physical_schema(&t),
            subtask: 2,
            parallelism: 3,
            restore: Vec::new(),
            pending_records: Default::default(),
        };
        let mut r = connectors()
            .get(&t)
            .and_then(|f| f.create_source(&ctx))
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.splits(), 0);
        for _ in 0..3 {
            let mut o = SourceOutput::default();
            assert_eq!(
                r.poll(&mut o).unwrap_or_else(|e| panic!("{e}")),
                want,
                "{bounded}"
            );
            assert!(o.batches.is_empty());
        }
    }
}

/// The source publishes its consumer lag (Flink's `pendingRecords`), which the
/// JobManager exports as `sluice_source_pending_records`.
#[test]
fn source_reports_its_consumer_lag_as_pending_records() {
    let bootstrap = kafka().bootstrap_servers.clone();
    let topic = unique_name("lag-");
    create_topic(&bootstrap, &topic, 2);
    produce(&bootstrap, &topic, 2, 1..=20_000);
    let t = plan_table(
        &format!(
            "CREATE TABLE src (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{topic}',
               'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
               'scan.startup.mode' = 'earliest-offset');
             CREATE TABLE snk (id BIGINT) WITH ('connector' = 'blackhole');
             INSERT INTO snk SELECT id FROM src;"
        ),
        "src",
    );
    let pending = std::sync::Arc::new(std::sync::atomic::AtomicI64::new(-1));
    let ctx = SourceContext {
        table: t.clone(),
        schema: physical_schema(&t),
        subtask: 0,
        parallelism: 1,
        restore: Vec::new(),
        pending_records: pending.clone(),
    };
    let mut r = connectors()
        .get(&t)
        .and_then(|f| f.create_source(&ctx))
        .unwrap_or_else(|e| panic!("{e}"));
    let lag = || pending.load(std::sync::atomic::Ordering::Relaxed);
    let mut read = 0;
    let mut poll = |r: &mut Box<dyn SourceReader>| {
        let mut o = SourceOutput::default();
        r.poll(&mut o).unwrap_or_else(|e| panic!("{e}"));
        read += o.batches.iter().map(|(_, b)| b.num_rows()).sum::<usize>();
        read
    };
    // One poll takes at most one batch: the rest is pending when the next statistics come.
    let first = poll(&mut r);
    assert!(first < 20_000, "one poll read everything ({first})");
    std::thread::sleep(Duration::from_millis(1300));
    poll(&mut r);
    let seen = lag();
    assert!(
        seen > 0 && seen <= 20_000 - first as i64,
        "pending records {seen} after reading {first} of 20000"
    );
    // Read to the end: the lag drops to zero.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while poll(&mut r) < 20_000 || lag() != 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "pending records still {} after reading {read} of 20000",
            lag()
        );
    }
}

#[test]
fn source_restores_partition_offsets_at_another_parallelism() {
    let bootstrap = kafka().bootstrap_servers.clone();
    let topic = unique_name("src-");
    create_topic(&bootstrap, &topic, 4);
    produce(&bootstrap, &topic, 4, 1..=200);
    let sql = |mode: &str| {
        format!(
            "CREATE TABLE src (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{topic}',
               'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
               'scan.startup.mode' = '{mode}', 'scan.bounded.mode' = 'latest-offset');
             CREATE TABLE snk (id BIGINT) WITH ('connector' = 'blackhole');
             INSERT INTO snk SELECT id FROM src;"
        )
    };
    let t = plan_table(&sql("earliest-offset"), "src");
    let ctx = |t: &sluice_sql::TableDef, subtask, parallelism, restore: &[Vec<u8>]| SourceContext {
        table: t.clone(),
        schema: physical_schema(t),
        subtask,
        parallelism,
        restore: restore.to_vec(),
        pending_records: Default::default(),
    };
    let c = connectors();
    // Parallelism 2 (partitions {0, 2} and {1, 3}) reads what is there; a
    // checkpoint takes the positions.
    let mut seen = Vec::new();
    let mut positions = Vec::new();
    for st in 0..2 {
        let mut r = c
            .get(&t)
            .and_then(|f| f.create_source(&ctx(&t, st, 2, &[])))
            .unwrap_or_else(|e| panic!("{e}"));
        seen.extend(drain(r.as_mut()));
        positions.push(r.position());
    }
    assert_exactly(seen.clone(), 1..=200);
    produce(&bootstrap, &topic, 4, 201..=400);
    // Restored at parallelism 3 with 'latest-offset': the startup mode does
    // not apply to a restore, so every partition resumes where it stopped.
    let t2 = plan_table(&sql("latest-offset"), "src");
    for st in 0..3 {
        let mut r = c
            .get(&t2)
            .and_then(|f| f.create_source(&ctx(&t2, st, 3, &positions)))
            .unwrap_or_else(|e| panic!("{e}"));
        seen.extend(drain(r.as_mut()));
    }
    assert_exactly(seen, 1..=400);
}

const PREFIX_UID: &str = "0-snk";

fn eos_sink(bootstrap: &str, topic: &str, prefix: &str, subtask: usize) -> Box<dyn SinkWriter> {
    eos_sink_with(bootstrap, topic, prefix, subtask, Default::default())
}

fn eos_sink_with(
    bootstrap: &str,
    topic: &str,
    prefix: &str,
    subtask: usize,
    cancelled: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Box<dyn SinkWriter> {
    let t = plan_table(
        &format!(
            "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen');
             CREATE TABLE snk (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{topic}',
               'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json',
               'key.fields' = 'id', 'sink.delivery-guarantee' = 'exactly-once',
               'sink.transactional-id-prefix' = '{prefix}');
             INSERT INTO snk SELECT id FROM src;"
        ),
        "snk",
    );
    assert!(sluice_runtime::connector::sink_wants_exactly_once(&t));
    let ctx = SinkContext {
        schema: physical_schema(&t),
        table: t.clone(),
        updating: false,
        subtask,
        parallelism: 2,
        job_id: "job-1".into(),
        sink_uid: PREFIX_UID.into(),
        exactly_once: true,
        cancelled,
    };
    connectors()
        .get(&t)
        .and_then(|f| f.create_sink(&ctx))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn id_batch(ids: std::ops::RangeInclusive<i64>) -> RecordBatch {
    RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, true)])),
        vec![std::sync::Arc::new(Int64Array::from_iter_values(ids))],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Ids by fate over both partitions of the log.
fn log_ids(bootstrap: &str, topic: &str, fate: Fate) -> Vec<i64> {
    let mut ids = Vec::new();
    for p in 0..2 {
        let log = read_partition(bootstrap, topic, p).unwrap_or_else(|e| panic!("{e:#}"));
        for r in log.with_fate(fate) {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap_or(b""))
                .unwrap_or_else(|e| panic!("{e}"));
            ids.push(v["id"].as_i64().unwrap_or_else(|| panic!("no id in {v}")));
        }
    }
    ids
}

/// The highest committed commit sequence of `subtask` in the sink's marker
/// topic (-1: none).
fn marker_sequence(bootstrap: &str, prefix: &str, sink_uid: &str, subtask: usize) -> i64 {
    let topic = format!("{prefix}-commits");
    let log = match read_partition(bootstrap, &topic, 0) {
        Ok(l) => l,
        // Not created yet: no commit so far.
        Err(e) if format!("{e:#}").contains("error code 3") => return -1,
        Err(e) => panic!("{e:#}"),
    };
    let key = sluice_connector_kafka::eos::marker_key(sink_uid, subtask);
    sluice_connector_kafka::eos::committed_markers(&log)
        .get(&key)
        .and_then(|(s, _)| *s)
        .map_or(-1, |s| s as i64)
}

fn marker_checkpoint(bootstrap: &str, prefix: &str, subtask: usize) -> i64 {
    let s = marker_sequence(bootstrap, prefix, PREFIX_UID, subtask);
    assert!(s >= 0, "no commit marker of subtask {subtask}");
    s
}

#[test]
fn exactly_once_sink_survives_every_crash_window() {
    let bootstrap = kafka().bootstrap_servers.clone();
    let topic = unique_name("eos-");
    let prefix = unique_name("tx-");
    create_topic(&bootstrap, &topic, 2);

    let mut a = eos_sink(&bootstrap, &topic, &prefix, 0);
    a.write(&id_batch(1..=10)).unwrap_or_else(|e| panic!("{e}"));
    a.flush().unwrap_or_else(|e| panic!("{e}"));
    let c1 = a.prepare_commit(1).unwrap_or_else(|e| panic!("{e}"));
    assert!(log_ids(&bootstrap, &topic, Fate::Committed).is_empty());
    a.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=10);
    assert_eq!(marker_checkpoint(&bootstrap, &prefix, 0), 1);
    a.write(&id_batch(11..=20))
        .unwrap_or_else(|e| panic!("{e}"));
    let c2 = a.prepare_commit(2).unwrap_or_else(|e| panic!("{e}"));
    a.write(&id_batch(21..=25))
        .unwrap_or_else(|e| panic!("{e}"));
    // Crash after checkpoint 2 completed, before its commit.
    drop(a);
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=10);

    // A zombie of subtask 0 (a commit cut off mid-transaction): same
    // transactional id, records produced, never committed.
    let zombie: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", format!("{prefix}-0"))
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    zombie
        .init_transactions(T)
        .unwrap_or_else(|e| panic!("{e}"));
    zombie.begin_transaction().unwrap_or_else(|e| panic!("{e}"));
    for i in 900..905 {
        let v = format!("{{\"id\":{i}}}");
        zombie
            .send(BaseRecord::<(), _>::to(&topic).payload(&v).partition(0))
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
    zombie.flush(T).unwrap_or_else(|e| panic!("{e}"));

    // Restore into subtask 1 (a rescale): it commits subtask 0's
    // committables under subtask 0's transactional id and marker, each twice.
    let mut b = eos_sink(&bootstrap, &topic, &prefix, 1);
    for _ in 0..2 {
        b.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
        b.commit(2, &c2).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=20);
    assert_eq!(marker_checkpoint(&bootstrap, &prefix, 0), 2);
    // init_transactions of the restored producer fenced the zombie and
    // aborted its transaction.
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Aborted), 900..=904);
    assert!(
        zombie.commit_transaction(T).is_err(),
        "a fenced producer must not commit"
    );
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=20);

    b.write(&id_batch(21..=30))
        .unwrap_or_else(|e| panic!("{e}"));
    let c3 = b.prepare_commit(3).unwrap_or_else(|e| panic!("{e}"));
    b.commit(3, &c3).unwrap_or_else(|e| panic!("{e}"));
    // Crash after the commit: the restore repeats it, and a late older one.
    drop(b);
    let mut c = eos_sink(&bootstrap, &topic, &prefix, 0);
    c.commit(3, &c3).unwrap_or_else(|e| panic!("{e}"));
    c.commit(2, &c2).unwrap_or_else(|e| panic!("{e}"));
    let empty = c.prepare_commit(4).unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.is_empty());
    c.commit(4, &empty).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=30);
    assert_eq!(marker_checkpoint(&bootstrap, &prefix, 1), 3);
    assert!(log_ids(&bootstrap, &topic, Fate::Open).is_empty());
}

/// Subtask `subtask`'s producer writes ids 900 and 901 (one per partition) in a
/// transaction and dies without ending it.
fn die_inside_a_transaction(bootstrap: &str, topic: &str, prefix: &str, subtask: usize) {
    let dead: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("transactional.id", format!("{prefix}-{subtask}"))
        .create()
        .unwrap_or_else(|e| panic!("{e}"));
    dead.init_transactions(T).unwrap_or_else(|e| panic!("{e}"));
    dead.begin_transaction().unwrap_or_else(|e| panic!("{e}"));
    for (i, p) in [(900, 0), (901, 1)] {
        let v = format!("{{\"id\":{i}}}");
        dead.send(BaseRecord::<(), _>::to(topic).payload(&v).partition(p))
            .unwrap_or_else(|(e, _)| panic!("{e}"));
    }
    dead.flush(T).unwrap_or_else(|e| panic!("{e}"));
    std::mem::forget(dead);
}

/// The kill campaign's duplicates: subtask 1 crashed inside a transaction (records
/// produced, never ended) while subtask 0 committed checkpoint 1. tansu applies subtask
/// 0's marker only once no other transaction on those partitions is open, so right
/// after the crash the marker still says "nothing committed" although the records are
/// committed; a restore that trusted it would commit them again. The task layer's
/// restore first lets every restored sink subtask `recover` (which aborts subtask 1's
/// dead transaction and settles the marker), then re-commits.
#[test]
fn a_restore_after_a_crash_inside_another_transaction_commits_once() {
    let bootstrap = kafka().bootstrap_servers.clone();
    let topic = unique_name("eos-late-");
    let prefix = unique_name("tx-");
    create_topic(&bootstrap, &topic, 2);

    // Subtask 1 dies inside a transaction on both partitions.
    die_inside_a_transaction(&bootstrap, &topic, &prefix, 1);

    // Subtask 0 commits checkpoint 1 (ids on both partitions), then crashes.
    let mut a = eos_sink(&bootstrap, &topic, &prefix, 0);
    a.write(&id_batch(1..=10)).unwrap_or_else(|e| panic!("{e}"));
    let c1 = a.prepare_commit(1).unwrap_or_else(|e| panic!("{e}"));
    a.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
    drop(a);
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=10);

    // The restored attempt: both subtasks recover before either re-commits.
    let mut r0 = eos_sink(&bootstrap, &topic, &prefix, 0);
    let mut r1 = eos_sink(&bootstrap, &topic, &prefix, 1);
    r0.recover(&[0]).unwrap_or_else(|e| panic!("{e}"));
    r1.recover(&[1]).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(marker_checkpoint(&bootstrap, &prefix, 0), 1);
    r0.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=10);
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Aborted), 900..=901);
    assert!(log_ids(&bootstrap, &topic, Fate::Open).is_empty());
}

/// tansu keeps an offset sent to a transaction back while another producer's transaction on
/// the same partitions is open, and the abort of the committing producer's next transaction
/// drops it. The commit markers are records, so their fate is their transaction's: a commit
/// followed by an aborted one is still seen as committed after a restore.
#[test]
fn a_commit_followed_by_an_aborted_transaction_is_not_repeated() {
    let bootstrap = kafka().bootstrap_servers.clone();
    let topic = unique_name("eos-next-");
    let prefix = unique_name("tx-");
    create_topic(&bootstrap, &topic, 2);

    // Subtask 1 dies inside a transaction on both partitions.
    die_inside_a_transaction(&bootstrap, &topic, &prefix, 1);

    // Subtask 0 commits checkpoint 1, then its commit of checkpoint 2 is aborted.
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut a = eos_sink_with(&bootstrap, &topic, &prefix, 0, cancelled.clone());
    a.write(&id_batch(1..=10)).unwrap_or_else(|e| panic!("{e}"));
    let c1 = a.prepare_commit(1).unwrap_or_else(|e| panic!("{e}"));
    a.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
    a.write(&id_batch(11..=20))
        .unwrap_or_else(|e| panic!("{e}"));
    let c2 = a.prepare_commit(2).unwrap_or_else(|e| panic!("{e}"));
    cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(a.commit(2, &c2).is_err(), "a cancelled commit went through");
    drop(a);
    assert_eq!(marker_checkpoint(&bootstrap, &prefix, 0), 1);

    let mut r0 = eos_sink(&bootstrap, &topic, &prefix, 0);
    let mut r1 = eos_sink(&bootstrap, &topic, &prefix, 1);
    r0.recover(&[0]).unwrap_or_else(|e| panic!("{e}"));
    r1.recover(&[1]).unwrap_or_else(|e| panic!("{e}"));
    for _ in 0..2 {
        r0.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
        r0.commit(2, &c2).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=20);
    assert_eq!(marker_checkpoint(&bootstrap, &prefix, 0), 2);

    // A third attempt re-reads the markers from the committables' floors.
    let mut s0 = eos_sink(&bootstrap, &topic, &prefix, 0);
    s0.recover(&[0]).unwrap_or_else(|e| panic!("{e}"));
    s0.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
    s0.commit(2, &c2).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=20);
}

/// A commit of a cancelled attempt gives up at once: its subtask must end within the
/// TaskManager's cancellation timeout, and the restore commits the same records again.
#[test]
fn a_cancelled_commit_returns_at_once_and_commits_nothing() {
    let bootstrap = kafka().bootstrap_servers.clone();
    let topic = unique_name("eos-cancel-");
    let prefix = unique_name("tx-");
    create_topic(&bootstrap, &topic, 2);
    let cancelled = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut a = eos_sink_with(&bootstrap, &topic, &prefix, 0, cancelled.clone());
    a.write(&id_batch(1..=20_000))
        .unwrap_or_else(|e| panic!("{e}"));
    let c1 = a.prepare_commit(1).unwrap_or_else(|e| panic!("{e}"));
    cancelled.store(true, std::sync::atomic::Ordering::SeqCst);
    let started = std::time::Instant::now();
    let res = a.commit(1, &c1);
    let took = started.elapsed();
    assert!(res.is_err(), "a cancelled commit went through");
    assert!(
        took < Duration::from_secs(3),
        "the cancelled commit took {took:?}"
    );
    drop(a);
    assert!(log_ids(&bootstrap, &topic, Fate::Committed).is_empty());

    let mut r = eos_sink(&bootstrap, &topic, &prefix, 0);
    r.recover(&[0]).unwrap_or_else(|e| panic!("{e}"));
    r.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=20_000);
    assert!(log_ids(&bootstrap, &topic, Fate::Open).is_empty());
}

#[test]
fn only_a_sink_that_asks_for_it_is_exactly_once() {
    let bootstrap = kafka().bootstrap_servers.clone();
    let topic = unique_name("alo-");
    create_topic(&bootstrap, &topic, 2);
    let table = |extra: &str| {
        plan_table(
            &format!(
                "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen');
                 CREATE TABLE snk (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{topic}',
                   'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json'{extra});
                 INSERT INTO snk SELECT id FROM src;"
            ),
            "snk",
        )
    };
    let ctx = |t: &sluice_sql::TableDef| SinkContext {
        schema: physical_schema(t),
        table: t.clone(),
        updating: false,
        subtask: 0,
        parallelism: 1,
        job_id: "job-1".into(),
        sink_uid: PREFIX_UID.into(),
        exactly_once: true,
        cancelled: Default::default(),
    };
    // Exactly-once without a transactional id prefix is refused.
    let t = table(", 'sink.delivery-guarantee' = 'exactly-once'");
    let e = connectors()
        .get(&t)
        .and_then(|f| f.create_sink(&ctx(&t)))
        .err()
        .unwrap_or_else(|| panic!("accepted exactly-once without a prefix"));
    assert!(
        e.to_string().contains("sink.transactional-id-prefix"),
        "{e}"
    );
    // The default guarantee stays at-least-once in an exactly-once job:
    // records are out (outside transactions) after a flush.
    let t = table("");
    let mut s = connectors()
        .get(&t)
        .and_then(|f| f.create_sink(&ctx(&t)))
        .unwrap_or_else(|e| panic!("{e}"));
    s.write(&id_batch(1..=5)).unwrap_or_else(|e| panic!("{e}"));
    let c = s.prepare_commit(1).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.is_empty());
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=5);
    let log = read_partition(&bootstrap, &topic, 0).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(log.records.iter().all(|(r, _)| !r.transactional));
}

// ---- end to end: a real process killed mid-job, restored from its latest checkpoint ----

const E2E_ROWS: i64 = 20_000;
const E2E_CHILD: &str = "SLUICE_KAFKA_E2E_CHILD";

fn e2e_plan(bootstrap: &str, topic: &str, prefix: &str) -> sluice_sql::JobPlan {
    sluice_sql::plan(&format!(
        "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '4000',
           'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '{E2E_ROWS}');
         CREATE TABLE snk (id BIGINT) WITH ('connector' = 'kafka', 'topic' = '{topic}',
           'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json', 'key.fields' = 'id',
           'sink.delivery-guarantee' = 'exactly-once', 'sink.transactional-id-prefix' = '{prefix}');
         INSERT INTO snk SELECT id FROM src;"
    ))
    .unwrap_or_else(|e| panic!("{e:?}"))
}

/// Runs the job at parallelism 2 with exactly-once checkpoints every 100 ms
/// in `dir` (a new generation), restoring the latest checkpoint if asked.
fn e2e_run(
    bootstrap: &str,
    topic: &str,
    prefix: &str,
    dir: &std::path::Path,
    restore: bool,
) -> Option<u64> {
    use sluice_blob::checkpoint::CheckpointStore;
    use sluice_blob::{BlobPath, BlobStore, FsStore};
    use sluice_runtime::coordinator::CheckpointConfig;
    use sluice_runtime::task::local::{LocalCheckpointing, LocalOptions, run_local};
    use sluice_runtime::task::{CheckpointingMode, RestoreSnapshot};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let (store, latest) = rt.block_on(async {
        let fs: std::sync::Arc<dyn BlobStore> =
            std::sync::Arc::new(FsStore::open(dir).await.unwrap_or_else(|e| panic!("{e}")));
        let root = BlobPath::new("jobs/e2e").unwrap_or_else(|e| panic!("{e}"));
        let generation = if restore { 2 } else { 1 };
        let store = CheckpointStore::new(fs, root, generation).unwrap_or_else(|e| panic!("{e}"));
        store.claim().await.unwrap_or_else(|e| panic!("{e}"));
        let latest = if restore {
            RestoreSnapshot::latest(&store)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        } else {
            None
        };
        (store, latest)
    });
    assert_eq!(
        restore,
        latest.is_some(),
        "a restore needs a completed checkpoint"
    );
    let restored_from = latest.as_ref().map(|l| l.checkpoint_id());
    drop(rt);
    let mut cfg = sluice_runtime::JobConfig::new(2);
    cfg.idle_timeout = None;
    run_local(
        &e2e_plan(bootstrap, topic, prefix),
        &connectors(),
        &cfg,
        LocalOptions {
            job_id: "e2e".into(),
            checkpointing: Some(LocalCheckpointing {
                store,
                config: CheckpointConfig {
                    interval_ms: 100,
                    min_pause_ms: 0,
                    timeout_ms: 30_000,
                    retain_last: 3,
                    mode: CheckpointingMode::ExactlyOnce,
                },
            }),
            restore: latest,
            ..LocalOptions::default()
        },
        &sluice_runtime::MetricsRegistry::new(),
    )
    .unwrap_or_else(|e| panic!("the job failed: {e}"));
    restored_from
}

#[test]
fn kill_9_mid_job_then_restore_latest_delivers_every_record_once() {
    if let Ok(args) = std::env::var(E2E_CHILD) {
        // The child: run until the parent kills it.
        let a: Vec<&str> = args.split('|').collect();
        e2e_run(a[0], a[1], a[2], std::path::Path::new(a[3]), false);
        return;
    }
    let bootstrap = kafka().bootstrap_servers.clone();
    let topic = unique_name("e2e-");
    let prefix = unique_name("tx-");
    create_topic(&bootstrap, &topic, 2);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("{e}"));
    let mut child = std::process::Command::new(exe)
        .args([
            "kill_9_mid_job_then_restore_latest_delivers_every_record_once",
            "--exact",
            "--nocapture",
        ])
        .env(
            E2E_CHILD,
            format!("{bootstrap}|{topic}|{prefix}|{}", dir.path().display()),
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    // Kill it once both sink subtasks committed a few checkpoints.
    let marker = |st: usize| marker_sequence(&bootstrap, &prefix, "0-snk", st);
    // A marker holds the commit sequence: generation above, checkpoint id in the low 32 bits.
    let checkpoint = |subtask| {
        let m = marker(subtask);
        if m < 0 { -1 } else { m & 0xffff_ffff }
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while checkpoint(0) < 3 || checkpoint(1) < 3 {
        assert!(
            child.try_wait().ok().flatten().is_none(),
            "the job ended before it was killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no commits within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap_or_else(|e| panic!("{e}"));
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    assert!(status.code().is_none(), "killed by a signal: {status:?}");
    let before = log_ids(&bootstrap, &topic, Fate::Committed);
    assert!(!before.is_empty() && (before.len() as i64) < E2E_ROWS);

    let from = e2e_run(&bootstrap, &topic, &prefix, dir.path(), true);
    assert!(from.is_some_and(|id| id >= 3), "restored from {from:?}");
    assert_exactly(log_ids(&bootstrap, &topic, Fate::Committed), 1..=E2E_ROWS);
    assert!(log_ids(&bootstrap, &topic, Fate::Open).is_empty());
}

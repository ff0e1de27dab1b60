//! The kill campaign of issue 5 on the real cluster: 1 JobManager + 2 TaskManagers
//! run the rolling-count job at parallelism 2 into exactly-once sinks of one
//! `EXECUTE STATEMENT SET` (filesystem, jdbc append, jdbc upsert and Kafka), while the
//! test SIGKILLs TaskManagers at random moments (a replacement each time), SIGKILLs the
//! JobManager (the next generation takes over with `--restore latest` on the same RPC
//! address), and arms every failpoint in a process it starts (`SLUICE_FAILPOINTS`; the
//! process aborts itself there). At the end every expected row is in each sink exactly
//! once. Kafka's output is read from the raw log with its transaction markers
//! (`sluice_test_support::kafka_log`): the tansu broker does not filter aborted records
//! for read_committed consumers. `SLUICE_KILL_KAFKA=0` leaves the Kafka sink out.
//!
//! `SLUICE_KILLS` (default 12) is the number of kills; `SLUICE_KILL_SEED` replays a
//! run's plan (steps, hits, choices; not its timing; the seed is printed).
//! `tests/kill-campaign.sh` runs it many times and with more kills.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::time::{Duration, Instant};

use sluice_connectors::filesystem::committed_files;
use sluice_test_support::kafka_log::{Fate, read_partition};
use sluice_test_support::process::{exit_status, send_signal, stop_owned};
use sluice_test_support::{unique_name, wait_for};
use sqlx::Connection;

use crate::cluster::{JmOpts, JobManager, TmOpts, job_id, libc_sigkill, start_jm, start_tm_with};

const USERS: u64 = 13;
/// Rows per second of the datagen source (the whole source, both subtasks).
const RATE: u64 = 1500;
/// Generous bound for one step (a restart, a failpoint being reached).
const STEP: Duration = Duration::from_secs(60);
const SIGABRT: i32 = 6;
/// Kills that the fixed part of the campaign performs (see `plan`).
const FIXED_KILLS: usize = 11;

/// The fault steps of a run. Each leaves the cluster at 1 JobManager + 2 TaskManagers.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// SIGKILL a random TaskManager at a random moment; start a replacement.
    KillTm,
    /// SIGKILL a random TaskManager; its replacement has the failpoint armed (at its
    /// `n`-th hit) and aborts there; then a plain replacement. Two kills.
    TmFailpoint(&'static str, u64),
    /// SIGKILL the JobManager; generation + 1 restores the latest checkpoint.
    KillJm,
    /// SIGKILL the JobManager; generation + 1 has `after_checkpoint_complete` armed
    /// (the coordinator runs in the JobManager) and aborts there, between `_metadata`
    /// and the sinks' commit; generation + 2 must commit that output once. Two kills.
    JmFailpoint(u64),
}

impl Step {
    fn kills(self) -> usize {
        match self {
            Step::KillTm | Step::KillJm => 1,
            Step::TmFailpoint(..) | Step::JmFailpoint(_) => 2,
        }
    }
}

/// xorshift64*: the test needs reproducible choices, not good randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The fixed steps (every failpoint once, both kinds of JobManager loss: 11 kills) and
/// random TaskManager kills up to `kills`, in a random order.
fn plan(kills: usize, rng: &mut Rng) -> Vec<Step> {
    let mut steps = vec![Step::KillJm, Step::JmFailpoint(1 + rng.below(2))];
    for p in [
        "before_snapshot",
        "after_upload",
        "before_sink_commit",
        "after_sink_commit",
    ] {
        steps.push(Step::TmFailpoint(p, 1 + rng.below(3)));
    }
    assert_eq!(steps.iter().map(|s| s.kills()).sum::<usize>(), FIXED_KILLS);
    steps.extend(std::iter::repeat_n(
        Step::KillTm,
        kills.saturating_sub(FIXED_KILLS),
    ));
    // Fisher–Yates.
    for i in (1..steps.len()).rev() {
        let j = rng.below(i as u64 + 1) as usize;
        steps.swap(i, j);
    }
    steps
}

struct KafkaOut<'a> {
    bootstrap: &'a str,
    topic: &'a str,
    prefix: &'a str,
}

fn write_job(
    dir: &Path,
    rows: u64,
    out: &Path,
    pg_url: &str,
    kafka: Option<&KafkaOut<'_>>,
) -> std::path::PathBuf {
    let job = dir.join("kill-campaign.sql");
    let over = "COUNT(*) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)";
    let jdbc = |table: &str| {
        format!(
            "'connector' = 'jdbc', 'url' = '{pg_url}', 'table-name' = '{table}', 'username' = 'postgres'"
        )
    };
    std::fs::write(
        &job,
        format!(
            "CREATE TABLE events (\n  id BIGINT,\n  user_id AS id % {USERS},\n  ts AS TO_TIMESTAMP_LTZ(id * 10, 3),\n  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND\n) WITH (\n  'connector' = 'datagen',\n  'rows-per-second' = '{RATE}',\n  'fields.id.kind' = 'sequence',\n  'fields.id.start' = '0',\n  'fields.id.end' = '{}'\n);\n\
             CREATE TABLE counts_fs (id BIGINT, user_id BIGINT, user_event_count BIGINT)\n  WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\n\
             CREATE TABLE counts_pg (id BIGINT, user_id BIGINT, user_event_count BIGINT)\n  WITH ({});\n\
             CREATE TABLE totals_pg (user_id BIGINT, total BIGINT, PRIMARY KEY (user_id) NOT ENFORCED)\n  WITH ({});\n\
             {}\
             EXECUTE STATEMENT SET\nBEGIN\n\
             INSERT INTO counts_fs SELECT id, user_id, {over} FROM events;\n\
             INSERT INTO counts_pg SELECT id, user_id, {over} FROM events;\n\
             INSERT INTO totals_pg SELECT user_id, COUNT(*) FROM events GROUP BY user_id;\n\
             {}\
             END;\n",
            rows - 1,
            out.display(),
            jdbc("counts"),
            jdbc("totals"),
            kafka.map_or(String::new(), |k| format!(
                "CREATE TABLE counts_kafka (id BIGINT, user_id BIGINT, user_event_count BIGINT) WITH (\n  'connector' = 'kafka', 'topic' = '{}', 'properties.bootstrap.servers' = '{}',\n  'format' = 'json', 'key.format' = 'json', 'key.fields' = 'user_id',\n  'sink.delivery-guarantee' = 'exactly-once', 'sink.transactional-id-prefix' = '{}'\n);\n",
                k.topic, k.bootstrap, k.prefix
            )),
            kafka.map_or(String::new(), |_| format!(
                "INSERT INTO counts_kafka SELECT id, user_id, {over} FROM events;\n"
            )),
        ),
    )
    .expect("write job");
    job
}

/// One row per id with its rank among its user's ids, sorted.
fn expected_counts(rows: u64) -> Vec<(i64, i64, i64)> {
    (0..rows)
        .map(|i| (i as i64, (i % USERS) as i64, (i / USERS + 1) as i64))
        .collect()
}

fn expected_totals(rows: u64) -> Vec<(i64, i64)> {
    (0..USERS.min(rows))
        .map(|u| (u as i64, rows.saturating_sub(u).div_ceil(USERS) as i64))
        .collect()
}

fn fs_rows(out: &Path) -> Vec<(i64, i64, i64)> {
    let mut rows = Vec::new();
    for f in committed_files(out).expect("list output") {
        for line in std::fs::read_to_string(&f).expect("read output").lines() {
            let v: serde_json::Value = serde_json::from_str(line).expect("output JSON");
            rows.push((
                v["id"].as_i64().expect("id"),
                v["user_id"].as_i64().expect("user_id"),
                v["user_event_count"].as_i64().expect("count"),
            ));
        }
    }
    rows.sort();
    rows
}

const KAFKA_PARTITIONS: i32 = 2;

/// The committed records of the Kafka sink's topic, resolved through their transaction
/// markers. Records of a transaction still open at the end are a failure too: the job
/// finished, so every transaction it began must have ended.
fn kafka_rows(bootstrap: &str, topic: &str) -> Vec<(i64, i64, i64)> {
    let mut rows = Vec::new();
    let mut seen: std::collections::HashMap<i64, (i32, i64, i64)> = Default::default();
    for partition in 0..KAFKA_PARTITIONS {
        let log = read_partition(bootstrap, topic, partition)
            .unwrap_or_else(|e| panic!("reading {topic}/{partition}: {e:#}"));
        let open = log.with_fate(Fate::Open);
        assert!(
            open.is_empty(),
            "{} records of {topic}/{partition} are in transactions that never ended (first at offset {})",
            open.len(),
            open[0].offset
        );
        for r in log.committed() {
            let v: serde_json::Value =
                serde_json::from_slice(r.value.as_deref().expect("a value")).expect("output JSON");
            let row = (
                v["id"].as_i64().expect("id"),
                v["user_id"].as_i64().expect("user_id"),
                v["user_event_count"].as_i64().expect("count"),
            );
            // Where a duplicate came from (which producer, which offsets) is what a
            // failure needs to be understood.
            if let Some((p0, o0, pid0)) = seen.insert(row.0, (partition, r.offset, r.producer_id)) {
                eprintln!(
                    "kafka duplicate id {}: {topic}/{p0}@{o0} (producer {pid0}) and {topic}/{partition}@{} (producer {})",
                    row.0, r.offset, r.producer_id
                );
            }
            rows.push(row);
        }
    }
    rows
}

/// Panics with a summary (size, duplicates, missing) when `got` is not `want`.
fn assert_same<T: Ord + Clone + std::fmt::Debug>(sink: &str, mut got: Vec<T>, want: &[T]) {
    got.sort();
    if got == want {
        return;
    }
    let dups: Vec<&T> = got
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    let missing: Vec<&T> = want
        .iter()
        .filter(|r| got.binary_search(r).is_err())
        .collect();
    let extra: Vec<&T> = got
        .iter()
        .filter(|r| want.binary_search(r).is_err())
        .collect();
    panic!(
        "{sink}: {} rows, want {}; {} duplicated (first {:?}), {} missing (first {:?}), {} unexpected (first {:?})",
        got.len(),
        want.len(),
        dups.len(),
        dups.first(),
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first(),
    );
}

struct Cluster<'a> {
    dir: &'a Path,
    job: &'a Path,
    id: String,
    ckpt: String,
    jm: JobManager,
    generation: u64,
    tms: Vec<u32>,
    next_tm: usize,
}

/// Small backoff cap: the campaign restarts the job a dozen times or more, and the
/// default (doubling to 10 s) would spend the time budget waiting.
const JM_EXTRA: &[&str] = &["--restart-backoff-max-ms", "400"];

impl Cluster<'_> {
    async fn start_jm(&mut self, env: &[(String, String)]) {
        self.generation += 1;
        let rpc = self.jm.rpc.clone();
        self.jm = start_jm(
            self.dir,
            self.job,
            &self.id,
            &self.ckpt,
            JmOpts {
                generation: self.generation,
                parallelism: 2,
                interval_ms: 200,
                restore: "latest",
                rpc_addr: Some(&rpc),
                token_file: None,
                env,
                extra: JM_EXTRA,
            },
        )
        .await;
        assert_eq!(
            self.jm.rpc, rpc,
            "the new JobManager took another RPC address"
        );
    }

    fn start_tm(&mut self, env: &[(String, String)]) -> u32 {
        self.next_tm += 1;
        start_tm_with(
            &self.jm.rpc,
            &format!("tm{}", self.next_tm),
            1,
            self.dir,
            TmOpts {
                env,
                ..TmOpts::default()
            },
        )
    }

    /// The job runs and has completed a checkpoint in this deployment, so each kill
    /// lands on a job that makes progress (otherwise the campaign could kill the same
    /// restart over and over and the job would never finish).
    async fn wait_progress(&self) {
        let jm = &self.jm;
        let id = &self.id;
        let before = wait_for("the job RUNNING", STEP, || async {
            let s = jm.state(id).await;
            assert!(
                s != "FINISHED",
                "the job finished before the campaign's last kill: raise its row count"
            );
            assert!(s != "FAILED" && s != "CANCELED", "the job is {s}");
            if s == "RUNNING" {
                Some(jm.metric(id, "numberOfCompletedCheckpoints").await)
            } else {
                None
            }
        })
        .await
        .expect("job running");
        wait_for("a checkpoint of this deployment", STEP, || async {
            assert!(
                jm.state(id).await != "FINISHED",
                "the job finished before the campaign's last kill: raise its row count"
            );
            (jm.metric(id, "numberOfCompletedCheckpoints").await > before).then_some(())
        })
        .await
        .expect("a completed checkpoint");
    }

    async fn kill_tm(&mut self, rng: &mut Rng) -> usize {
        let i = rng.below(self.tms.len() as u64) as usize;
        let pid = self.tms.swap_remove(i);
        send_signal(pid, libc_sigkill());
        wait_exit(pid, "a SIGKILLed TaskManager").await;
        i
    }
}

async fn wait_exit(pid: u32, what: &str) -> std::process::ExitStatus {
    wait_for(&format!("{what} to exit"), STEP, || async {
        exit_status(pid)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn pg_query<T>(url: &str, sql: &str) -> Vec<T>
where
    T: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
{
    let mut c = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::query_as::<_, T>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_all(&mut c)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkills_and_failpoints_lose_and_duplicate_nothing() {
    let kills: usize = std::env::var("SLUICE_KILLS")
        .ok()
        .map(|k| k.parse().expect("SLUICE_KILLS is a number"))
        .unwrap_or(12);
    let seed: u64 = std::env::var("SLUICE_KILL_SEED")
        .ok()
        .map(|s| s.parse().expect("SLUICE_KILL_SEED is a number"))
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    let mut rng = Rng(seed | 1);
    let steps = plan(kills, &mut rng);
    // Each step lets the job run for a checkpoint or three and a random moment, about
    // 1.5 s of source time at most; the rest is the run-out after the last step.
    let rows = RATE * (2 * steps.len() as u64 + 8);
    eprintln!("kill campaign: seed {seed}, {rows} rows, steps {steps:?}");

    let dir = tempfile::tempdir().expect("tempdir");
    let pg = sluice_test_support::postgres()
        .fresh_database()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut c = sqlx::PgConnection::connect(&pg)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    sqlx::raw_sql(
        "CREATE TABLE counts (id BIGINT, user_id BIGINT, user_event_count BIGINT);\
         CREATE TABLE totals (user_id BIGINT PRIMARY KEY, total BIGINT);",
    )
    .execute(&mut c)
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let out = dir.path().join("out");
    let bootstrap = sluice_test_support::kafka().bootstrap_servers.clone();
    let topic = unique_name("kill-campaign");
    crate::seed_kafka::create_topic(&bootstrap, &topic, KAFKA_PARTITIONS);
    let prefix = format!("{topic}-tx");
    let kafka = KafkaOut {
        bootstrap: &bootstrap,
        topic: &topic,
        prefix: &prefix,
    };
    let with_kafka = std::env::var_os("SLUICE_KILL_KAFKA").is_none_or(|v| v != "0");
    let job = write_job(dir.path(), rows, &out, &pg, with_kafka.then_some(&kafka));
    let id = job_id();
    let ckpt = format!("file://{}/job", dir.path().display());
    let started = Instant::now();
    let jm = start_jm(
        dir.path(),
        &job,
        &id,
        &ckpt,
        JmOpts {
            restore: "latest",
            extra: JM_EXTRA,
            ..JmOpts::default()
        },
    )
    .await;
    let mut cl = Cluster {
        dir: dir.path(),
        job: &job,
        id,
        ckpt,
        jm,
        generation: 1,
        tms: Vec::new(),
        next_tm: 0,
    };
    for _ in 0..2 {
        let pid = cl.start_tm(&[]);
        cl.tms.push(pid);
    }

    let mut done = 0;
    for (n, step) in steps.iter().copied().enumerate() {
        cl.wait_progress().await;
        match step {
            Step::KillTm => {
                // A random moment: anywhere in the next checkpoint intervals.
                tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
                cl.kill_tm(&mut rng).await;
                let pid = cl.start_tm(&[]);
                cl.tms.push(pid);
            }
            Step::TmFailpoint(point, hit) => {
                cl.kill_tm(&mut rng).await;
                let env = [("SLUICE_FAILPOINTS".to_string(), format!("{point}:{hit}"))];
                let armed = cl.start_tm(&env);
                let status =
                    wait_exit(armed, &format!("the TaskManager armed at {point}:{hit}")).await;
                assert_eq!(
                    status.signal(),
                    Some(SIGABRT),
                    "the TaskManager armed at {point} ended otherwise: {status}"
                );
                let pid = cl.start_tm(&[]);
                cl.tms.push(pid);
            }
            Step::KillJm => {
                tokio::time::sleep(Duration::from_millis(rng.below(500))).await;
                send_signal(cl.jm.pid, libc_sigkill());
                wait_exit(cl.jm.pid, "a SIGKILLed JobManager").await;
                cl.start_jm(&[]).await;
            }
            Step::JmFailpoint(hit) => {
                send_signal(cl.jm.pid, libc_sigkill());
                wait_exit(cl.jm.pid, "a SIGKILLed JobManager").await;
                let env = [(
                    "SLUICE_FAILPOINTS".to_string(),
                    format!("after_checkpoint_complete:{hit}"),
                )];
                cl.start_jm(&env).await;
                let status = wait_exit(
                    cl.jm.pid,
                    "the JobManager armed at after_checkpoint_complete",
                )
                .await;
                assert_eq!(
                    status.signal(),
                    Some(SIGABRT),
                    "the armed JobManager ended otherwise: {status}"
                );
                cl.start_jm(&[]).await;
            }
        }
        done += step.kills();
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!(
                "step {n} {step:?} done at {:?}, {done} kills",
                started.elapsed()
            );
        }
    }
    wait_for("the job FINISHED", Duration::from_secs(120), || async {
        let s = cl.jm.state(&cl.id).await;
        assert!(s != "FAILED" && s != "CANCELED", "the job is {s}");
        (s == "FINISHED").then_some(())
    })
    .await
    .expect("job finished");
    let elapsed = started.elapsed();
    let restarts = cl.jm.metric(&cl.id, "numRestarts").await;

    let want = expected_counts(rows);
    assert_same("filesystem sink", fs_rows(&out), &want);
    let pg_counts: Vec<(i64, i64, i64)> =
        pg_query(&pg, "SELECT id, user_id, user_event_count FROM counts").await;
    assert_same("jdbc append sink", pg_counts, &want);
    let totals: Vec<(i64, i64)> = pg_query(&pg, "SELECT user_id, total FROM totals").await;
    assert_same("jdbc upsert sink", totals, &expected_totals(rows));
    if with_kafka {
        assert_same("kafka sink", kafka_rows(&bootstrap, &topic), &want);
    }
    eprintln!(
        "kill campaign: seed {seed}, {done} kills ({} steps), {rows} rows, {restarts} restarts in the last JobManager (generation {}), {:.1} s",
        steps.len(),
        cl.generation,
        elapsed.as_secs_f64()
    );
    stop_owned(cl.jm.pid);
}

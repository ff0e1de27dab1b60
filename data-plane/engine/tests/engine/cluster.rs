//! The cluster with real processes: one `sluice-engine jobmanager` and TaskManagers
//! (`sluice-engine taskmanager`) on loopback, driven through the JobManager's REST API.
//! Kills are real `SIGKILL`s; output is checked row by row against what the job must
//! produce (and against `sluice-engine run`).
//!
//! The job: a rate-limited, bounded datagen of sequence ids → computed `user_id` and
//! event time → rolling count per user (`COUNT(*) OVER (PARTITION BY user_id ORDER BY ts
//! ROWS UNBOUNDED PRECEDING)`, the seed job's shape) → an exactly-once filesystem sink.
//! At parallelism 2 the OVER aggregation sits behind a hash exchange, which crosses the
//! two TaskManagers over TCP.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_connectors::filesystem::committed_files;
use sluice_test_support::process::{exit_status, send_signal, spawn_owned, stop_owned};
use sluice_test_support::wait_for;

const USERS: u64 = 13;
const T: Duration = Duration::from_secs(90);

pub(crate) fn engine() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_sluice-engine"));
    if std::env::var_os("TEST_LOG").is_none() {
        c.stderr(Stdio::null()).stdout(Stdio::null());
    }
    c
}

/// The job over `rows` ids at `rate` rows per second, written to `out`.
pub(crate) fn write_job(dir: &Path, rows: u64, rate: u64, out: &Path) -> PathBuf {
    let job = dir.join(format!(
        "job-{}.sql",
        out.file_name().and_then(|f| f.to_str()).unwrap_or("x")
    ));
    std::fs::write(
        &job,
        format!(
            "CREATE TABLE events (\n  id BIGINT,\n  user_id AS id % {USERS},\n  ts AS TO_TIMESTAMP_LTZ(id * 10, 3),\n  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND\n) WITH (\n  'connector' = 'datagen',\n  'rows-per-second' = '{rate}',\n  'fields.id.kind' = 'sequence',\n  'fields.id.start' = '0',\n  'fields.id.end' = '{}'\n);\n\
             CREATE TABLE counts (id BIGINT, user_id BIGINT, user_event_count BIGINT)\n  WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\n\
             INSERT INTO counts\nSELECT id, user_id,\n  COUNT(*) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)\nFROM events;\n",
            rows - 1,
            out.display()
        ),
    )
    .expect("write job");
    job
}

/// What the job must write: one row per id with its rank among its user's ids.
fn expected_rows(rows: u64) -> Vec<(u64, u64, u64)> {
    (0..rows).map(|i| (i, i % USERS, i / USERS + 1)).collect()
}

/// The committed output, sorted by id.
fn output_rows(out: &Path) -> Vec<(u64, u64, u64)> {
    let mut rows = Vec::new();
    for f in committed_files(out).expect("list output") {
        for line in std::fs::read_to_string(&f).expect("read output").lines() {
            let v: Value = serde_json::from_str(line).expect("output JSON");
            rows.push((
                v["id"].as_u64().expect("id"),
                v["user_id"].as_u64().expect("user_id"),
                v["user_event_count"].as_u64().expect("count"),
            ));
        }
    }
    rows.sort();
    rows
}

pub(crate) fn assert_exact(out: &Path, rows: u64) {
    let got = output_rows(out);
    let want = expected_rows(rows);
    if got != want {
        let mut seen = BTreeMap::new();
        for r in &got {
            *seen.entry(r.0).or_insert(0) += 1;
        }
        let dup = seen.iter().filter(|(_, n)| **n > 1).count();
        let missing = (0..rows).filter(|i| !seen.contains_key(i)).count();
        panic!(
            "output differs: {} rows, {dup} ids duplicated, {missing} missing, first rows {:?}",
            got.len(),
            &got[..got.len().min(5)]
        );
    }
}

pub(crate) struct JobManager {
    pub(crate) pid: u32,
    rest: String,
    pub(crate) rpc: String,
    client: reqwest::Client,
    token: Option<String>,
}

/// 32 hex digits, unique per test.
pub(crate) fn job_id() -> String {
    format!("{:0>32}", sluice_test_support::unique_name(""))
}

pub(crate) struct JmOpts<'a> {
    pub(crate) generation: u64,
    pub(crate) parallelism: usize,
    pub(crate) interval_ms: u64,
    pub(crate) restore: &'a str,
    pub(crate) rpc_addr: Option<&'a str>,
    pub(crate) token_file: Option<&'a Path>,
    pub(crate) env: &'a [(String, String)],
    pub(crate) extra: &'a [&'a str],
}

impl Default for JmOpts<'_> {
    /// Generation 1 at parallelism 2, checkpoints every 200 ms, a fresh start, no token.
    fn default() -> Self {
        JmOpts {
            generation: 1,
            parallelism: 2,
            interval_ms: 200,
            restore: "none",
            rpc_addr: None,
            token_file: None,
            env: &[],
            extra: &[],
        }
    }
}

pub(crate) async fn start_jm(
    dir: &Path,
    job: &Path,
    id: &str,
    ckpt: &str,
    o: JmOpts<'_>,
) -> JobManager {
    let ports = dir.join(format!("ports-{}.json", o.generation));
    let _ = std::fs::remove_file(&ports);
    let mut c = engine();
    c.args(["jobmanager", &job.to_string_lossy(), "--job-id", id])
        .args(["--generation", &o.generation.to_string()])
        .args(["--checkpoint-dir", ckpt])
        .args(["--ports-file", &ports.to_string_lossy()])
        .args(["--parallelism", &o.parallelism.to_string()])
        .args(["--checkpoint-interval-ms", &o.interval_ms.to_string()])
        .args(["--restore", o.restore])
        .args(["--rpc-addr", o.rpc_addr.unwrap_or("127.0.0.1:0")])
        .envs(o.env.iter().cloned())
        .args(o.extra);
    let token = o.token_file.map(|f| {
        c.args(["--auth-token-file", &f.to_string_lossy()]);
        std::fs::read_to_string(f)
            .expect("token")
            .trim()
            .to_string()
    });
    let pid = spawn_owned(c, Vec::new()).expect("start the jobmanager");
    let v: Value = wait_for("the ports file", T, || {
        let p = ports.clone();
        async move {
            if let Some(s) = exit_status(pid) {
                panic!("the jobmanager exited: {s}");
            }
            std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok())
        }
    })
    .await
    .expect("jobmanager ports");
    assert_eq!(v["pid"], pid, "{v}");
    JobManager {
        pid,
        rest: format!("http://{}", v["rest"].as_str().expect("rest")),
        rpc: v["rpc"].as_str().expect("rpc").to_string(),
        client: reqwest::Client::new(),
        token,
    }
}

pub(crate) fn start_tm(
    rpc: &str,
    name: &str,
    slots: usize,
    dir: &Path,
    token_file: Option<&Path>,
) -> u32 {
    start_tm_with(
        rpc,
        name,
        slots,
        dir,
        TmOpts {
            token_file,
            ..TmOpts::default()
        },
    )
}

#[derive(Default)]
pub(crate) struct TmOpts<'a> {
    pub(crate) token_file: Option<&'a Path>,
    pub(crate) env: &'a [(String, String)],
    /// Default 30 s.
    pub(crate) register_timeout_ms: Option<u64>,
    pub(crate) extra: &'a [&'a str],
}

pub(crate) fn start_tm_with(rpc: &str, name: &str, slots: usize, dir: &Path, o: TmOpts<'_>) -> u32 {
    let (token_file, env, extra) = (o.token_file, o.env, o.extra);
    let register_timeout_ms = o.register_timeout_ms.unwrap_or(30_000);
    let work = dir.join(format!("tm-{name}"));
    let mut c = engine();
    c.envs(env.iter().cloned());
    c.args(["taskmanager", "--jobmanager", rpc, "--id", name])
        .args(["--slots", &slots.to_string()])
        .args(["--work-dir", &work.to_string_lossy()])
        .args(["--register-timeout-ms", &register_timeout_ms.to_string()])
        .args(extra);
    if let Some(f) = token_file {
        c.args(["--auth-token-file", &f.to_string_lossy()]);
    }
    spawn_owned(c, vec![work]).expect("start a taskmanager")
}

impl JobManager {
    fn req(&self, m: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(m, format!("{}{path}", self.rest));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub(crate) async fn get(&self, path: &str) -> Value {
        let resp = self
            .req(reqwest::Method::GET, path)
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = resp.status();
        let body = resp.text().await.expect("body");
        assert!(status.is_success(), "GET {path}: {status} {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
    }

    async fn send(&self, m: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .req(m, path)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub(crate) async fn state(&self, id: &str) -> String {
        self.get(&format!("/jobs/{id}")).await["state"]
            .as_str()
            .expect("state")
            .to_string()
    }

    pub(crate) async fn metric(&self, id: &str, name: &str) -> i64 {
        let v = self.get(&format!("/jobs/{id}/metrics?get={name}")).await;
        v[0]["value"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("metric {name}: {v}"))
    }

    pub(crate) async fn wait_state(&self, id: &str, want: &str) {
        wait_for(&format!("job state {want}"), T, || async {
            let s = self.state(id).await;
            assert!(s != "FAILED" && s != "CANCELED" || s == want, "job is {s}");
            (s == want).then_some(())
        })
        .await
        .expect("job state");
    }

    pub(crate) async fn wait_checkpoints(&self, id: &str, n: i64) {
        wait_for(&format!("{n} completed checkpoints"), T, || async {
            (self.metric(id, "numberOfCompletedCheckpoints").await >= n).then_some(())
        })
        .await
        .expect("checkpoints");
    }
}

fn run_one_process(job: &Path, parallelism: usize) {
    let out = engine()
        .args([
            "run",
            &job.to_string_lossy(),
            "--progress-ms",
            "0",
            "-p",
            &parallelism.to_string(),
        ])
        .stderr(Stdio::piped())
        .output()
        .expect("sluice-engine run");
    assert!(
        out.status.success(),
        "sluice-engine run: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_taskmanagers_run_the_job_like_run_and_rest_speaks_flink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 6000;
    let out = dir.path().join("out-cluster");
    let job = write_job(dir.path(), rows, 3000, &out);
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
    // Nothing runs before the slots are there.
    assert_eq!(jm.state(&id).await, "CREATED");
    let jobs = jm.get("/jobs").await;
    assert_eq!(jobs, json!({"jobs": [{"id": id, "status": "CREATED"}]}));
    start_tm(&jm.rpc, "a", 1, dir.path(), None);
    start_tm(&jm.rpc, "b", 1, dir.path(), None);
    jm.wait_state(&id, "FINISHED").await;

    assert_exact(&out, rows);
    // The same job in one process writes the same rows.
    let out1 = dir.path().join("out-run");
    run_one_process(&write_job(dir.path(), rows, 20_000, &out1), 2);
    assert_eq!(output_rows(&out1), output_rows(&out));

    let ov = jm.get("/overview").await;
    for k in [
        "taskmanagers",
        "slots-total",
        "slots-available",
        "jobs-running",
        "jobs-finished",
        "jobs-cancelled",
        "jobs-failed",
        "flink-version",
    ] {
        assert!(ov.get(k).is_some(), "/overview lacks {k}: {ov}");
    }
    assert_eq!(ov["taskmanagers"], 2, "{ov}");
    assert_eq!(ov["slots-total"], 2, "{ov}");
    assert_eq!(ov["jobs-finished"], 1, "{ov}");
    // TaskManagers report metrics with their heartbeats: the final counts follow shortly.
    wait_for("final record counts", Duration::from_secs(10), || async {
        (jm.metric(&id, "numRecordsOut").await == rows as i64).then_some(())
    })
    .await
    .expect("numRecordsOut");
    let j = jm.get(&format!("/jobs/{id}")).await;
    assert_eq!(j["jid"], id.as_str());
    assert_eq!(j["state"], "FINISHED");
    for k in [
        "name",
        "start-time",
        "end-time",
        "duration",
        "now",
        "vertices",
    ] {
        assert!(j.get(k).is_some(), "/jobs/{{id}} lacks {k}: {j}");
    }
    let vertices = j["vertices"].as_array().expect("vertices");
    assert_eq!(vertices.len(), 2, "source vertex and OVER vertex: {j}");
    for v in vertices {
        assert_eq!(v["parallelism"], 2, "{v}");
        assert_eq!(v["id"].as_str().map(str::len), Some(32), "{v}");
        assert!(v["metrics"]["write-records"].is_u64(), "{v}");
    }
    assert_eq!(vertices[0]["metrics"]["read-records"], rows, "{j}");
    assert_eq!(vertices[1]["metrics"]["write-records"], rows, "{j}");
    let c = jm.get(&format!("/jobs/{id}/checkpoints")).await;
    for k in ["restored", "total", "in_progress", "completed", "failed"] {
        assert!(c["counts"][k].is_u64(), "counts.{k}: {c}");
    }
    assert!(c["counts"]["completed"].as_u64() >= Some(1), "{c}");
    assert!(c["latest"]["completed"]["external_path"].is_string(), "{c}");
    assert!(c["summary"]["end_to_end_duration"]["max"].is_u64(), "{c}");
    assert!(
        c["history"].as_array().is_some_and(|h| !h.is_empty()),
        "{c}"
    );
    let m = jm
        .get(&format!(
            "/jobs/{id}/metrics?get=numRestarts,lastCheckpointDuration,lastCheckpointSize,numberOfCompletedCheckpoints,numRecordsIn,numRecordsOut"
        ))
        .await;
    let m: BTreeMap<String, String> = m
        .as_array()
        .expect("metrics array")
        .iter()
        .map(|x| {
            (
                x["id"].as_str().expect("id").to_string(),
                x["value"].as_str().expect("value").to_string(),
            )
        })
        .collect();
    assert_eq!(m.len(), 6, "{m:?}");
    assert_eq!(m["numRestarts"], "0");
    assert_eq!(m["numRecordsIn"], rows.to_string());
    assert_eq!(m["numRecordsOut"], rows.to_string());
    eprintln!(
        "checkpoint duration {} ms, size {} bytes ({} completed)",
        m["lastCheckpointDuration"], m["lastCheckpointSize"], m["numberOfCompletedCheckpoints"]
    );
    let prom = jm
        .client
        .get(format!("{}/metrics", jm.rest))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "sluice_source_records_total",
        "sluice_sink_records_total",
        "sluice_backpressured_time_ms_total",
        "sluice_job_restarts_total",
        "sluice_checkpoint_last_duration_ms",
        "sluice_checkpoint_last_size_bytes",
    ] {
        assert!(prom.contains(name), "/metrics lacks {name}:\n{prom}");
    }
    let e = jm.get(&format!("/jobs/{id}/exceptions")).await;
    assert_eq!(e["exceptionHistory"]["entries"], json!([]), "{e}");
    let (status, body) = jm
        .send(
            reqwest::Method::GET,
            "/jobs/00000000000000000000000000000000",
            json!({}),
        )
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body["errors"].is_array(), "{body}");
    stop_owned(jm.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_taskmanager_is_replaced_and_the_job_restarts_from_its_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 24_000;
    let out = dir.path().join("out");
    // About 6 s of input: time for checkpoints before the kill and for rows after it.
    let job = write_job(dir.path(), rows, 4000, &out);
    let id = job_id();
    let ckpt = format!("file://{}/job", dir.path().display());
    let jm = start_jm(dir.path(), &job, &id, &ckpt, JmOpts::default()).await;
    start_tm(&jm.rpc, "a", 1, dir.path(), None);
    let b = start_tm(&jm.rpc, "b", 1, dir.path(), None);
    jm.wait_state(&id, "RUNNING").await;
    jm.wait_checkpoints(&id, 2).await;
    let before = jm.metric(&id, "numRecordsIn").await;
    assert!(before < rows as i64, "the job ended before the kill");
    let killed = Instant::now();
    send_signal(b, libc_sigkill());
    // Detected as lost (its connection closed) and the job restarts.
    wait_for("a restart", Duration::from_secs(5), || async {
        (jm.metric(&id, "numRestarts").await >= 1).then_some(())
    })
    .await
    .expect("restart within 5 s of the kill");
    let detected = killed.elapsed();
    // Only one slot is left: the job waits for a replacement TaskManager.
    start_tm(&jm.rpc, "c", 1, dir.path(), None);
    let flowing = wait_for("records after the restart", T, || async {
        (jm.metric(&id, "numRecordsIn").await > 0 && jm.state(&id).await == "RUNNING")
            .then(|| killed.elapsed())
    })
    .await
    .expect("records flow again");
    jm.wait_state(&id, "FINISHED").await;
    assert_exact(&out, rows);
    let c = jm.get(&format!("/jobs/{id}/checkpoints")).await;
    let restarts = jm.metric(&id, "numRestarts").await;
    assert_eq!(restarts, 1, "{c}");
    let e = jm.get(&format!("/jobs/{id}/exceptions")).await;
    let root = e["root-exception"].as_str().unwrap_or_default();
    assert!(
        root.contains("taskmanager b") || root.contains("failed"),
        "{e}"
    );
    eprintln!(
        "TaskManager SIGKILL: restart detected after {} ms; records flowed again {} ms after the kill (replacement TaskManager started after detection); JobManager-measured loss→records {} ms",
        detected.as_millis(),
        flowing.as_millis(),
        jm.metric(&id, "lastRecoveryTimeMs").await
    );
    stop_owned(jm.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_jobmanager_generation_resumes_from_the_latest_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 24_000;
    let out = dir.path().join("out");
    let job = write_job(dir.path(), rows, 4000, &out);
    let id = job_id();
    let ckpt = format!("file://{}/job", dir.path().display());
    let opts = |generation, rpc| JmOpts {
        generation,
        parallelism: 2,
        interval_ms: 200,
        restore: "latest",
        rpc_addr: rpc,
        token_file: None,
        env: &[],
        extra: &[],
    };
    let jm1 = start_jm(dir.path(), &job, &id, &ckpt, opts(1, None)).await;
    start_tm(&jm1.rpc, "a", 1, dir.path(), None);
    start_tm(&jm1.rpc, "b", 1, dir.path(), None);
    jm1.wait_state(&id, "RUNNING").await;
    jm1.wait_checkpoints(&id, 2).await;
    send_signal(jm1.pid, libc_sigkill());
    // The TaskManagers keep trying to register; the next generation takes the same address.
    let rpc = jm1.rpc.clone();
    let jm2 = start_jm(dir.path(), &job, &id, &ckpt, opts(2, Some(&rpc))).await;
    assert_eq!(jm2.rpc, rpc);
    jm2.wait_state(&id, "FINISHED").await;
    assert_exact(&out, rows);
    let c = jm2.get(&format!("/jobs/{id}/checkpoints")).await;
    assert_eq!(c["counts"]["restored"], 1, "{c}");
    let restored = c["latest"]["restored"]["external_path"]
        .as_str()
        .unwrap_or_default();
    assert!(restored.contains("gen-0000000001/chk-"), "{c}");
    // The stale generation may not act any more: it is refused at start.
    let stale = engine()
        .args(["jobmanager", &job.to_string_lossy(), "--job-id", &id])
        .args(["--generation", "1", "--checkpoint-dir", &ckpt])
        .status()
        .expect("run a stale jobmanager");
    assert!(
        !stale.success(),
        "a jobmanager of generation 1 started after generation 2"
    );
    stop_owned(jm2.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_and_stop_through_rest_with_a_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token\n").expect("token");
    let rows = 1_000_000;
    let out = dir.path().join("out");
    let job = write_job(dir.path(), rows, 2000, &out);
    let id = job_id();
    let ckpt = format!("file://{}/job", dir.path().display());
    let jm = start_jm(
        dir.path(),
        &job,
        &id,
        &ckpt,
        JmOpts {
            interval_ms: 0,
            token_file: Some(&token),
            ..JmOpts::default()
        },
    )
    .await;
    // Without the token: no REST, and no slots from a TaskManager without it.
    let anon = reqwest::get(format!("{}/overview", jm.rest))
        .await
        .expect("GET");
    assert_eq!(anon.status().as_u16(), 401);
    start_tm(&jm.rpc, "stranger", 2, dir.path(), None);
    start_tm(&jm.rpc, "a", 2, dir.path(), Some(&token));
    jm.wait_state(&id, "RUNNING").await;
    assert_eq!(jm.get("/overview").await["taskmanagers"], 1);
    wait_for("records", T, || async {
        (jm.metric(&id, "numRecordsIn").await > 0).then_some(())
    })
    .await
    .expect("records");

    let target = format!("file://{}/savepoints", dir.path().display());
    let (status, body) = jm
        .send(
            reqwest::Method::POST,
            &format!("/jobs/{id}/savepoints"),
            json!({"target-directory": target, "cancel-job": false, "formatType": "CANONICAL"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let trigger = body["request-id"].as_str().expect("request-id").to_string();
    let done = wait_for("the savepoint", T, || async {
        let v = jm.get(&format!("/jobs/{id}/savepoints/{trigger}")).await;
        (v["status"]["id"] == "COMPLETED").then_some(v)
    })
    .await
    .expect("savepoint");
    let location = done["operation"]["location"]
        .as_str()
        .unwrap_or_else(|| panic!("no location: {done}"));
    assert!(location.starts_with(&target), "{location}");
    let local = PathBuf::from(location.trim_start_matches("file://"));
    assert!(
        local.join("_metadata").is_file(),
        "{location} has no _metadata"
    );
    assert!(
        std::fs::read_dir(&local).expect("ls").count() >= 2,
        "the savepoint has state files"
    );
    let c = jm.get(&format!("/jobs/{id}/checkpoints")).await;
    assert_eq!(c["latest"]["savepoint"]["is_savepoint"], true, "{c}");

    // Stop with a savepoint: the job ends FINISHED, REST stays up.
    let (status, body) = jm
        .send(
            reqwest::Method::POST,
            &format!("/jobs/{id}/stop"),
            json!({"targetDirectory": target, "drain": false}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let trigger = body["request-id"].as_str().expect("request-id").to_string();
    let done = wait_for("the stop savepoint", T, || async {
        let v = jm.get(&format!("/jobs/{id}/savepoints/{trigger}")).await;
        (v["status"]["id"] == "COMPLETED").then_some(v)
    })
    .await
    .expect("stop");
    let location = done["operation"]["location"].as_str().expect("location");
    assert!(
        PathBuf::from(location.trim_start_matches("file://"))
            .join("_metadata")
            .is_file()
    );
    jm.wait_state(&id, "FINISHED").await;
    assert_eq!(jm.get("/jobs").await["jobs"][0]["status"], "FINISHED");
    // SIGTERM ends the JobManager cleanly.
    send_signal(jm.pid, 15);
    let status = wait_for(
        "the jobmanager to exit",
        Duration::from_secs(10),
        || async { exit_status(jm.pid) },
    )
    .await
    .expect("exit");
    assert!(status.success(), "{status}");
}

pub(crate) fn libc_sigkill() -> i32 {
    9
}

const SIGSTOP: i32 = 19;
const SIGCONT: i32 = 18;

/// The S3 settings the processes read, for the shared SeaweedFS.
fn s3_env() -> Vec<(String, String)> {
    let s = sluice_test_support::s3();
    vec![
        ("S3_ENDPOINT".into(), s.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID".into(), s.access_key_id.clone()),
        ("AWS_SECRET_ACCESS_KEY".into(), s.secret_access_key.clone()),
        ("AWS_REGION".into(), s.region.clone()),
    ]
}

/// A fresh bucket on the shared SeaweedFS; returns the job root URI in it.
async fn s3_job_root() -> String {
    let s = sluice_test_support::s3();
    let bucket = sluice_test_support::unique_name("cluster-");
    let uri = format!("s3://{bucket}/apps/job");
    let store = sluice_blob_s3::S3Store::connect(
        &sluice_blob::BlobLocation::parse(&uri).expect("uri"),
        &sluice_blob_s3::S3Options::compatible(
            &s.endpoint,
            &s.region,
            &s.access_key_id,
            &s.secret_access_key,
        ),
    )
    .await
    .expect("connect to S3");
    store.ensure_bucket().await.expect("create the bucket");
    uri
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_on_s3_survive_a_taskmanager_kill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 40_000;
    let out = dir.path().join("out");
    let job = write_job(dir.path(), rows, 4000, &out);
    let id = job_id();
    let ckpt = s3_job_root().await;
    let env = s3_env();
    let jm = start_jm(
        dir.path(),
        &job,
        &id,
        &ckpt,
        JmOpts {
            env: &env,
            ..JmOpts::default()
        },
    )
    .await;
    // One TaskManager with 3 slots and one with 1: after the kill of the second, the
    // first's free slots take the job without a replacement.
    // `b` first: the job waits for a second slot, so its subtasks spread over both.
    let b = start_tm_with(
        &jm.rpc,
        "b",
        1,
        dir.path(),
        TmOpts {
            env: &env,
            ..TmOpts::default()
        },
    );
    wait_for("taskmanager b", T, || async {
        (jm.get("/overview").await["taskmanagers"] == 1).then_some(())
    })
    .await
    .expect("taskmanagers");
    assert_eq!(jm.state(&id).await, "CREATED");
    start_tm_with(
        &jm.rpc,
        "a",
        3,
        dir.path(),
        TmOpts {
            env: &env,
            ..TmOpts::default()
        },
    );
    jm.wait_state(&id, "RUNNING").await;
    jm.wait_checkpoints(&id, 2).await;
    let c = jm.get(&format!("/jobs/{id}/checkpoints")).await;
    assert!(
        c["latest"]["completed"]["external_path"]
            .as_str()
            .is_some_and(|p| p.starts_with(&format!("{ckpt}/gen-0000000001/chk-"))),
        "{c}"
    );
    eprintln!(
        "S3 checkpoint: {} ms, {} bytes",
        jm.metric(&id, "lastCheckpointDuration").await,
        jm.metric(&id, "lastCheckpointSize").await
    );
    assert!(
        jm.metric(&id, "numRecordsIn").await < rows as i64,
        "the job ended before the kill"
    );
    send_signal(b, libc_sigkill());
    jm.wait_state(&id, "FINISHED").await;
    assert_exact(&out, rows);
    assert_eq!(jm.metric(&id, "numRestarts").await, 1);
    stop_owned(jm.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_taskmanager_is_declared_lost_by_heartbeat_and_an_orphan_gives_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 1_000_000;
    let out = dir.path().join("out");
    let job = write_job(dir.path(), rows, 2000, &out);
    let id = job_id();
    let ckpt = format!("file://{}/job", dir.path().display());
    let jm = start_jm(dir.path(), &job, &id, &ckpt, JmOpts::default()).await;
    // `a` listens for data on the wildcard address: it advertises the address it reaches
    // the JobManager from.
    let a = start_tm_with(
        &jm.rpc,
        "a",
        1,
        dir.path(),
        TmOpts {
            register_timeout_ms: Some(1500),
            extra: &["--data-addr", "0.0.0.0:0"],
            ..TmOpts::default()
        },
    );
    let b = start_tm_with(
        &jm.rpc,
        "b",
        1,
        dir.path(),
        TmOpts {
            register_timeout_ms: Some(1500),
            ..TmOpts::default()
        },
    );
    jm.wait_state(&id, "RUNNING").await;
    let tms = jm.get("/taskmanagers").await;
    let paths: Vec<&str> = tms["taskmanagers"]
        .as_array()
        .expect("taskmanagers")
        .iter()
        .map(|t| t["path"].as_str().expect("path"))
        .collect();
    assert_eq!(paths.len(), 2, "{tms}");
    assert!(
        paths.iter().all(|p| p.starts_with("tcp://127.0.0.1:")),
        "advertised data addresses: {tms}"
    );
    jm.wait_checkpoints(&id, 1).await;
    // A stopped process keeps its TCP connection open: only the missing heartbeats tell.
    send_signal(b, SIGSTOP);
    let stopped = Instant::now();
    wait_for("the heartbeat timeout", Duration::from_secs(10), || async {
        (jm.metric(&id, "numRestarts").await >= 1).then_some(())
    })
    .await
    .expect("restart");
    let detected = stopped.elapsed();
    assert!(
        detected >= Duration::from_millis(1500) && detected < Duration::from_secs(4),
        "declared lost after {detected:?} (heartbeat timeout 2 s)"
    );
    eprintln!(
        "silent TaskManager declared lost after {} ms",
        detected.as_millis()
    );
    // Woken up, it finds itself unregistered, registers again and the job runs on.
    send_signal(b, SIGCONT);
    jm.wait_state(&id, "RUNNING").await;
    wait_for("records after the restart", T, || async {
        (jm.metric(&id, "numRecordsIn").await > 0).then_some(())
    })
    .await
    .expect("records");
    // Cancel through REST.
    let (status, body) = jm
        .send(
            reqwest::Method::PATCH,
            &format!("/jobs/{id}?mode=cancel"),
            json!({}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    jm.wait_state(&id, "CANCELED").await;
    assert_eq!(jm.get("/overview").await["jobs-cancelled"], 1);
    // Without their JobManager, TaskManagers retry for --register-timeout-ms, then exit.
    send_signal(jm.pid, libc_sigkill());
    let gone = Instant::now();
    for pid in [a, b] {
        let status = wait_for(
            "an orphaned taskmanager to exit",
            Duration::from_secs(15),
            || async { exit_status(pid) },
        )
        .await
        .expect("taskmanager exit");
        assert!(!status.success(), "an orphan exits with an error: {status}");
    }
    let waited = gone.elapsed();
    assert!(
        waited >= Duration::from_millis(1500),
        "gave up after {waited:?}"
    );
}

/// The seed job (Kafka → 10 s bounded disorder → rolling count per user → Kafka) on the
/// cluster at parallelism 2 across two TaskManagers, checked as `seed_kafka` checks the
/// one-process run: every event once, with the count Flink gives it, in event-time order
/// per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_job_runs_on_two_taskmanagers_through_kafka() {
    use rdkafka::ClientConfig;
    use rdkafka::Message;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
    use std::collections::HashMap;

    let bootstrap = sluice_test_support::kafka().bootstrap_servers.clone();
    let input = sluice_test_support::unique_name("events-");
    let output = sluice_test_support::unique_name("enriched-");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("admin client");
    let topics = [
        NewTopic::new(&input, 3, TopicReplication::Fixed(1)),
        NewTopic::new(&output, 1, TopicReplication::Fixed(1)),
    ];
    for r in admin
        .create_topics(&topics, &AdminOptions::new())
        .await
        .expect("create topics")
    {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
    let n = 3000u64;
    let mut events = Vec::new();
    let mut x: u64 = 12345;
    for i in 0..n {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let user = format!("u{}", (x >> 33) % 12);
        let jitter = ((x >> 20) % 9000) as i64;
        events.push((i, user, 1_710_000_000_000 + i as i64 * 7 - jitter));
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for (id, user, ts) in &events {
        let payload = format!(
            "{{\"event_id\":{id},\"user_id\":\"{user}\",\"event\":\"click\",\"event_time_ms\":{ts}}}"
        );
        // Keyed by user: one user's events stay in one partition, in production order.
        producer
            .send(BaseRecord::to(&input).key(user).payload(&payload))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    tokio::task::block_in_place(|| producer.flush(Duration::from_secs(30))).expect("flush");
    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("seed.sql");
    std::fs::write(
        &job,
        format!(
            r#"
CREATE TABLE events (
  event_id BIGINT, user_id STRING, event STRING, event_time_ms BIGINT,
  event_time AS TO_TIMESTAMP_LTZ(event_time_ms, 3),
  WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
) WITH (
  'connector' = 'kafka', 'topic' = '{input}', 'properties.bootstrap.servers' = '{bootstrap}',
  'scan.startup.mode' = 'earliest-offset', 'scan.bounded.mode' = 'latest-offset', 'format' = 'json'
);
CREATE TABLE enriched (
  event_id BIGINT, user_id STRING, event STRING, event_time_ms BIGINT, user_event_count BIGINT
) WITH (
  'connector' = 'kafka', 'topic' = '{output}', 'properties.bootstrap.servers' = '{bootstrap}',
  'key.fields' = 'user_id', 'key.format' = 'raw', 'format' = 'json'
);
INSERT INTO enriched
SELECT event_id, user_id, UPPER(event), event_time_ms,
  COUNT(*) OVER (PARTITION BY user_id ORDER BY event_time
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS user_event_count
FROM events;
"#
        ),
    )
    .expect("write job");
    let id = job_id();
    let ckpt = format!("file://{}/job", dir.path().display());
    let jm = start_jm(
        dir.path(),
        &job,
        &id,
        &ckpt,
        JmOpts {
            interval_ms: 500,
            ..JmOpts::default()
        },
    )
    .await;
    start_tm(&jm.rpc, "a", 1, dir.path(), None);
    start_tm(&jm.rpc, "b", 1, dir.path(), None);
    jm.wait_state(&id, "FINISHED").await;
    let j = jm.get(&format!("/jobs/{id}")).await;
    assert!(
        j["vertices"].as_array().is_some_and(|v| v.len() == 2),
        "a hash exchange between two vertices: {j}"
    );

    let mut per_user: HashMap<&str, Vec<&(u64, String, i64)>> = HashMap::new();
    for e in &events {
        per_user.entry(e.1.as_str()).or_default().push(e);
    }
    let mut expected: HashMap<u64, u64> = HashMap::new();
    for list in per_user.values_mut() {
        list.sort_by_key(|e| (e.2, e.0));
        for (i, e) in list.iter().enumerate() {
            expected.insert(e.0, i as u64 + 1);
        }
    }
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", sluice_test_support::unique_name("check-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&output]).expect("subscribe");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut last_ts: HashMap<String, i64> = HashMap::new();
    while seen.len() < n as usize {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} output records within 60 s",
            seen.len()
        );
        let m = tokio::task::block_in_place(|| consumer.poll(Duration::from_millis(200)));
        let Some(m) = m else { continue };
        let m = m.expect("consume");
        let v: Value = serde_json::from_slice(m.payload().expect("payload")).expect("JSON");
        let eid = v["event_id"].as_u64().expect("event_id");
        let user = v["user_id"].as_str().expect("user_id").to_string();
        assert_eq!(m.key(), Some(user.as_bytes()));
        assert_eq!(v["event"], "CLICK");
        let ts = v["event_time_ms"].as_i64().expect("ts");
        let prev = last_ts.insert(user.clone(), ts).unwrap_or(i64::MIN);
        assert!(ts >= prev, "user {user}: {ts} after {prev}");
        assert_eq!(
            Some(&v["user_event_count"].as_u64().expect("count")),
            expected.get(&eid),
            "count of event {eid}"
        );
        assert!(seen.insert(eid, 0).is_none(), "event {eid} written twice");
    }
    stop_owned(jm.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_requirements_rescale_a_running_job_from_its_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 16_000;
    let out = dir.path().join("out");
    let job = write_job(dir.path(), rows, 4000, &out);
    let id = job_id();
    let ckpt = format!("file://{}/job", dir.path().display());
    let jm = start_jm(
        dir.path(),
        &job,
        &id,
        &ckpt,
        JmOpts {
            // RocksDB state: its canonical snapshots restore at another parallelism too.
            extra: &["--state-backend", "rocksdb"],
            ..JmOpts::default()
        },
    )
    .await;
    start_tm(&jm.rpc, "a", 2, dir.path(), None);
    jm.wait_state(&id, "RUNNING").await;
    jm.wait_checkpoints(&id, 2).await;
    let req = jm.get(&format!("/jobs/{id}/resource-requirements")).await;
    let vertices = req.as_object().expect("object");
    assert_eq!(vertices.len(), 2, "{req}");
    let mut body = serde_json::Map::new();
    for (vid, r) in vertices {
        assert_eq!(r["parallelism"]["upperBound"], 2, "{req}");
        body.insert(
            vid.clone(),
            json!({"parallelism": {"lowerBound": 1, "upperBound": 1}}),
        );
    }
    let (status, resp) = jm
        .send(
            reqwest::Method::PUT,
            &format!("/jobs/{id}/resource-requirements"),
            Value::Object(body),
        )
        .await;
    assert_eq!(status, 200, "{resp}");
    // At parallelism 1 the exchange is chained away: one vertex, one subtask.
    wait_for("the rescaled deployment", T, || async {
        let j = jm.get(&format!("/jobs/{id}")).await;
        (j["state"] == "RUNNING"
            && j["vertices"]
                .as_array()
                .is_some_and(|v| v.len() == 1 && v[0]["parallelism"] == 1))
        .then_some(())
    })
    .await
    .expect("rescaled");
    jm.wait_state(&id, "FINISHED").await;
    assert_exact(&out, rows);
    let c = jm.get(&format!("/jobs/{id}/checkpoints")).await;
    assert_eq!(
        c["counts"]["restored"], 1,
        "restored once, at the rescale: {c}"
    );
    assert_eq!(
        jm.metric(&id, "numRestarts").await,
        0,
        "a rescale is not a failure"
    );
    stop_owned(jm.pid);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_jobmanager_is_fenced_by_the_next_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 24_000;
    let out = dir.path().join("out");
    let job = write_job(dir.path(), rows, 4000, &out);
    let id = job_id();
    let ckpt = format!("file://{}/job", dir.path().display());
    let opts = |generation| JmOpts {
        generation,
        parallelism: 2,
        interval_ms: 200,
        restore: "latest",
        rpc_addr: None,
        token_file: None,
        env: &[],
        extra: &[],
    };
    let jm1 = start_jm(dir.path(), &job, &id, &ckpt, opts(1)).await;
    start_tm_with(
        &jm1.rpc,
        "a1",
        1,
        dir.path(),
        TmOpts {
            register_timeout_ms: Some(2000),
            ..TmOpts::default()
        },
    );
    start_tm_with(
        &jm1.rpc,
        "b1",
        1,
        dir.path(),
        TmOpts {
            register_timeout_ms: Some(2000),
            ..TmOpts::default()
        },
    );
    jm1.wait_state(&id, "RUNNING").await;
    jm1.wait_checkpoints(&id, 1).await;
    // Generation 2 claims the job while generation 1 still runs it.
    let jm2 = start_jm(dir.path(), &job, &id, &ckpt, opts(2)).await;
    let status = wait_for("generation 1 to stop", Duration::from_secs(15), || async {
        exit_status(jm1.pid)
    })
    .await
    .expect("the stale jobmanager exits");
    assert!(
        !status.success(),
        "a fenced jobmanager exits with an error: {status}"
    );
    start_tm(&jm2.rpc, "a2", 1, dir.path(), None);
    start_tm(&jm2.rpc, "b2", 1, dir.path(), None);
    jm2.wait_state(&id, "FINISHED").await;
    assert_exact(&out, rows);
    stop_owned(jm2.pid);
}

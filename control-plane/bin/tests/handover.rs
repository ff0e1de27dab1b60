//! Two real `sluice` processes on one database and one data directory (two control planes
//! of one host): only the leader acts — the standby neither writes status nor supervises
//! engine processes — and when the leader is SIGKILLed the standby is elected within
//! seconds, re-adopts the running cluster (the same JobManager process, the same run and
//! generation, no second cluster) and then acts on new intents.
//!
//! Run: `dev/cargo test -p sluice --test handover -- --nocapture` (prints the hand-over time).
#![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);
const DATAGEN: &str = "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20');\nCREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO sink SELECT id FROM src;";
const LEADER_KEY: i64 = 0x5e1c_e001;

mod common;

use common::{Server, ServerOpts, bootstrap, call, engine_binary, start_server, token};

async fn start(url: &str, data: &Path, log: &Path, failpoint: Option<&str>) -> Server {
    start_server(
        url,
        data,
        ServerOpts {
            failpoint,
            env: &[
                ("SLUICE_DATABASE__MAX_CONNECTIONS", "4"),
                ("SLUICE_LOG__FILTER", "info,sluice_provisioner=debug"),
            ],
            log: Some(log),
        },
    )
    .await
}

/// On a failure: the servers' logs; always: no engine process of the test outlives it.
struct Cleanup {
    data: PathBuf,
    logs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for l in &self.logs {
                let text = std::fs::read_to_string(l).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                eprintln!("==== {} (last 60 lines)", l.display());
                for line in &lines[lines.len().saturating_sub(60)..] {
                    eprintln!("{line}");
                }
            }
        }
        for (pid, _) in engine_processes(&self.data) {
            sluice_test_support::process::send_signal(pid, libc::SIGKILL);
        }
    }
}

/// Live `sluice-engine` processes started for a process directory under `data`, with that
/// directory, found in `/proc` (not in any record: what runs, not what was written down).
fn engine_processes(data: &Path) -> Vec<(u32, PathBuf)> {
    let engine = std::fs::canonicalize(engine_binary()).unwrap();
    let prefix = format!("SLUICE_PROC_DIR={}/", data.display());
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(exe) = std::fs::read_link(e.path().join("exe")) else {
            continue;
        };
        if exe != engine || sluice_provisioner::local::proc_start_ticks(pid).is_none() {
            continue;
        }
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        for var in env.split(|b| *b == 0) {
            if let Some(dir) = std::str::from_utf8(var)
                .ok()
                .and_then(|v| v.strip_prefix(&prefix))
            {
                out.push((pid, data.join(dir)));
            }
        }
    }
    out.sort();
    out
}

async fn get(base: &str, token: &str, path: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{base}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn wait_status(base: &str, token: &str, id: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let (code, v) = get(base, token, &format!("/v1/applications/{id}")).await;
        if code == 200 && cond(&v["status"]) {
            return v["status"].clone();
        }
        assert!(Instant::now() < deadline, "application {id}: {code} {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leader's (epoch, holder pid) as recorded at its election.
async fn leader(db: &sqlx::PgPool) -> Option<(i64, u32)> {
    leader_passes(db).await.map(|(e, pid, _)| (e, pid))
}

/// (epoch, holder pid, leadership checks of the term): a check precedes every pass, so
/// two checks mean the term has completed a pass.
async fn leader_passes(db: &sqlx::PgPool) -> Option<(i64, u32, i64)> {
    let row: Option<(i64, String, i64)> =
        sqlx::query_as("SELECT epoch, holder, passes FROM reconciler_leader WHERE lock_key = $1")
            .bind(LEADER_KEY)
            .fetch_optional(db)
            .await
            .unwrap();
    row.map(|(e, h, n)| (e, h.rsplit(':').next().unwrap().parse().unwrap(), n))
}

/// The record's process incarnations of the cluster.
fn record_procs(data: &Path, org: &str, app: &str) -> Vec<Value> {
    let path = data.join(format!("clusters/records/{org}__{app}.json"));
    let v: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    v["procs"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_standby_does_not_act_and_takes_over_a_killed_leaders_cluster_within_seconds() {
    let url = sluice_test_support::postgres()
        .fresh_database()
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let logs = (tmp.path().join("a.log"), tmp.path().join("b.log"));
    let _cleanup = Cleanup {
        data: data.clone(),
        logs: vec![logs.0.clone(), logs.1.clone()],
    };
    let key = bootstrap(&url, &data, "ha");
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();

    // A alone: it leads.
    let a = start(&url, &data, &logs.0, None).await;
    sluice_test_support::wait_for("A to lead", T, || async {
        leader(&db).await.filter(|(_, pid)| *pid == a.pid)
    })
    .await
    .unwrap();
    let (epoch_a, _) = leader(&db).await.unwrap();
    let tok = token(&a.base, &key).await;
    let pool = call(
        &a.base,
        &tok,
        reqwest::Method::POST,
        "/v1/compute-pools",
        json!({ "name": "p", "region": "local", "max_kpu": 4 }),
    )
    .await;
    let app = call(&a.base, &tok, reqwest::Method::POST, "/v1/applications",
        json!({ "name": "job", "compute_pool_id": pool["id"], "sql": DATAGEN, "desired_state": "running",
                "checkpoint": { "interval_ms": 1000, "mode": "exactly_once" } })).await;
    let id = app["id"].as_str().unwrap().to_owned();
    let (_, me) = get(&a.base, &tok, "/v1/me").await;
    let org = me["organization"]["id"].as_str().unwrap().to_owned();
    let running = wait_status(&a.base, &tok, &id, |s| s["phase"] == "RUNNING").await;
    let work = data.join(format!("clusters/clusters/{org}/{id}"));
    let jm_pid: u32 = std::fs::read_to_string(work.join("jm-0/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let jm_ticks = sluice_provisioner::local::proc_start_ticks(jm_pid).unwrap();
    assert_eq!(
        engine_processes(&data).len(),
        2,
        "one JobManager, one TaskManager"
    );

    // B joins while A leads. It knows the cluster from the shared records, but acts on
    // nothing: a TaskManager killed now is restarted once, by A.
    let b = start(&url, &data, &logs.1, None).await;
    let tm_pid: u32 = std::fs::read_to_string(work.join("tm-0-0/pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    sluice_test_support::process::send_signal(tm_pid, libc::SIGKILL);
    sluice_test_support::wait_for("the TaskManager's restart", T, || async {
        let procs = record_procs(&data, &org, &id);
        let tms: Vec<&Value> = procs.iter().filter(|p| p["name"] == "tm-0").collect();
        (tms.len() == 2 && tms[1]["exited_at"].is_null()).then_some(())
    })
    .await
    .unwrap();
    // The engine recovers the job on the restarted TaskManager (read through B's API: a
    // standby serves the JobManager's metrics from the leader's records); by then a second
    // supervisor would long have restarted the TaskManager too.
    sluice_test_support::wait_for("the job to run again", T, || async {
        let (code, m) = get(&b.base, &tok, &format!("/v1/applications/{id}/metrics")).await;
        (code == 200 && m["job_state"] == "RUNNING" && m["restarts"] == 1).then_some(())
    })
    .await
    .unwrap();
    let live = engine_processes(&data);
    assert_eq!(
        live.len(),
        2,
        "one JobManager and one restarted TaskManager, nothing else: {live:?}"
    );
    assert!(live.iter().any(|(_, d)| d.ends_with("tm-0-1")), "{live:?}");
    assert_eq!(
        record_procs(&data, &org, &id)
            .iter()
            .filter(|p| p["name"] == "tm-0")
            .count(),
        2,
        "one restart"
    );
    assert_eq!(leader(&db).await, Some((epoch_a, a.pid)), "A still leads");
    let foreign: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM events WHERE application_id = $1 AND leader_epoch IS DISTINCT FROM $2)
              + (SELECT count(*) FROM application_status WHERE application_id = $1 AND leader_epoch IS DISTINCT FROM $2)",
    )
    .bind(&id)
    .bind(epoch_a)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(foreign, 0, "every status and event was written by A's term");

    // A dies. B is elected within seconds and re-adopts the cluster.
    let killed = Instant::now();
    sluice_test_support::process::send_signal(a.pid, libc::SIGKILL);
    let (epoch_b, _) = sluice_test_support::wait_for("B to lead", T, || async {
        leader(&db).await.filter(|(_, pid)| *pid == b.pid)
    })
    .await
    .unwrap();
    let handover = killed.elapsed();
    eprintln!("leader hand-over (SIGKILL of A → B elected): {handover:?}");
    assert!(epoch_b > epoch_a);
    assert!(handover < Duration::from_secs(10), "{handover:?}");
    drop(a);
    // Once B's term has completed a pass, whatever it would do to the cluster it has done.
    sluice_test_support::wait_for("B's first pass", T, || async {
        leader_passes(&db)
            .await
            .filter(|(e, _, n)| *e == epoch_b && *n >= 2)
    })
    .await
    .unwrap();
    eprintln!("SIGKILL of A → B's first pass done: {:?}", killed.elapsed());
    let adopted = wait_status(&b.base, &tok, &id, |s| s["phase"] == "RUNNING").await;
    assert_eq!(adopted["run_id"], running["run_id"], "the same run");
    assert_eq!(adopted["generation"], running["generation"]);
    assert_eq!(
        sluice_provisioner::local::proc_start_ticks(jm_pid),
        Some(jm_ticks),
        "the same JobManager process"
    );
    let live = engine_processes(&data);
    assert_eq!(live.len(), 2, "no second cluster: {live:?}");
    assert_eq!(
        live.iter().filter(|(_, d)| d.ends_with("jm-0")).count(),
        1,
        "{live:?}"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE application_id = $1")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(runs, 1);

    // B acts: a scale-up through B's API replaces the cluster at the next generation.
    let t0 = Instant::now();
    call(
        &b.base,
        &tok,
        reqwest::Method::PATCH,
        &format!("/v1/applications/{id}"),
        json!({ "parallelism": 2 }),
    )
    .await;
    let scaled = wait_status(&b.base, &tok, &id, |s| {
        s["phase"] == "RUNNING" && s["generation"] == 2
    })
    .await;
    eprintln!("scale-up through the new leader: {:?}", t0.elapsed());
    assert_eq!(scaled["current_kpu_milli"], 2250);
    assert!(sluice_provisioner::local::proc_start_ticks(jm_pid).is_none());
    let live = engine_processes(&data);
    assert_eq!(live.len(), 3, "one JobManager, two TaskManagers: {live:?}");
    let by_b: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE application_id = $1 AND generation = 2 AND leader_epoch = $2",
    )
    .bind(&id)
    .bind(epoch_b)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(by_b, 1, "the new run was recorded by B's term");

    // And a delete through B: no process left, no run open.
    let del = reqwest::Client::new()
        .delete(format!("{}/v1/applications/{id}", b.base))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    let deadline = Instant::now() + T;
    while get(&b.base, &tok, &format!("/v1/applications/{id}"))
        .await
        .0
        != 404
    {
        assert!(Instant::now() < deadline, "{id} not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(engine_processes(&data).is_empty());
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE application_id = $1 AND ended_at IS NULL",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(open, 0);
    drop(b);
    db.close().await;
}

/// The engine processes of one application's cluster, checked against its record: exactly
/// one JobManager and `tms` TaskManagers run, each in a directory of a live recorded
/// incarnation (an unrecorded process would be an orphan: nobody supervises or bills it).
fn assert_recorded(data: &Path, org: &str, app: &str, tms: usize) {
    let work = data.join(format!("clusters/clusters/{org}/{app}"));
    let live: Vec<(u32, PathBuf)> = engine_processes(data)
        .into_iter()
        .filter(|(_, d)| d.parent() == Some(work.as_path()))
        .collect();
    let recorded: Vec<PathBuf> = record_procs(data, org, app)
        .iter()
        .filter(|p| p["exited_at"].is_null())
        .map(|p| PathBuf::from(p["dir"].as_str().unwrap()))
        .collect();
    assert_eq!(live.len(), 1 + tms, "{live:?} recorded {recorded:?}");
    for (pid, dir) in &live {
        assert!(
            recorded.contains(dir),
            "pid {pid} in {dir:?} is not recorded: {recorded:?}"
        );
    }
}

async fn settled_start(db: &sqlx::PgPool, app: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT state FROM operations WHERE application_id = $1 AND kind = 'start'")
        .bind(app)
        .fetch_all(db)
        .await
        .unwrap()
}

/// Leaders killed (failpoints) in the middle of starts — between spawning an engine process
/// and recording it, a JobManager, then a TaskManager —, of an update (after the
/// stop-with-savepoint was triggered) and of a delete (after the cluster went, before the run
/// was closed), each with a standby running: the successor kills what no record accounts
/// for and completes what was begun; no orphan, no second cluster, no lost operation, and
/// the other application's cluster is re-adopted at every hand-over.
#[tokio::test]
async fn leaders_killed_mid_start_update_and_delete_hand_over_without_orphans() {
    let url = sluice_test_support::postgres()
        .fresh_database()
        .await
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let logs: Vec<PathBuf> = ["a", "b", "c", "d", "e", "f", "g", "h"]
        .iter()
        .map(|n| tmp.path().join(format!("{n}.log")))
        .collect();
    let _cleanup = Cleanup {
        data: data.clone(),
        logs: logs.clone(),
    };
    let key = bootstrap(&url, &data, "ha");
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();

    // A leads and dies right after spawning a JobManager; B stands by.
    let a = start(&url, &data, &logs[0], Some("provision.after_spawn_jm")).await;
    sluice_test_support::wait_for("A to lead", T, || async {
        leader(&db).await.filter(|(_, pid)| *pid == a.pid)
    })
    .await
    .unwrap();
    let b = start(&url, &data, &logs[1], None).await;
    let tok = token(&b.base, &key).await;
    let (_, me) = get(&b.base, &tok, "/v1/me").await;
    let org = me["organization"]["id"].as_str().unwrap().to_owned();
    let pool = call(
        &b.base,
        &tok,
        reqwest::Method::POST,
        "/v1/compute-pools",
        json!({ "name": "p", "region": "local", "max_kpu": 4 }),
    )
    .await;
    let create = |name: &'static str, base: String| {
        let (tok, pool) = (tok.clone(), pool["id"].clone());
        async move {
            call(&base, &tok, reqwest::Method::POST, "/v1/applications",
                json!({ "name": name, "compute_pool_id": pool, "sql": DATAGEN, "desired_state": "running",
                        "checkpoint": { "interval_ms": 1000, "mode": "exactly_once" } }))
            .await["id"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let first = create("first", b.base.clone()).await;
    a.crashed().await;
    let running = wait_status(&b.base, &tok, &first, |s| s["phase"] == "RUNNING").await;
    assert_eq!(
        running["generation"], 1,
        "the recorded run, not a new one: {running}"
    );
    assert_recorded(&data, &org, &first, 1);
    assert_eq!(settled_start(&db, &first).await, ["SUCCEEDED"]);
    let first_jm: u32 =
        std::fs::read_to_string(data.join(format!("clusters/clusters/{org}/{first}/jm-0/pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();

    // C (armed to die right after spawning a TaskManager) stands by, B is killed, C leads;
    // D stands by and takes over from C.
    let c = start(&url, &data, &logs[2], Some("provision.after_spawn_tm")).await;
    sluice_test_support::process::send_signal(b.pid, libc::SIGKILL);
    sluice_test_support::wait_for("C to lead", T, || async {
        leader_passes(&db)
            .await
            .filter(|(_, pid, n)| *pid == c.pid && *n >= 2)
    })
    .await
    .unwrap();
    drop(b);
    let d = start(&url, &data, &logs[3], None).await;
    let second = create("second", d.base.clone()).await;
    c.crashed().await;
    let running = wait_status(&d.base, &tok, &second, |s| s["phase"] == "RUNNING").await;
    assert_eq!(running["generation"], 1, "{running}");
    sluice_test_support::wait_for("D's first pass", T, || async {
        leader_passes(&db)
            .await
            .filter(|(_, pid, n)| *pid == d.pid && *n >= 2)
    })
    .await
    .unwrap();
    assert_recorded(&data, &org, &second, 1);
    assert_eq!(settled_start(&db, &second).await, ["SUCCEEDED"]);
    assert_recorded(&data, &org, &first, 1);
    assert!(
        engine_processes(&data)
            .iter()
            .any(|(pid, dir)| *pid == first_jm && dir.ends_with("jm-0")),
        "the first application's JobManager was re-adopted by C and D"
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(runs, 2, "one run per application");

    // E (armed to die after triggering an update's stop-with-savepoint) takes over from D,
    // F stands by; the second application is scaled up.
    let e = start(&url, &data, &logs[4], Some("stop.after_trigger")).await;
    sluice_test_support::process::send_signal(d.pid, libc::SIGKILL);
    sluice_test_support::wait_for("E to lead", T, || async {
        leader_passes(&db)
            .await
            .filter(|(_, pid, n)| *pid == e.pid && *n >= 2)
    })
    .await
    .unwrap();
    drop(d);
    let f = start(&url, &data, &logs[5], None).await;
    call(
        &f.base,
        &tok,
        reqwest::Method::PATCH,
        &format!("/v1/applications/{second}"),
        json!({ "parallelism": 2 }),
    )
    .await;
    e.crashed().await;
    let scaled = wait_status(&f.base, &tok, &second, |s| {
        s["phase"] == "RUNNING" && s["generation"] == 2
    })
    .await;
    assert_eq!(scaled["current_kpu_milli"], 2250, "{scaled}");
    let restore: String =
        sqlx::query_scalar("SELECT restore FROM runs WHERE application_id = $1 AND generation = 2")
            .bind(&second)
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(
        restore.contains("/savepoints/"),
        "generation 2 restores the savepoint E triggered: {restore}"
    );
    let updates: Vec<String> = sqlx::query_scalar(
        "SELECT state FROM operations WHERE application_id = $1 AND kind = 'update'",
    )
    .bind(&second)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(updates, ["SUCCEEDED"]);
    assert_recorded(&data, &org, &second, 2);

    // G (armed to die after deleting a cluster, before closing its run) takes over from F,
    // H stands by; the first application is deleted.
    let g = start(&url, &data, &logs[6], Some("teardown.after_delete")).await;
    sluice_test_support::process::send_signal(f.pid, libc::SIGKILL);
    sluice_test_support::wait_for("G to lead", T, || async {
        leader_passes(&db)
            .await
            .filter(|(_, pid, n)| *pid == g.pid && *n >= 2)
    })
    .await
    .unwrap();
    drop(f);
    let h = start(&url, &data, &logs[7], None).await;
    let del = reqwest::Client::new()
        .delete(format!("{}/v1/applications/{first}", h.base))
        .bearer_auth(&tok)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 202);
    let op = del.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    g.crashed().await;
    let deadline = Instant::now() + T;
    while get(&h.base, &tok, &format!("/v1/applications/{first}"))
        .await
        .0
        != 404
    {
        assert!(Instant::now() < deadline, "{first} not deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, o) = get(&h.base, &tok, &format!("/v1/operations/{op}")).await;
    assert_eq!(o["state"], "SUCCEEDED", "{o}");
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE application_id = $1 AND ended_at IS NULL",
    )
    .bind(&first)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(open, 0);
    let work = data.join(format!("clusters/clusters/{org}/{first}"));
    assert!(
        engine_processes(&data)
            .iter()
            .all(|(_, d)| d.parent() != Some(work.as_path())),
        "a process of the deleted application runs"
    );
    assert_recorded(&data, &org, &second, 2);
    drop(h);
    db.close().await;
}

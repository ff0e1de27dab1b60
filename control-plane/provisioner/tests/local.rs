//! The local provisioner with the real `sluice-engine` (from this workspace's target dir):
//! processes, ports, tokens, supervision, exit evidence, re-adoption after a restart of
//! the provisioner, deletion.
//!
//! Run: `dev/cargo build -p sluice-engine && dev/cargo test -p sluice-provisioner`.

#![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sluice_provisioner::local::{LocalOptions, LocalProvisioner, proc_start_ticks};
use sluice_provisioner::{
    CheckpointMode, CheckpointSpec, ClusterId, ClusterObservation, ClusterPhase, ClusterSpec,
    ProcessRole, ProvisionError, Provisioner, RestoreFrom, RestoreSpec, StateBackend,
};

const T: Duration = Duration::from_secs(60);

fn engine() -> PathBuf {
    // …/target/debug/deps/local-<hash> → …/target/debug/sluice-engine
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("sluice-engine");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace (or `dev/cargo build -p sluice-engine`) first",
        bin.display()
    );
    bin
}

const SQL: &str = "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '50', 'fields.id.kind' = 'sequence', 'fields.id.start' = '0', 'fields.id.end' = '1000000000');\nCREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO sink SELECT id FROM src;\n";

fn spec(blobs: &Path, app: &str, generation: u64, parallelism: u32) -> ClusterSpec {
    ClusterSpec {
        id: ClusterId {
            org_id: "org_test".into(),
            application_id: app.into(),
        },
        run_id: format!("run_{generation}"),
        generation,
        job_id: "0123456789abcdef0123456789abcdef".into(),
        sql: SQL.into(),
        parallelism,
        slots_per_taskmanager: 1,
        taskmanagers: parallelism,
        state_backend: StateBackend::Memory,
        checkpoint: CheckpointSpec {
            interval_ms: 1000,
            min_pause_ms: 0,
            mode: CheckpointMode::ExactlyOnce,
        },
        restore: RestoreSpec {
            from: RestoreFrom::None,
            allow_non_restored_state: false,
        },
        checkpoint_dir: format!("file://{}/org_test/{app}", blobs.display()),
        engine_env: BTreeMap::new(),
        kpu_milli: 2250,
        max_kpu_milli: None,
    }
}

fn options(root: &Path) -> LocalOptions {
    let mut o = LocalOptions::new(root, engine());
    o.poll_interval = Duration::from_millis(50);
    o.stop_grace = Duration::from_secs(5);
    o.restart_backoff_initial = Duration::from_millis(200);
    o
}

async fn wait_obs(
    p: &dyn Provisioner,
    id: &ClusterId,
    what: &str,
    cond: impl Fn(&ClusterObservation) -> bool,
) -> ClusterObservation {
    let deadline = Instant::now() + T;
    loop {
        let o = p.observe(id).await.unwrap();
        if cond(&o) {
            return o;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {o:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn job_state(
    http: &reqwest::Client,
    o: &ClusterObservation,
    token: Option<&str>,
) -> (u16, String) {
    let mut req = http.get(format!(
        "{}/jobs/0123456789abcdef0123456789abcdef",
        o.rest_url.as_ref().unwrap()
    ));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            (status, v["state"].as_str().unwrap_or("").to_owned())
        }
        Err(_) => (0, String::new()),
    }
}

async fn wait_job_running(http: &reqwest::Client, o: &ClusterObservation) {
    let deadline = Instant::now() + T;
    loop {
        let (status, state) = job_state(http, o, o.auth_token.as_deref()).await;
        if status == 200 && state == "RUNNING" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "job never RUNNING: {status} {state}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn live_pids(o: &ClusterObservation) -> Vec<u32> {
    o.processes
        .iter()
        .filter(|p| p.exited_at.is_none())
        .filter_map(|p| p.pid)
        .collect()
}

fn kill(pid: u32, sig: libc::c_int) {
    #[allow(unsafe_code)]
    // SAFETY: kill(2) of a process this test's provisioner started.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// The engine's own pid under a wrapper (`{proc dir}/pid`).
fn engine_pid_of(root: &Path, app: &str, dir_name: &str) -> u32 {
    let p = root
        .join("clusters/org_test")
        .join(app)
        .join(dir_name)
        .join("pid");
    std::fs::read_to_string(&p).unwrap().trim().parse().unwrap()
}

#[tokio::test]
async fn a_cluster_runs_is_supervised_and_is_deleted_with_exit_times() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("prov");
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let p = LocalProvisioner::open(options(&root)).await.unwrap();
    assert_eq!(p.kind(), "local");
    let s = spec(&blobs, "app_one", 1, 2);
    let absent = p.observe(&s.id).await.unwrap();
    assert_eq!(absent.phase, ClusterPhase::Absent);

    let first = p.apply(&s).await.unwrap();
    assert_eq!(first.phase, ClusterPhase::Starting);
    let started_at = first.started_at.unwrap();
    let o = wait_obs(p.as_ref(), &s.id, "a JobManager and 2 TaskManagers", |o| {
        o.phase == ClusterPhase::Running && live_pids(o).len() == 3
    })
    .await;
    assert_eq!(o.run_id.as_deref(), Some("run_1"));
    let token = o.auth_token.clone().unwrap();
    assert_eq!(token.len(), 64);
    let mode = std::fs::metadata(root.join("clusters/org_test/app_one/token"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    let http = reqwest::Client::new();
    wait_job_running(&http, &o).await;
    let (unauth, _) = job_state(&http, &o, None).await;
    assert_eq!(
        unauth, 401,
        "the JobManager's REST needs the cluster's token"
    );

    // Idempotent: the same spec changes nothing.
    let again = p.apply(&s).await.unwrap();
    assert_eq!(live_pids(&again), live_pids(&o));

    // A TaskManager killed: its exit is recorded (code and time) and it is restarted.
    let tm_pid = engine_pid_of(&root, "app_one", "tm-0-0");
    kill(tm_pid, libc::SIGKILL);
    let o = wait_obs(p.as_ref(), &s.id, "tm-0 restarted", |o| {
        o.processes.iter().filter(|p| p.name == "tm-0").count() == 2 && live_pids(o).len() == 3
    })
    .await;
    let dead = o.processes.iter().find(|p| p.name == "tm-0").unwrap();
    assert_eq!(dead.exit_code, Some(128 + libc::SIGKILL));
    assert!(dead.exited_at.unwrap() >= dead.started_at);
    assert_eq!(o.process_restarts(), 1);
    wait_job_running(&http, &o).await;

    // Delete: every process gone, exit times reported, working dir removed, idempotent.
    let pids = live_pids(&o);
    let rest = o.rest_url.clone().unwrap();
    let before = chrono::Utc::now();
    let gone = p.delete(&s.id).await.unwrap();
    assert_eq!(gone.phase, ClusterPhase::Terminated);
    assert!(
        gone.processes.iter().all(|p| p.exited_at.is_some()),
        "{gone:#?}"
    );
    let ended = gone.ended_at.unwrap();
    assert!(
        ended >= before && ended <= chrono::Utc::now(),
        "{ended} vs {before}"
    );
    assert_eq!(
        Some(ended),
        gone.processes.iter().filter_map(|p| p.exited_at).max()
    );
    assert_eq!(gone.started_at, Some(started_at));
    for pid in pids {
        assert!(proc_start_ticks(pid).is_none(), "pid {pid} still runs");
    }
    assert!(!root.join("clusters/org_test/app_one").exists());
    assert!(
        http.get(format!("{rest}/overview")).send().await.is_err(),
        "the REST port still answers"
    );
    let twice = p.delete(&s.id).await.unwrap();
    assert_eq!(twice.ended_at, Some(ended));
    assert_eq!(
        p.list().await.unwrap().len(),
        1,
        "the tombstone keeps the evidence"
    );
}

#[tokio::test]
async fn a_restarted_provisioner_re_adopts_its_clusters_and_reads_exits_it_missed() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("prov");
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let s = spec(&blobs, "app_two", 3, 2);
    let p = LocalProvisioner::open(options(&root)).await.unwrap();
    p.apply(&s).await.unwrap();
    let o = wait_obs(p.as_ref(), &s.id, "running", |o| {
        o.phase == ClusterPhase::Running && live_pids(o).len() == 3
    })
    .await;
    let http = reqwest::Client::new();
    wait_job_running(&http, &o).await;
    drop(p);

    // While no provisioner watches, a TaskManager dies: its wrapper records the exit.
    let tm_pid = engine_pid_of(&root, "app_two", "tm-1-0");
    let killed_at = chrono::Utc::now();
    kill(tm_pid, libc::SIGKILL);
    tokio::time::sleep(Duration::from_millis(300)).await;

    let p: Arc<LocalProvisioner> = LocalProvisioner::open(options(&root)).await.unwrap();
    let adopted = p.observe(&s.id).await.unwrap();
    assert_eq!(adopted.run_id.as_deref(), Some("run_3"));
    let jm = |o: &ClusterObservation| {
        o.processes
            .iter()
            .find(|p| p.role == ProcessRole::Jobmanager)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        jm(&adopted).pid,
        jm(&o).pid,
        "the JobManager was re-adopted, not restarted"
    );
    assert!(jm(&adopted).exited_at.is_none());
    let tm1 = adopted.processes.iter().find(|p| p.name == "tm-1").unwrap();
    let exited = tm1.exited_at.expect("the missed exit is known");
    assert!(
        exited >= killed_at && exited < killed_at + chrono::Duration::seconds(2),
        "exit at {exited}, killed at {killed_at}"
    );
    assert_eq!(tm1.exit_code, Some(128 + libc::SIGKILL));
    let o = wait_obs(p.as_ref(), &s.id, "tm-1 restarted", |o| {
        live_pids(o).len() == 3
    })
    .await;
    wait_job_running(&http, &o).await;

    // Re-applying the same run is a no-op; a newer generation replaces the cluster.
    assert_eq!(live_pids(&p.apply(&s).await.unwrap()), live_pids(&o));
    let newer = spec(&blobs, "app_two", 4, 1);
    let replaced = p.apply(&newer).await.unwrap();
    assert_eq!(replaced.run_id.as_deref(), Some("run_4"));
    for pid in live_pids(&o) {
        assert!(proc_start_ticks(pid).is_none(), "old pid {pid} still runs");
    }
    let o = wait_obs(p.as_ref(), &newer.id, "generation 4 running", |o| {
        o.phase == ClusterPhase::Running && live_pids(o).len() == 2
    })
    .await;
    wait_job_running(&http, &o).await;
    assert!(
        p.apply(&spec(&blobs, "app_two", 2, 1)).await.is_err(),
        "an older generation is refused"
    );
    p.delete(&newer.id).await.unwrap();
}

#[tokio::test]
async fn a_dead_jobmanager_fails_the_cluster_with_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("prov");
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let p = LocalProvisioner::open(options(&root)).await.unwrap();
    let s = spec(&blobs, "app_three", 1, 1);
    p.apply(&s).await.unwrap();
    let o = wait_obs(p.as_ref(), &s.id, "running", |o| {
        o.phase == ClusterPhase::Running && live_pids(o).len() == 2
    })
    .await;
    kill(engine_pid_of(&root, "app_three", "jm-0"), libc::SIGKILL);
    let failed = wait_obs(p.as_ref(), &s.id, "failed and stopped", |o| {
        o.phase == ClusterPhase::Failed && live_pids(o).is_empty()
    })
    .await;
    assert!(
        failed.message.as_deref().unwrap().contains("137"),
        "{failed:#?}"
    );
    assert_eq!(
        failed.processes.len(),
        o.processes.len(),
        "nothing restarted"
    );
    let gone = p.delete(&s.id).await.unwrap();
    assert_eq!(gone.phase, ClusterPhase::Terminated);
    assert!(gone.ended_at.is_some());

    // A spec the provisioner cannot run is refused before anything starts.
    let mut bad = spec(&blobs, "app_three", 2, 1);
    bad.job_id = "xyz".into();
    assert!(p.apply(&bad).await.is_err());
    let mut bad = spec(&blobs, "App-Three", 2, 1);
    bad.id.application_id = "../escape".into();
    assert!(p.apply(&bad).await.is_err());
}

/// Two provisioners on one root, as two control planes of one host: only the active one
/// changes anything (the standby reads the records); a newer activation fences the older
/// one, which steps down at its next change without touching the cluster; the successor
/// re-adopts the running processes and alone supervises them.
#[tokio::test]
async fn only_the_active_provisioner_acts_and_a_newer_epoch_fences_the_older() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("prov");
    let blobs = dir.path().join("blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let first = LocalProvisioner::open_standby(options(&root))
        .await
        .unwrap();
    let second = LocalProvisioner::open_standby(options(&root))
        .await
        .unwrap();
    let s = spec(&blobs, "app_lead", 1, 1);
    assert!(matches!(
        first.apply(&s).await,
        Err(ProvisionError::NotLeader(_))
    ));
    first.activate(1).await.unwrap();
    first.apply(&s).await.unwrap();
    let o = wait_obs(first.as_ref(), &s.id, "running", |o| {
        o.phase == ClusterPhase::Running && live_pids(o).len() == 2
    })
    .await;

    let seen = second.observe(&s.id).await.unwrap();
    assert_eq!(seen.run_id.as_deref(), Some("run_1"));
    assert_eq!(
        live_pids(&seen),
        live_pids(&o),
        "the standby reads the record"
    );
    assert_eq!(second.list().await.unwrap().len(), 1);
    assert!(matches!(
        second.delete(&s.id).await,
        Err(ProvisionError::NotLeader(_))
    ));

    second.activate(2).await.unwrap();
    let other = spec(&blobs, "app_other", 1, 1);
    assert!(matches!(
        first.apply(&other).await,
        Err(ProvisionError::NotLeader(_))
    ));
    assert_eq!(first.epoch(), None, "the deposed one stepped down");
    assert_eq!(
        second.observe(&other.id).await.unwrap().phase,
        ClusterPhase::Absent
    );
    assert!(
        first.activate(1).await.is_err(),
        "an older epoch cannot lead again"
    );
    let adopted = second.observe(&s.id).await.unwrap();
    assert_eq!(
        live_pids(&adopted),
        live_pids(&o),
        "re-adopted, not restarted"
    );

    // A TaskManager killed now is restarted by the active provisioner alone.
    let http = reqwest::Client::new();
    wait_job_running(&http, &adopted).await;
    kill(engine_pid_of(&root, "app_lead", "tm-0-0"), libc::SIGKILL);
    let o2 = wait_obs(second.as_ref(), &s.id, "tm-0 restarted", |o| {
        o.process_restarts() == 1 && live_pids(o).len() == 2
    })
    .await;
    wait_job_running(&http, &o2).await;
    let o2 = second.observe(&s.id).await.unwrap();
    assert_eq!(o2.process_restarts(), 1, "{o2:#?}");
    assert_eq!(live_pids(&o2).len(), 2, "{o2:#?}");
    let gone = second.delete(&s.id).await.unwrap();
    assert_eq!(gone.phase, ClusterPhase::Terminated);
    for pid in live_pids(&o2) {
        assert!(proc_start_ticks(pid).is_none(), "pid {pid} still runs");
    }
}

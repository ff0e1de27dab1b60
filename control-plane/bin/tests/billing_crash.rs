//! The ledger across a control-plane crash, with real processes: the real `sluice` binary
//! runs two applications on the local provisioner, is SIGKILLed, one application's engine
//! processes are SIGKILLed during the outage, and a restarted binary re-adopts the survivor
//! and closes the dead cluster's span. Afterwards every span matches the lifetime of its
//! run's processes within one second.
//!
//! The truth the ledger is compared with is not the provisioner's records (the control
//! plane's own evidence): a run starts at the kernel's start time of its first process
//! (`/proc/{pid}/stat` + boot time) and ends when the test killed its engines or, for the
//! stopped one, when the test saw its last process disappear from `/proc`.
#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

const T: Duration = Duration::from_secs(60);
const TOKEN: &str = "billing-crash-operator-token-0123456789";
const DATAGEN: &str = "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20');\nCREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO sink SELECT id FROM src;";

mod common;

use common::{Server, ServerOpts, bootstrap, call, start_server, token};

async fn start(url: &str, data: &Path) -> Server {
    start_server(
        url,
        data,
        ServerOpts {
            env: &[("SLUICE_AUTH__ADMIN_TOKEN", TOKEN)],
            ..ServerOpts::default()
        },
    )
    .await
}

async fn wait_phase(base: &str, token: &str, id: &str, phase: &str) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let r = reqwest::Client::new()
            .get(format!("{base}/v1/applications/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if v["status"]["phase"] == phase {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "application {id} not {phase}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The provisioner's record of an application's cluster.
fn record(data: &Path, app: &str) -> Value {
    for e in std::fs::read_dir(data.join("clusters/records"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_none_or(|x| x != "json") {
            continue;
        }
        let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        if v["spec"]["id"]["application_id"] == app {
            return v;
        }
    }
    panic!("no cluster record for {app}");
}

/// A process of a run as the kernel sees it.
#[derive(Debug, Clone)]
struct Proc {
    /// The wrapper (leader of its process group).
    wrapper: u32,
    /// The engine the wrapper runs.
    engine: u32,
    dir: PathBuf,
    /// The wrapper's start time by the kernel.
    started: DateTime<Utc>,
}

/// The start of a process in clock ticks after boot; `None` when it is gone or a zombie.
fn stat(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    if f.first() == Some(&"Z") {
        return None;
    }
    // Field 22 of the whole line is the 20th after the command name.
    f.get(19)?.parse().ok()
}

fn alive(pid: u32) -> bool {
    stat(pid).is_some()
}

/// The wall-clock start of a process: its start in ticks after boot against the boot clock
/// now (`btime` in `/proc/stat` has whole seconds only, too coarse for a one-second check).
#[allow(unsafe_code)]
fn kernel_start(pid: u32) -> DateTime<Utc> {
    let ticks = stat(pid).unwrap_or_else(|| panic!("process {pid} is gone"));
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only the timespec it is given; sysconf reads a constant.
    let (rc, hz) = unsafe {
        (
            libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts),
            libc::sysconf(libc::_SC_CLK_TCK),
        )
    };
    let now = Utc::now();
    assert_eq!(rc, 0);
    let since_boot_ms = ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000;
    let started_ms = (ticks * 1000 / hz as u64) as i64;
    now - chrono::Duration::milliseconds(since_boot_ms - started_ms)
}

/// The live processes of an application's run (its JobManager and TaskManagers).
fn procs(data: &Path, app: &str) -> (String, Vec<Proc>) {
    let r = record(data, app);
    let mut out = Vec::new();
    // An incarnation that already exited (a TaskManager restarted while starting) is not
    // the one to kill or watch; the run still starts with its JobManager.
    for p in r["procs"].as_array().unwrap() {
        if !p["exited_at"].is_null() {
            continue;
        }
        let wrapper = p["pid"].as_u64().unwrap() as u32;
        let dir = PathBuf::from(p["dir"].as_str().unwrap());
        let engine: u32 = std::fs::read_to_string(dir.join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        out.push(Proc {
            wrapper,
            engine,
            started: kernel_start(wrapper),
            dir,
        });
    }
    (r["spec"]["run_id"].as_str().unwrap().to_owned(), out)
}

/// Kills every engine process still alive under the data dir when the test ends (clusters
/// outlive the control plane by design, so nothing else would).
struct Reaper(PathBuf);

impl Drop for Reaper {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.0.join("clusters/records")) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(v) =
                serde_json::from_slice::<Value>(&std::fs::read(e.path()).unwrap_or_default())
            else {
                continue;
            };
            for p in v["procs"].as_array().into_iter().flatten() {
                if let Some(pid) = p["pid"].as_u64()
                    && alive(pid as u32)
                {
                    // SAFETY: kill(2) touches no memory. The wrapper leads its process
                    // group: the group takes the engine with it.
                    unsafe {
                        libc::kill(-(pid as libc::pid_t), libc::SIGKILL);
                    }
                }
            }
        }
    }
}

type Span = (String, DateTime<Utc>, Option<DateTime<Utc>>, Option<String>);

async fn spans(db: &sqlx::PgPool, app: &str) -> Vec<Span> {
    sqlx::query_as(
        "SELECT run_id, started_at, ended_at, closed_by FROM usage_spans \
         WHERE application_id = $1 ORDER BY started_at",
    )
    .bind(app)
    .fetch_all(db)
    .await
    .unwrap()
}

fn within_a_second(what: &str, ledger: DateTime<Utc>, truth: DateTime<Utc>) {
    let off = (ledger - truth).num_milliseconds().abs();
    eprintln!("{what}: ledger {ledger}, processes {truth} ({off} ms apart)");
    assert!(
        off <= 1000,
        "{what}: ledger {ledger}, processes {truth} ({off} ms apart)"
    );
}

#[tokio::test]
async fn the_ledger_matches_real_process_lifetimes_across_a_control_plane_crash() {
    let url = sluice_test_support::postgres()
        .fresh_database()
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();
    let _reaper = Reaper(data.path().to_owned());

    let key = bootstrap(&url, data.path(), "bill");

    let s = start(&url, data.path()).await;
    let tok = token(&s.base, &key).await;
    let pool = call(
        &s.base,
        &tok,
        reqwest::Method::POST,
        "/v1/compute-pools",
        json!({ "name": "p", "region": "local", "max_kpu": 4 }),
    )
    .await;
    let mut ids = Vec::new();
    for name in ["survivor", "victim"] {
        let app = call(&s.base, &tok, reqwest::Method::POST, "/v1/applications",
            json!({ "name": name, "compute_pool_id": pool["id"], "sql": DATAGEN, "desired_state": "running",
                    "checkpoint": { "interval_ms": 1000, "mode": "exactly_once" } })).await;
        ids.push(app["id"].as_str().unwrap().to_owned());
    }
    let (survivor, victim) = (ids[0].clone(), ids[1].clone());
    for id in &ids {
        wait_phase(&s.base, &tok, id, "RUNNING").await;
    }
    let (survivor_run, survivor_procs) = procs(data.path(), &survivor);
    let (victim_run, victim_procs) = procs(data.path(), &victim);
    assert!(
        survivor_procs.len() >= 2 && victim_procs.len() >= 2,
        "a JobManager and a TaskManager each: {survivor_procs:?} {victim_procs:?}"
    );

    // Let them run for a while, then crash the control plane.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let Server { mut child, .. } = s;
    sluice_test_support::process::send_signal(child.id().unwrap(), libc::SIGKILL);
    child.wait().await.unwrap();

    // During the outage the victim dies whole: every process group (wrapper and engine) is
    // SIGKILLed, as an OOM killer or an operator would, so no exit record gets written and
    // only the wrappers' heartbeats say when it died. (Engine crashes that the wrappers
    // record are covered by sluice-provisioner's tests.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Utc::now();
    for p in &victim_procs {
        // SAFETY: kill(2) touches no memory; the wrapper leads its own process group.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-(p.wrapper as libc::pid_t), libc::SIGKILL);
        }
    }
    sluice_test_support::wait_for("the victim's processes to die", T, || async {
        victim_procs
            .iter()
            .all(|p| !alive(p.engine) && !alive(p.wrapper))
            .then_some(())
    })
    .await
    .unwrap();
    assert!(victim_procs.iter().all(|p| !p.dir.join("exit").exists()));
    assert!(survivor_procs.iter().all(|p| alive(p.engine)));
    // An outage long enough that closing the span at the restart would be seen.
    tokio::time::sleep(Duration::from_secs(4)).await;

    let s = start(&url, data.path()).await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    sluice_test_support::wait_for("the victim's span to close", T, || async {
        spans(&db, &victim)
            .await
            .iter()
            .any(|sp| sp.0 == victim_run && sp.2.is_some())
            .then_some(())
    })
    .await
    .unwrap();
    // No more runs of the victim: stopping it keeps a restart from muddling the end.
    call(
        &s.base,
        &tok,
        reqwest::Method::PATCH,
        &format!("/v1/applications/{victim}"),
        json!({ "desired_state": "stopped" }),
    )
    .await;

    // The survivor was re-adopted: the same run, the same processes, still running.
    let a = wait_phase(&s.base, &tok, &survivor, "RUNNING").await;
    assert_eq!(
        a["status"]["generation"], 1,
        "re-adopted, not restarted: {a}"
    );
    let (run_now, _) = procs(data.path(), &survivor);
    assert_eq!(run_now, survivor_run);
    assert!(survivor_procs.iter().all(|p| alive(p.engine)));
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Stop it and watch its processes go.
    call(
        &s.base,
        &tok,
        reqwest::Method::PATCH,
        &format!("/v1/applications/{survivor}"),
        json!({ "desired_state": "stopped" }),
    )
    .await;
    let deadline = Instant::now() + T;
    let survivor_gone = loop {
        if survivor_procs
            .iter()
            .all(|p| !alive(p.engine) && !alive(p.wrapper))
        {
            break Utc::now();
        }
        assert!(Instant::now() < deadline, "the survivor's processes stay");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    wait_phase(&s.base, &tok, &survivor, "STOPPED").await;
    wait_phase(&s.base, &tok, &victim, "STOPPED").await;

    // The ledger against the processes.
    let sv = spans(&db, &survivor).await;
    assert_eq!(sv.len(), 1, "one span, through the outage: {sv:?}");
    assert_eq!(sv[0].0, survivor_run);
    within_a_second(
        "survivor start",
        sv[0].1,
        survivor_procs.iter().map(|p| p.started).min().unwrap(),
    );
    within_a_second("survivor end", sv[0].2.unwrap(), survivor_gone);

    let vs = spans(&db, &victim).await;
    let of_run: Vec<&Span> = vs.iter().filter(|sp| sp.0 == victim_run).collect();
    assert_eq!(of_run.len(), 1, "{vs:?}");
    within_a_second(
        "victim start",
        of_run[0].1,
        victim_procs.iter().map(|p| p.started).min().unwrap(),
    );
    within_a_second(
        "victim end (its kill, not the restart)",
        of_run[0].2.unwrap(),
        killed_at,
    );
    // Any later run of the victim (a restart after the failure) starts after it ended, and
    // nothing is left open.
    for w in vs.windows(2) {
        assert!(w[0].2.unwrap() <= w[1].1, "overlapping spans: {vs:?}");
    }
    assert!(
        vs.iter().chain(&sv).all(|sp| sp.2.is_some()),
        "{vs:?} {sv:?}"
    );
    db.close().await;
    let Server { mut child, .. } = s;
    sluice_test_support::process::send_signal(child.id().unwrap(), libc::SIGKILL);
    child.wait().await.unwrap();
}

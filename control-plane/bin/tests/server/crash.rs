//! SIGKILL-like crashes of the real `sluice` binary (failpoints abort it between a side
//! effect and its record) in the middle of start, update and delete: a restarted server
//! converges, with no orphan process, no duplicate cluster and no lost operation.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const T: Duration = Duration::from_secs(90);
const DATAGEN: &str = "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20');\\nCREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');\\nINSERT INTO sink SELECT id FROM src;";

use super::common::{Server, ServerOpts, bootstrap, call, start_server, token};

async fn start(url: &str, data: &Path, failpoint: Option<&str>) -> Server {
    start_server(
        url,
        data,
        ServerOpts {
            failpoint,
            env: &[(
                "SLUICE_AUTH__ADMIN_TOKEN",
                "crash-test-operator-token-0123456789",
            )],
            log: None,
        },
    )
    .await
}

async fn wait_app(base: &str, token: &str, id: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + T;
    loop {
        let r = reqwest::Client::new()
            .get(format!("{base}/v1/applications/{id}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let v: Value = r.json().await.unwrap_or(Value::Null);
        if cond(&json!({ "http": status, "app": v })) {
            return v;
        }
        assert!(Instant::now() < deadline, "application {id}: {status} {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every process of the data dir's clusters that is still alive, by its record.
fn live_processes(data: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(data.join("clusters/records")) else {
        return out;
    };
    for e in entries.flatten() {
        let v: Value = serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
        for p in v["procs"].as_array().into_iter().flatten() {
            let pid = p["pid"].as_u64().unwrap();
            if p["exited_at"].is_null() && Path::new(&format!("/proc/{pid}")).exists() {
                out.push((p["name"].as_str().unwrap().to_owned(), pid));
            }
        }
    }
    out
}

async fn op_state(base: &str, token: &str, op: &str) -> String {
    call(
        base,
        token,
        reqwest::Method::GET,
        &format!("/v1/operations/{op}"),
        None,
    )
    .await["state"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_server_killed_during_start_update_and_delete_converges_after_a_restart() {
    let url = sluice_test_support::postgres()
        .fresh_database()
        .await
        .unwrap();
    let data = tempfile::tempdir().unwrap();

    // Bootstrap an organization with the binary, exchange the key for a token.
    let key = bootstrap(&url, data.path(), "crash");

    // 1. Killed right after the cluster was applied, before the span was recorded.
    let s = start(&url, data.path(), Some("start.after_apply")).await;
    let tok = token(&s.base, &key).await;
    let pool = call(
        &s.base,
        &tok,
        reqwest::Method::POST,
        "/v1/compute-pools",
        Some(json!({ "name": "p", "region": "local", "max_kpu": 4 })),
    )
    .await;
    let sql: String = serde_json::from_str(&format!("\"{DATAGEN}\"")).unwrap();
    let app = call(&s.base, &tok, reqwest::Method::POST, "/v1/applications",
        Some(json!({ "name": "job", "compute_pool_id": pool["id"], "sql": sql, "desired_state": "running",
                     "checkpoint": { "interval_ms": 1000, "mode": "exactly_once" } }))).await;
    let id = app["id"].as_str().unwrap().to_owned();
    s.crashed().await;
    let s = start(&url, data.path(), None).await;
    let a = wait_app(&s.base, &tok, &id, |v| {
        v["app"]["status"]["phase"] == "RUNNING"
    })
    .await;
    assert_eq!(
        a["status"]["generation"], 1,
        "the same cluster, re-adopted: {a}"
    );
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE application_id = $1")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(runs, 1);
    let open_spans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_spans WHERE application_id = $1 AND ended_at IS NULL",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(
        open_spans, 1,
        "the span was opened from the cluster's observed start"
    );
    assert_eq!(live_processes(data.path()).len(), 2);
    let start_ops: Vec<String> = sqlx::query_scalar(
        "SELECT state FROM operations WHERE application_id = $1 AND kind = 'start'",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(start_ops, ["SUCCEEDED"]);
    s.kill();

    // 2. Killed right after stop-with-savepoint was triggered for an update.
    let s = start(&url, data.path(), Some("stop.after_trigger")).await;
    let patched = reqwest::Client::new()
        .patch(format!("{}/v1/applications/{id}", s.base))
        .bearer_auth(&tok)
        .json(&json!({ "parallelism": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    s.crashed().await;
    let s = start(&url, data.path(), None).await;
    let a = wait_app(&s.base, &tok, &id, |v| {
        v["app"]["status"]["phase"] == "RUNNING" && v["app"]["status"]["generation"] == 2
    })
    .await;
    assert_eq!(a["status"]["observed_version"], a["version"]);
    let live = live_processes(data.path());
    assert_eq!(
        live.len(),
        3,
        "one JobManager and two TaskManagers, nothing else: {live:?}"
    );
    let update_ops: Vec<String> = sqlx::query_scalar(
        "SELECT state FROM operations WHERE application_id = $1 AND kind = 'update'",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(update_ops, ["SUCCEEDED"]);
    let savepoint: Option<String> =
        sqlx::query_scalar("SELECT restore FROM runs WHERE application_id = $1 AND generation = 2")
            .bind(&id)
            .fetch_optional(&db)
            .await
            .unwrap();
    assert!(
        savepoint.is_some_and(|r| r.contains("/savepoints/")),
        "generation 2 restored the update's savepoint"
    );
    s.kill();

    // 3. Killed right after the cluster was deleted, before the run was closed.
    let s = start(&url, data.path(), Some("teardown.after_delete")).await;
    let del = call(
        &s.base,
        &tok,
        reqwest::Method::DELETE,
        &format!("/v1/applications/{id}"),
        None,
    )
    .await;
    let op = del["id"].as_str().unwrap().to_owned();
    s.crashed().await;
    assert!(
        live_processes(data.path()).is_empty(),
        "the cluster went before the crash"
    );
    let s = start(&url, data.path(), None).await;
    wait_app(&s.base, &tok, &id, |v| v["http"] == 404).await;
    assert_eq!(op_state(&s.base, &tok, &op).await, "SUCCEEDED");
    let spans: Vec<(Option<chrono::DateTime<chrono::Utc>>, Option<String>)> = sqlx::query_as(
        "SELECT ended_at, closed_by FROM usage_spans WHERE application_id = $1 ORDER BY started_at",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(spans.len(), 2, "{spans:?}");
    assert!(spans.iter().all(|(e, _)| e.is_some()), "{spans:?}");
    assert_eq!(spans[1].1.as_deref(), Some("deleted"));
    let open_runs: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE application_id = $1 AND ended_at IS NULL",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(open_runs, 0);
    assert!(live_processes(data.path()).is_empty());
    // No object (file) is left under the application's prefix in the filesystem store.
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                files(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let blobs = data.path().join("blobs");
    let mut left = Vec::new();
    for org in std::fs::read_dir(&blobs).unwrap().flatten() {
        files(&org.path().join(&id), &mut left);
    }
    assert!(left.is_empty(), "objects of {id} left: {left:?}");
    let mut all = Vec::new();
    files(&blobs, &mut all);
    assert!(
        all.iter().all(|p| !p.to_string_lossy().contains(&id)),
        "{all:?}"
    );
    db.close().await;
    s.kill();
}

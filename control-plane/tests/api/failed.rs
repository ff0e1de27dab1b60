//! A FAILED application starts again with `:start`, at the same version (DESIGN §3:
//! `FAILED ──start──▶ PENDING`), as AWS MSF's StartApplication restarts an application
//! without a new version.

use reqwest::Method;
use serde_json::json;

use crate::admission::wait_status;
use crate::cluster::{Storage, clusters, engine_app};

/// A bounded input: the job runs for about five seconds and then finishes, which an
/// application (meant to run) reports as FAILED with `job_ended`.
const BOUNDED: &str = "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20', 'number-of-rows' = '100');\nCREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO sink SELECT id FROM src;";

#[tokio::test]
async fn a_failed_application_starts_again_without_a_new_version() {
    let c = clusters(Storage::Fs).await;
    let app = engine_app(&c, None).await;
    let org = app.new_org("failed").await;
    let pool = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "p", "region": "local", "max_kpu": 2 }),
        )
        .await;
    let created = app
        .post(
            "/v1/applications",
            &org.admin,
            json!({ "name": "bounded", "compute_pool_id": pool.body["id"], "sql": BOUNDED,
                    "desired_state": "running" }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let version = created.body["version"].clone();
    let first = wait_status(&app, &org.admin, &id, "FAILED", |_| true).await;
    assert_eq!(first["reason"], "job_ended", "{first}");
    assert_eq!(first["generation"], 1, "{first}");
    let pool_after = app
        .get(
            &format!("/v1/compute-pools/{}", pool.body["id"].as_str().unwrap()),
            &org.admin,
        )
        .await;
    assert_eq!(pool_after.body["status"]["current_kpu_milli"], 0);

    let r = app
        .post(
            &format!("/v1/applications/{id}:start"),
            &org.admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let op = r.body["id"].as_str().unwrap().to_owned();
    let again = wait_status(&app, &org.admin, &id, "RUNNING", |s| s["generation"] == 2).await;
    assert_eq!(again["observed_version"], version, "{again}");
    assert_ne!(again["run_id"], first["run_id"]);
    let a = app.get(&format!("/v1/applications/{id}"), &org.admin).await;
    assert_eq!(a.body["version"], version, "no new version: {}", a.body);
    let versions = app
        .get(&format!("/v1/applications/{id}/versions"), &org.admin)
        .await;
    assert_eq!(versions.body["items"].as_array().unwrap().len(), 1);
    let o = app.get(&format!("/v1/operations/{op}"), &org.admin).await;
    assert_eq!(o.body["state"], "SUCCEEDED", "{}", o.body);
    assert_eq!(o.body["kind"], "start", "{}", o.body);

    // Its input ends again: FAILED again, on the second run.
    let second = wait_status(&app, &org.admin, &id, "FAILED", |s| s["generation"] == 2).await;
    assert_eq!(second["reason"], "job_ended", "{second}");
    let r = app
        .call(
            Method::DELETE,
            &format!("/v1/applications/{id}"),
            Some(&org.admin),
            None,
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    crate::admission::wait_gone(&app, &org.admin, &id).await;
}

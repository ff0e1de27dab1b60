//! The benchmark of issue 6: create → RUNNING with the local provisioner and the real
//! engine, 50 applications one after another (each stopped before the next), p50 and p99.
//! Goal: p50 < 2 s. Prints the figures (`--nocapture` to see them).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::json;

use crate::cluster::{Storage, clusters, engine_app};

const DATAGEN: &str = "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20');\nCREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO sink SELECT id FROM src;";

#[tokio::test]
async fn create_to_running_latency_over_50_applications() {
    let c = clusters(Storage::Fs).await;
    let app = engine_app(&c, None).await;
    let org = app.new_org("latency").await;
    let pool = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "p", "region": "local", "max_kpu": 4 }),
        )
        .await;
    let mut took = Vec::new();
    let mut ids = Vec::new();
    for i in 0..50 {
        let t0 = Instant::now();
        let r = app
            .post(
                "/v1/applications",
                &org.admin,
                json!({ "name": format!("l{i}"), "compute_pool_id": pool.body["id"], "sql": DATAGEN,
                        "desired_state": "running", "checkpoint": { "interval_ms": 10000, "mode": "exactly_once" } }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.body["id"].as_str().unwrap().to_owned();
        loop {
            let s = app.get(&format!("/v1/applications/{id}"), &org.admin).await;
            if s.body["status"]["phase"] == "RUNNING" {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(60), "{}", s.body);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        took.push(t0.elapsed());
        let stop = app
            .post(
                &format!("/v1/applications/{id}:stop"),
                &org.admin,
                json!({ "force": true }),
            )
            .await;
        assert_eq!(stop.status, 202, "{}", stop.body);
        crate::admission::wait_phase(&app, &org.admin, &id, "STOPPED").await;
        ids.push(id);
    }
    took.sort();
    let p50 = took[took.len() / 2];
    let p99 = took[(took.len() * 99).div_ceil(100) - 1];
    eprintln!(
        "create → RUNNING over {} applications: p50 {p50:?}, p99 {p99:?}, min {:?}, max {:?}",
        took.len(),
        took[0],
        took[took.len() - 1]
    );
    assert!(p50 < Duration::from_secs(2), "p50 {p50:?}");
    for id in &ids {
        let r = app
            .call(
                Method::DELETE,
                &format!("/v1/applications/{id}"),
                Some(&org.admin),
                None,
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
    }
    for id in &ids {
        crate::admission::wait_gone(&app, &org.admin, id).await;
    }
}

/// The other figure of issue 6: one reconciler pass with 10,000 applications in the
/// database, all stopped (goal < 1 s).
#[tokio::test]
async fn a_reconciler_pass_over_10_000_stopped_applications() {
    let c = clusters(Storage::Fs).await;
    let app = crate::helpers::spawn_app().await;
    let org = app.new_org("many").await;
    let pool = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "p", "region": "local", "max_kpu": 100 }),
        )
        .await;
    let first = app
        .post(
            "/v1/applications",
            &org.admin,
            json!({ "name": "seed", "compute_pool_id": pool.body["id"], "sql": DATAGEN }),
        )
        .await;
    assert_eq!(first.status, 201, "{}", first.body);
    let db = app.db().await;
    sqlx::query(
        "INSERT INTO applications (id, org_id, pool_id, name, spec, version)
         SELECT 'app_' || md5(g::text), a.org_id, a.pool_id, 'n' || g,
                jsonb_set(a.spec, '{name}', to_jsonb('n' || g)), 1
         FROM applications a, generate_series(1, 9999) g WHERE a.id = $1",
    )
    .bind(first.body["id"].as_str().unwrap())
    .execute(&db)
    .await
    .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM applications")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 10_000);
    let mut cfg = sluice_control_plane::config::Config::load(
        None,
        [("SLUICE_DATABASE__URL".to_string(), app.db_url.clone())],
    )
    .unwrap();
    crate::cluster::fast(&mut cfg);
    let r = sluice_control_plane::reconcile::Reconciler::new(
        db.clone(),
        app.db_url.clone(),
        c.engine.clone(),
        cfg.reconciler.clone(),
    );
    // A pass acts only under leadership (no server runs a reconciler on this database).
    let leading = r
        .elect()
        .await
        .unwrap()
        .expect("the only candidate is elected");
    let mut took = Vec::new();
    for _ in 0..5 {
        let t0 = Instant::now();
        let looked_at = r.pass().await.unwrap();
        took.push(t0.elapsed());
        assert_eq!(looked_at, 0, "stopped applications need no work");
    }
    took.sort();
    eprintln!(
        "reconciler pass over 10,000 stopped applications: median {:?}, max {:?}",
        took[2], took[4]
    );
    assert!(took[2] < Duration::from_secs(1), "{took:?}");
    r.step_down(leading).await;
    db.close().await;
}

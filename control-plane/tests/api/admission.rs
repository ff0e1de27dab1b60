//! Admission against `max_kpu` (DESIGN §6): the cap holds under concurrency, rejects carry
//! the free and requested KPUs, a queueing pool admits in FIFO order as capacity frees.

use std::time::Duration;

use futures::future::join_all;
use reqwest::Method;
use serde_json::json;
use sluice_provisioner::Provisioner;
use sluice_test_support::wait_for;

use crate::cluster::{Storage, clusters, engine_app};
use crate::helpers::{TestApp, spawn_app};

const DATAGEN: &str = "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20');\nCREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO sink SELECT id FROM src;";

async fn pool(app: &TestApp, token: &str, max_kpu: u32, admission: &str) -> String {
    let r = app
        .post(
            "/v1/compute-pools",
            token,
            json!({ "name": sluice_test_support::unique_name("p"), "region": "local", "max_kpu": max_kpu, "admission": admission }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn new_app(app: &TestApp, token: &str, pool: &str, name: &str) -> String {
    let r = app
        .post(
            "/v1/applications",
            token,
            json!({ "name": name, "compute_pool_id": pool, "sql": DATAGEN, "checkpoint": { "interval_ms": 1000, "mode": "exactly_once" } }),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    r.body["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_hundred_concurrent_starts_admit_exactly_what_fits() {
    let app = spawn_app().await;
    let org = app.new_org("admission").await;
    // 5 KPU; each application holds 1 + 0.25: room for exactly 4.
    let pool_id = pool(&app, &org.admin, 5, "reject").await;
    let mut ids = Vec::new();
    for i in 0..100 {
        ids.push(new_app(&app, &org.admin, &pool_id, &format!("a{i}")).await);
    }
    let paths: Vec<String> = ids
        .iter()
        .map(|id| format!("/v1/applications/{id}:start"))
        .collect();
    let starts = join_all(paths.iter().map(|p| app.post(p, &org.admin, json!({})))).await;
    let admitted = starts.iter().filter(|r| r.status == 202).count();
    let rejected: Vec<_> = starts.iter().filter(|r| r.status == 409).collect();
    assert_eq!(
        admitted,
        4,
        "{:?}",
        starts.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(rejected.len(), 96);
    for r in &rejected {
        r.assert_problem(409, "compute_pool_exhausted");
        assert_eq!(r.body["requested_kpu_milli"], 1250, "{}", r.body);
        assert_eq!(r.body["free_kpu_milli"], 0, "{}", r.body);
    }
    let p = app
        .get(&format!("/v1/compute-pools/{pool_id}"), &org.admin)
        .await;
    assert_eq!(p.body["status"]["current_kpu_milli"], 5000, "{}", p.body);
    // A rejected start changed nothing: its application is still meant to be stopped.
    let rejected_app = ids
        .iter()
        .zip(&starts)
        .find(|(_, r)| r.status == 409)
        .map(|(id, _)| id)
        .unwrap();
    let a = app
        .get(&format!("/v1/applications/{rejected_app}"), &org.admin)
        .await;
    assert_eq!(a.body["spec"]["desired_state"], "stopped");
    assert_eq!(a.body["version"], 1);

    // Lowering max_kpu below what is held is 409; raising it lets one more in.
    app.call(
        Method::PATCH,
        &format!("/v1/compute-pools/{pool_id}"),
        Some(&org.admin),
        Some(json!({ "max_kpu": 4 })),
    )
    .await
    .assert_problem(409, "capacity_in_use");
    let raised = app
        .call(
            Method::PATCH,
            &format!("/v1/compute-pools/{pool_id}"),
            Some(&org.admin),
            Some(json!({ "max_kpu": 7 })),
        )
        .await;
    assert_eq!(raised.status, 200, "{}", raised.body);
    let one_more = app
        .post(
            &format!("/v1/applications/{rejected_app}:start"),
            &org.admin,
            json!({}),
        )
        .await;
    assert_eq!(one_more.status, 202, "{}", one_more.body);
    let full = app
        .post(
            &format!(
                "/v1/applications/{}:start",
                ids.iter()
                    .zip(&starts)
                    .filter(|(_, r)| r.status == 409)
                    .nth(1)
                    .unwrap()
                    .0
            ),
            &org.admin,
            json!({}),
        )
        .await;
    full.assert_problem(409, "compute_pool_exhausted");
    assert_eq!(full.body["free_kpu_milli"], 750, "{}", full.body);

    // Larger than the pool itself: 422, whatever runs.
    let r = app
        .post(
            "/v1/applications",
            &org.admin,
            json!({ "name": "huge", "compute_pool_id": pool_id, "sql": DATAGEN, "parallelism": 8 }),
        )
        .await;
    r.assert_problem(422, "exceeds_pool_capacity");
}

#[tokio::test]
async fn a_queueing_pool_admits_in_fifo_order_as_applications_stop() {
    let c = clusters(Storage::Fs).await;
    let app = engine_app(&c, None).await;
    let org = app.new_org("queue").await;
    // 3 KPU: room for two applications of 1.25 KPU.
    let pool_id = pool(&app, &org.admin, 3, "queue").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let id = new_app(&app, &org.admin, &pool_id, &format!("q{i}")).await;
        let r = app
            .post(
                &format!("/v1/applications/{id}:start"),
                &org.admin,
                json!({}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(id);
    }
    wait_phase(&app, &org.admin, &ids[0], "RUNNING").await;
    wait_phase(&app, &org.admin, &ids[1], "RUNNING").await;
    for (i, id) in ids.iter().enumerate().skip(2) {
        let s = wait_phase(&app, &org.admin, id, "PENDING").await;
        assert_eq!(s["reason"], "compute_pool_exhausted");
        assert_eq!(s["queue_position"], (i - 1) as u64, "{s}");
    }
    let p = app
        .get(&format!("/v1/compute-pools/{pool_id}"), &org.admin)
        .await;
    assert_eq!(p.body["status"]["current_kpu_milli"], 2500);
    assert_eq!(p.body["status"]["pending_applications"], 3);

    // Capacity frees one application at a time: the queue's head runs next.
    app.post(
        &format!("/v1/applications/{}:stop", ids[0]),
        &org.admin,
        json!({ "force": true }),
    )
    .await;
    wait_phase(&app, &org.admin, &ids[2], "RUNNING").await;
    let s3 = wait_phase(&app, &org.admin, &ids[3], "PENDING").await;
    assert_eq!(s3["queue_position"], 1);
    assert_eq!(
        status_of(&app, &org.admin, &ids[4]).await["queue_position"],
        2
    );
    app.post(
        &format!("/v1/applications/{}:stop", ids[1]),
        &org.admin,
        json!({}),
    )
    .await;
    wait_phase(&app, &org.admin, &ids[3], "RUNNING").await;
    assert_eq!(
        status_of(&app, &org.admin, &ids[4]).await["phase"],
        "PENDING"
    );
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
        wait_gone(&app, &org.admin, id).await;
    }
    assert!(
        c.provisioner
            .list()
            .await
            .unwrap()
            .iter()
            .all(|o| o.processes.iter().all(|p| p.exited_at.is_some()))
    );
}

pub async fn status_of(app: &TestApp, token: &str, id: &str) -> serde_json::Value {
    app.get(&format!("/v1/applications/{id}"), token).await.body["status"].clone()
}

/// Waits until the application's phase is `phase`; returns its status. On a timeout the
/// panic shows the status and the events.
pub async fn wait_phase(app: &TestApp, token: &str, id: &str, phase: &str) -> serde_json::Value {
    wait_status(app, token, id, phase, |_| true).await
}

/// Waits until the phase is `phase` and `cond` holds for the status.
pub async fn wait_status(
    app: &TestApp,
    token: &str,
    id: &str,
    phase: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    loop {
        let s = status_of(app, token, id).await;
        if s["phase"] == phase && cond(&s) {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let events = app
                .get(
                    &format!("/v1/applications/{id}/events?page_size=200"),
                    token,
                )
                .await
                .body;
            panic!("{id} never {phase}: status {s}\nevents {events:#}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub async fn wait_gone(app: &TestApp, token: &str, id: &str) {
    wait_for(
        &format!("{id} deleted"),
        Duration::from_secs(90),
        || async {
            (app.get(&format!("/v1/applications/{id}"), token)
                .await
                .status
                == 404)
                .then_some(())
        },
    )
    .await
    .unwrap();
}

/// A scale-up that does not fit a queueing pool waits in the pool's FIFO queue (PENDING,
/// its cluster running on at the size it holds) and is admitted before later starts when
/// capacity frees.
#[tokio::test]
async fn a_queued_scale_up_keeps_its_cluster_and_is_admitted_in_fifo_order() {
    let c = clusters(Storage::Fs).await;
    let app = engine_app(&c, None).await;
    let org = app.new_org("scaleq").await;
    // 3 KPU: room for two applications of 1.25 KPU, not for 2.25 + 1.25.
    let pool_id = pool(&app, &org.admin, 3, "queue").await;
    let mut ids = Vec::new();
    for name in ["a", "b"] {
        let id = new_app(&app, &org.admin, &pool_id, name).await;
        let r = app
            .post(
                &format!("/v1/applications/{id}:start"),
                &org.admin,
                json!({}),
            )
            .await;
        assert_eq!(r.status, 202, "{}", r.body);
        ids.push(id);
    }
    let (a, b) = (ids[0].clone(), ids[1].clone());
    let before = wait_phase(&app, &org.admin, &a, "RUNNING").await;
    wait_phase(&app, &org.admin, &b, "RUNNING").await;

    let r = app
        .call(
            Method::PATCH,
            &format!("/v1/applications/{a}"),
            Some(&org.admin),
            Some(json!({ "parallelism": 2 })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let s = wait_status(&app, &org.admin, &a, "PENDING", |s| {
        s["queue_position"] == 1
    })
    .await;
    assert_eq!(s["reason"], "compute_pool_exhausted", "{s}");
    assert_eq!(s["run_id"], before["run_id"], "the cluster runs on: {s}");
    assert_eq!(s["generation"], 1, "{s}");
    assert_eq!(s["current_kpu_milli"], 1250, "{s}");

    // A later start waits behind the scale-up, although it alone would fit once b stops.
    let late = new_app(&app, &org.admin, &pool_id, "late").await;
    let r = app
        .post(
            &format!("/v1/applications/{late}:start"),
            &org.admin,
            json!({}),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    wait_status(&app, &org.admin, &late, "PENDING", |s| {
        s["queue_position"] == 2
    })
    .await;

    // b stops: the head of the queue, the scale-up, gets the room.
    let r = app
        .post(
            &format!("/v1/applications/{b}:stop"),
            &org.admin,
            json!({ "force": true }),
        )
        .await;
    assert_eq!(r.status, 202, "{}", r.body);
    let s = wait_status(&app, &org.admin, &a, "RUNNING", |s| {
        s["generation"] == 2 && s["current_kpu_milli"] == 2250
    })
    .await;
    assert_ne!(s["run_id"], before["run_id"]);
    let sl = status_of(&app, &org.admin, &late).await;
    assert_eq!(sl["phase"], "PENDING", "{sl}");
    assert_eq!(sl["queue_position"], 1, "{sl}");
    let p = app
        .get(&format!("/v1/compute-pools/{pool_id}"), &org.admin)
        .await;
    assert_eq!(p.body["status"]["current_kpu_milli"], 2250, "{}", p.body);
    assert_eq!(p.body["status"]["pending_applications"], 1, "{}", p.body);

    // a stops: the queue's next one runs.
    app.post(
        &format!("/v1/applications/{a}:stop"),
        &org.admin,
        json!({ "force": true }),
    )
    .await;
    wait_phase(&app, &org.admin, &late, "RUNNING").await;
    for id in [&a, &b, &late] {
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
    for id in [&a, &b, &late] {
        wait_gone(&app, &org.admin, id).await;
    }
}

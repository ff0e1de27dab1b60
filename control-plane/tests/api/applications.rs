//! Applications: spec defaults, immutable versions with diffs, intents that
//! return operations, rollback, capacity, pool-scoped keys.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{app_body, spawn_app};

#[tokio::test]
async fn versions_diffs_and_intents() {
    let app = spawn_app().await;
    let org = app.new_org("apps").await;
    let pool = app.create_pool(&org.admin, "p", 8).await;
    let pool_id = pool["id"].as_str().unwrap();
    let created = app.create_app(&org.admin, pool_id, "clicks").await;
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("app_"));
    assert_eq!(created["version"], 1);
    assert_eq!(created["spec"]["parallelism"], 2);
    assert_eq!(created["spec"]["parallelism_per_kpu"], 1);
    assert_eq!(
        created["spec"]["checkpoint"],
        json!({ "interval_ms": 60000, "min_pause_ms": 0, "mode": "exactly_once" })
    );
    assert_eq!(created["spec"]["desired_state"], "stopped");
    assert_eq!(created["status"]["phase"], "STOPPED");
    assert_eq!(created["status"]["observed_version"], json!(null));

    let changed = app
        .send(
            app.http
                .patch(format!("{}/v1/applications/{id}", app.base))
                .bearer_auth(&org.admin)
                .header("if-match", "\"1\"")
                .json(
                    &json!({ "parallelism": 4, "config": { "pipeline.max-parallelism": "256" } }),
                ),
        )
        .await;
    assert_eq!(changed.status, 200, "{}", changed.body);
    assert_eq!(changed.etag(), "\"2\"");

    let start = app
        .post(
            &format!("/v1/applications/{id}:start"),
            &org.admin,
            json!({}),
        )
        .await;
    assert_eq!(start.status, 202, "{}", start.body);
    assert_eq!(start.body["kind"], "start");
    assert_eq!(start.body["state"], "IN_PROGRESS");
    assert_eq!(start.body["target_version"], 3);
    let op_id = start.body["id"].as_str().unwrap();
    let op = app
        .get(&format!("/v1/operations/{op_id}"), &org.admin)
        .await;
    assert_eq!(op.body, start.body);
    app.post(
        &format!("/v1/applications/{id}:start"),
        &org.admin,
        json!({}),
    )
    .await
    .assert_problem(409, "invalid_state");

    let now = app.get(&format!("/v1/applications/{id}"), &org.admin).await;
    assert_eq!(now.body["spec"]["desired_state"], "running");
    assert_eq!(
        now.body["status"]["phase"], "STOPPED",
        "only the reconciler moves the phase"
    );

    let stop = app
        .post(
            &format!("/v1/applications/{id}:stop"),
            &org.admin,
            json!({}),
        )
        .await;
    assert_eq!(stop.status, 202, "{}", stop.body);
    let superseded = app
        .get(&format!("/v1/operations/{op_id}"), &org.admin)
        .await;
    assert_eq!(superseded.body["state"], "FAILED");
    assert_eq!(superseded.body["error"]["code"], "superseded");

    let versions = app
        .get(&format!("/v1/applications/{id}/versions"), &org.admin)
        .await;
    let items = versions.body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{}", versions.body);
    assert_eq!(items[0]["diff"], json!([]));
    let fields: Vec<&str> = items[1]["diff"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["config.pipeline.max-parallelism", "parallelism"]);
    assert_eq!(
        items[1]["diff"][1],
        json!({ "field": "parallelism", "from": 2, "to": 4 })
    );
    assert_eq!(
        items[2]["diff"],
        json!([{ "field": "desired_state", "from": "stopped", "to": "running" }])
    );
    assert_eq!(items[1]["created_by"], org.admin_user);

    let v2 = app
        .get(&format!("/v1/applications/{id}/versions/2"), &org.admin)
        .await;
    assert_eq!(v2.body, items[1]);
    app.get(&format!("/v1/applications/{id}/versions/9"), &org.admin)
        .await
        .assert_problem(404, "not_found");

    // Paging through versions gives the same diffs.
    let p1 = app
        .get(
            &format!("/v1/applications/{id}/versions?page_size=1"),
            &org.admin,
        )
        .await;
    let t = p1.body["next_page_token"].as_str().unwrap();
    let p2 = app
        .get(
            &format!("/v1/applications/{id}/versions?page_size=1&page_token={t}"),
            &org.admin,
        )
        .await;
    assert_eq!(p2.body["items"][0], items[1]);

    let rb = app
        .post(
            &format!("/v1/applications/{id}:rollback"),
            &org.admin,
            json!({ "to_version": 1 }),
        )
        .await;
    assert_eq!(rb.status, 202, "{}", rb.body);
    assert_eq!(rb.body["kind"], "rollback");
    assert_eq!(
        rb.body["state"], "SUCCEEDED",
        "nothing runs, so nothing to wait for"
    );
    let now = app.get(&format!("/v1/applications/{id}"), &org.admin).await;
    assert_eq!(now.body["version"], 5);
    assert_eq!(now.body["spec"]["parallelism"], 2);
    assert_eq!(now.body["spec"]["desired_state"], "stopped");
    app.post(
        &format!("/v1/applications/{id}:rollback"),
        &org.admin,
        json!({ "to_version": 5 }),
    )
    .await
    .assert_problem(422, "validation_failed");
    app.post(
        &format!("/v1/applications/{id}:explode"),
        &org.admin,
        json!({}),
    )
    .await
    .assert_problem(404, "not_found");

    // An unchanged PATCH makes no version.
    let same = app
        .call(
            Method::PATCH,
            &format!("/v1/applications/{id}"),
            Some(&org.admin),
            Some(json!({ "parallelism": 2 })),
        )
        .await;
    assert_eq!(same.body["version"], 5);

    let del = app
        .call(
            Method::DELETE,
            &format!("/v1/applications/{id}"),
            Some(&org.admin),
            None,
        )
        .await;
    assert_eq!(del.status, 202);
    assert_eq!(del.body["kind"], "delete");
    app.get(&format!("/v1/applications/{id}"), &org.admin)
        .await
        .assert_problem(404, "not_found");
    let audit = app
        .get(&format!("/v1/audit-events?resource_id={id}"), &org.admin)
        .await;
    let actions: Vec<&str> = audit.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "application.create",
            "application.update",
            "application.start",
            "application.stop",
            "application.rollback",
            "application.delete"
        ]
    );
}

#[tokio::test]
async fn an_application_larger_than_its_pool_is_422_and_nothing_is_written() {
    let app = spawn_app().await;
    let org = app.new_org("big").await;
    let pool = app.create_pool(&org.admin, "small", 2).await;
    let pool_id = pool["id"].as_str().unwrap();
    let mut body = app_body(pool_id, "huge");
    body["parallelism"] = json!(2);
    body["parallelism_per_kpu"] = json!(1);
    // 2 task KPUs + 0.25 orchestration > 2.
    let r = app.post("/v1/applications", &org.admin, body).await;
    r.assert_problem(422, "exceeds_pool_capacity");
    let list = app.get("/v1/applications", &org.admin).await;
    assert_eq!(list.body["items"], json!([]));
    let mut small = app_body(pool_id, "ok");
    small["parallelism"] = json!(1);
    assert_eq!(
        app.post("/v1/applications", &org.admin, small).await.status,
        201
    );
}

#[tokio::test]
async fn a_pool_scoped_key_sees_only_its_pool() {
    let app = spawn_app().await;
    let org = app.new_org("scoped").await;
    let p1 = app.create_pool(&org.admin, "one", 4).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let p2 = app.create_pool(&org.admin, "two", 4).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a2 = app.create_app(&org.admin, &p2, "in-two").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, dev) = app.token_with(&org, "developer", Some(&p1)).await;
    let me = app.get("/v1/me", &dev).await;
    assert_eq!(me.body["compute_pool_id"], p1);
    let pools = app.get("/v1/compute-pools", &dev).await;
    let ids: Vec<&str> = pools.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [p1.as_str()]);
    app.get(&format!("/v1/compute-pools/{p2}"), &dev)
        .await
        .assert_problem(404, "not_found");
    app.get(&format!("/v1/applications/{a2}"), &dev)
        .await
        .assert_problem(404, "not_found");
    app.post("/v1/applications", &dev, app_body(&p2, "sneaky"))
        .await
        .assert_problem(403, "forbidden");
    let mine = app
        .post("/v1/applications", &dev, app_body(&p1, "mine"))
        .await;
    assert_eq!(mine.status, 201, "{}", mine.body);
    let apps = app.get("/v1/applications", &dev).await;
    assert_eq!(apps.body["items"].as_array().unwrap().len(), 1);
}

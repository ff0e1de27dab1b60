//! Compute pools: CRUD, ETag / If-Match, the update race, idempotent POSTs,
//! pagination, audit events, deletion with applications, rate limits.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{spawn_app, spawn_app_with};

#[tokio::test]
async fn crud_with_etags_and_audit_events() {
    let app = spawn_app().await;
    let org = app.new_org("acme").await;
    let created = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "prod", "region": "eu-west", "max_kpu": 8, "admission": "queue" }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.etag(), "\"1\"");
    let id = created.body["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("pool_"));
    assert_eq!(
        created.body["status"],
        json!({ "current_kpu_milli": 0, "pending_applications": 0 })
    );

    let got = app
        .get(&format!("/v1/compute-pools/{id}"), &org.admin)
        .await;
    assert_eq!(got.body, created.body);
    assert_eq!(got.etag(), "\"1\"");

    let patch = |if_match: &'static str, body: serde_json::Value| {
        app.send(
            app.http
                .patch(format!("{}/v1/compute-pools/{id}", app.base))
                .bearer_auth(&org.admin)
                .header("if-match", if_match)
                .json(&body),
        )
    };
    let updated = patch("\"1\"", json!({ "max_kpu": 16 })).await;
    assert_eq!(updated.status, 200, "{}", updated.body);
    assert_eq!(updated.body["max_kpu"], 16);
    assert_eq!(updated.body["version"], 2);
    assert_eq!(updated.etag(), "\"2\"");
    patch("\"1\"", json!({ "max_kpu": 4 }))
        .await
        .assert_problem(412, "precondition_failed");
    patch("\"2\"", json!({ "region": "local" }))
        .await
        .assert_problem(422, "validation_failed");
    let still = app
        .get(&format!("/v1/compute-pools/{id}"), &org.admin)
        .await;
    assert_eq!(
        still.body["max_kpu"], 16,
        "a refused change changed nothing"
    );

    let del = app
        .send(
            app.http
                .delete(format!("{}/v1/compute-pools/{id}", app.base))
                .bearer_auth(&org.admin),
        )
        .await;
    assert_eq!(del.status, 204, "{}", del.body);
    app.get(&format!("/v1/compute-pools/{id}"), &org.admin)
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
            "compute_pool.create",
            "compute_pool.update",
            "compute_pool.delete"
        ]
    );
    let by_actor = app
        .get(
            &format!(
                "/v1/audit-events?actor={}&resource_type=compute_pool",
                org.admin_user
            ),
            &org.admin,
        )
        .await;
    assert_eq!(
        by_actor.body["items"].as_array().unwrap().len(),
        3,
        "{}",
        by_actor.body
    );
    let future = app
        .get("/v1/audit-events?since=2999-01-01T00:00:00Z", &org.admin)
        .await;
    assert_eq!(future.body["items"], json!([]));
    assert!(audit.body["items"][0]["request_id"].as_str().is_some());
}

#[tokio::test]
async fn concurrent_updates_with_the_same_etag_exactly_one_wins() {
    let app = spawn_app().await;
    let org = app.new_org("race").await;
    let pool = app.create_pool(&org.admin, "p", 10).await;
    let id = pool["id"].as_str().unwrap();
    let tries = (0..8).map(|i| {
        app.send(
            app.http
                .patch(format!("{}/v1/compute-pools/{id}", app.base))
                .bearer_auth(&org.admin)
                .header("if-match", "\"1\"")
                .json(&json!({ "max_kpu": 20 + i })),
        )
    });
    let results = futures::future::join_all(tries).await;
    let won: Vec<_> = results.iter().filter(|r| r.status == 200).collect();
    let lost = results.iter().filter(|r| r.status == 412).count();
    assert_eq!(
        (won.len(), lost),
        (1, 7),
        "{:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    let now = app
        .get(&format!("/v1/compute-pools/{id}"), &org.admin)
        .await;
    assert_eq!(now.body["version"], 2);
    assert_eq!(now.body["max_kpu"], won[0].body["max_kpu"]);
}

#[tokio::test]
async fn idempotent_posts_replay_and_conflicting_reuse_is_422() {
    let app = spawn_app().await;
    let org = app.new_org("idem").await;
    let post = |key: &'static str, name: &'static str| {
        app.send(
            app.http
                .post(format!("{}/v1/compute-pools", app.base))
                .bearer_auth(&org.admin)
                .header("idempotency-key", key)
                .json(&json!({ "name": name, "region": "local", "max_kpu": 2 })),
        )
    };
    let first = post("k-1", "a").await;
    assert_eq!(first.status, 201, "{}", first.body);
    let again = post("k-1", "a").await;
    assert_eq!(again.status, 201);
    assert_eq!(again.body, first.body, "the stored response is replayed");
    assert_eq!(again.etag(), first.etag());
    assert_eq!(again.headers.get("idempotent-replayed").unwrap(), "true");
    post("k-1", "b")
        .await
        .assert_problem(422, "idempotency_key_reused");
    let list = app.get("/v1/compute-pools", &org.admin).await;
    assert_eq!(
        list.body["items"].as_array().unwrap().len(),
        1,
        "one pool, however many retries"
    );

    // A refused request is replayed as refused too (a 4xx is a final answer).
    let bad = app
        .send(
            app.http
                .post(format!("{}/v1/compute-pools", app.base))
                .bearer_auth(&org.admin)
                .header("idempotency-key", "k-2")
                .json(&json!({ "name": "c", "region": "mars", "max_kpu": 2 })),
        )
        .await;
    bad.assert_problem(422, "validation_failed");
    let bad_again = app
        .send(
            app.http
                .post(format!("{}/v1/compute-pools", app.base))
                .bearer_auth(&org.admin)
                .header("idempotency-key", "k-2")
                .json(&json!({ "name": "c", "region": "mars", "max_kpu": 2 })),
        )
        .await;
    assert_eq!(bad_again.body, bad.body);
}

#[tokio::test]
async fn cursor_pagination_is_stable_and_complete() {
    let app = spawn_app().await;
    let org = app.new_org("pages").await;
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(
            app.create_pool(&org.admin, &format!("p{i}"), 1).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let mut seen = Vec::new();
    let mut token: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &token {
            Some(t) => format!("/v1/compute-pools?page_size=2&page_token={t}"),
            None => "/v1/compute-pools?page_size=2".into(),
        };
        let r = app.get(&path, &org.admin).await;
        assert_eq!(r.status, 200, "{}", r.body);
        pages += 1;
        seen.extend(
            r.body["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap().to_owned()),
        );
        match r.body["next_page_token"].as_str() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, made, "every pool once, in creation order");
    app.get("/v1/compute-pools?page_size=0", &org.admin)
        .await
        .assert_problem(422, "validation_failed");
    app.get("/v1/compute-pools?page_token=%%%", &org.admin)
        .await
        .assert_problem(422, "validation_failed");
}

#[tokio::test]
async fn a_pool_with_applications_cannot_be_deleted_or_shrunk_below_its_applications() {
    let app = spawn_app().await;
    let org = app.new_org("busy").await;
    let pool = app.create_pool(&org.admin, "p", 4).await;
    let id = pool["id"].as_str().unwrap();
    let a = app.create_app(&org.admin, id, "job").await;
    let del = app
        .call(
            Method::DELETE,
            &format!("/v1/compute-pools/{id}"),
            Some(&org.admin),
            None,
        )
        .await;
    del.assert_problem(409, "pool_in_use");
    assert!(
        app.get(&format!("/v1/compute-pools/{id}"), &org.admin)
            .await
            .status
            == 200
    );

    // What the reconciler would write once the application runs: 3.250 KPU held.
    let db = app.db().await;
    sqlx::query("UPDATE compute_pool_status SET current_kpu_milli = 3250 WHERE pool_id = $1")
        .bind(id)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let shrink = app
        .call(
            Method::PATCH,
            &format!("/v1/compute-pools/{id}"),
            Some(&org.admin),
            Some(json!({ "max_kpu": 3 })),
        )
        .await;
    shrink.assert_problem(409, "capacity_in_use");
    assert!(
        shrink.body["detail"].as_str().unwrap().contains("3.250"),
        "{}",
        shrink.body
    );
    let ok = app
        .call(
            Method::PATCH,
            &format!("/v1/compute-pools/{id}"),
            Some(&org.admin),
            Some(json!({ "max_kpu": 5 })),
        )
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.body["status"]["current_kpu_milli"], 3250);
    let app_id = a["id"].as_str().unwrap();
    let gone = app
        .call(
            Method::DELETE,
            &format!("/v1/applications/{app_id}"),
            Some(&org.admin),
            None,
        )
        .await;
    assert_eq!(gone.status, 202, "{}", gone.body);
    let del = app
        .call(
            Method::DELETE,
            &format!("/v1/compute-pools/{id}"),
            Some(&org.admin),
            None,
        )
        .await;
    assert_eq!(del.status, 204, "{}", del.body);
}

#[tokio::test]
async fn each_credential_has_its_own_rate_limit() {
    let app = spawn_app_with(|c| {
        c.limits.requests_per_second = 1;
        c.limits.burst = 3;
    })
    .await;
    let org = app.new_org("limited").await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(app.get("/v1/me", &org.admin).await);
    }
    let limited = statuses
        .iter()
        .find(|r| r.status == 429)
        .expect("the burst runs out");
    limited.assert_problem(429, "rate_limited");
    let retry: u64 = limited
        .headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=3).contains(&retry), "{retry}");
    // The platform operator's credential is another bucket; so is another org's admin.
    let other = app.new_org("other").await;
    assert_eq!(app.get("/v1/me", &other.admin).await.status, 200);
}

#[tokio::test]
async fn an_idempotency_key_older_than_a_day_names_a_new_request() {
    let app = spawn_app().await;
    let org = app.new_org("expiry").await;
    let post = |name: &'static str| {
        app.send(
            app.http
                .post(format!("{}/v1/compute-pools", app.base))
                .bearer_auth(&org.admin)
                .header("idempotency-key", "daily")
                .json(&json!({ "name": name, "region": "local", "max_kpu": 1 })),
        )
    };
    assert_eq!(post("first").await.status, 201);
    let db = app.db().await;
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let second = post("second").await;
    assert_eq!(second.status, 201, "{}", second.body);
    assert_eq!(second.body["name"], "second");
    assert!(second.headers.get("idempotent-replayed").is_none());
    // Expired keys are purged; fresh ones (the second request's) stay replayable.
    let db = app.db().await;
    sqlx::query(
        "INSERT INTO idempotency_keys (org_id, principal_id, key, request_sha256, created_at)
         SELECT org_id, principal_id, 'old-' || g, request_sha256, now() - interval '25 hours'
         FROM idempotency_keys, generate_series(1, 3) g",
    )
    .execute(&db)
    .await
    .unwrap();
    assert_eq!(
        sluice_control_plane::store::idempotency::purge(&db)
            .await
            .unwrap(),
        3
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM idempotency_keys")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(left, 1);
    db.close().await;
    assert_eq!(
        post("second")
            .await
            .headers
            .get("idempotent-replayed")
            .map(|v| v.as_bytes()),
        Some(&b"true"[..])
    );
}

#[tokio::test]
async fn an_idempotency_key_is_scoped_to_the_credential_not_the_user() {
    let app = spawn_app().await;
    let org = app.new_org("idem-scope").await;
    // A viewer key of the org admin's own user: same principal, narrower credential.
    let key = app
        .post(
            "/v1/api-keys",
            &org.admin,
            json!({ "name": "ro", "role": "viewer" }),
        )
        .await;
    assert_eq!(key.status, 201, "{}", key.body);
    let viewer = app
        .exchange(
            key.body["api_key"]["id"].as_str().unwrap(),
            key.body["secret"].as_str().unwrap(),
        )
        .await;
    let post = |token: &str| {
        app.send(
            app.http
                .post(format!("{}/v1/compute-pools", app.base))
                .bearer_auth(token)
                .header("idempotency-key", "shared")
                .json(&json!({ "name": "secret-pool", "region": "local", "max_kpu": 2 })),
        )
    };
    let first = post(&org.admin).await;
    assert_eq!(first.status, 201, "{}", first.body);
    // Keyed by the user, the viewer would get the admin's 201 replayed.
    let replay = post(&viewer).await;
    assert!(replay.headers.get("idempotent-replayed").is_none());
    replay.assert_problem(403, "forbidden");
}

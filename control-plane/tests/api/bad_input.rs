//! Bad input: precise 4xx answers, and nothing half-written.

use reqwest::Method;
use serde_json::json;

use crate::helpers::{SQL, TestApp, app_body, spawn_app};

async fn count(app: &TestApp, table: &str) -> i64 {
    let db = app.db().await;
    let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    n
}

async fn raw(app: &TestApp, token: &str, path: &str, body: Vec<u8>) -> crate::helpers::Res {
    app.send(
        app.http
            .post(format!("{}{path}", app.base))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

#[tokio::test]
async fn malformed_bodies_get_precise_errors_and_write_nothing() {
    let app = spawn_app().await;
    let org = app.new_org("bad").await;
    let pool = app.create_pool(&org.admin, "p", 4).await;
    let pool_id = pool["id"].as_str().unwrap();
    let (pools, apps, audits) = (
        count(&app, "compute_pools").await,
        count(&app, "applications").await,
        count(&app, "audit_events").await,
    );

    let r = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "x", "region": "local", "max_kpu": "eight" }),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "max_kpu");
    assert_eq!(r.body["errors"][0]["code"], "invalid_type");

    let r = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "x", "region": "local", "max_kpu": -1 }),
        )
        .await;
    assert_eq!(r.body["errors"][0]["field"], "max_kpu", "{}", r.body);
    assert_eq!(r.body["errors"][0]["code"], "out_of_range");

    let r = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "x", "region": "local", "max_kpu": 10001 }),
        )
        .await;
    assert_eq!(
        r.body["errors"],
        json!([{ "field": "max_kpu", "code": "out_of_range", "message": "max_kpu must be between 1 and 10000, got 10001" }])
    );

    let r = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "x", "region": "local", "max_kpu": 1, "colour": "red" }),
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["code"], "unknown_field");
    assert!(
        r.body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );

    let r = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "region": "local", "max_kpu": 1 }),
        )
        .await;
    assert_eq!(
        (
            r.body["errors"][0]["field"].as_str(),
            r.body["errors"][0]["code"].as_str()
        ),
        (Some("name"), Some("required"))
    );

    let mut nested = app_body(pool_id, "nested");
    nested["checkpoint"] = json!({ "interval_ms": 5000, "mode": "sometimes" });
    let r = app.post("/v1/applications", &org.admin, nested).await;
    assert_eq!(
        r.body["errors"][0]["field"], "checkpoint.mode",
        "{}",
        r.body
    );

    let mut several = app_body(pool_id, "Bad Name");
    several["parallelism_per_kpu"] = json!(9);
    several["checkpoint"] = json!({ "interval_ms": 10, "mode": "exactly_once" });
    let r = app.post("/v1/applications", &org.admin, several).await;
    let fields: Vec<&str> = r.body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["name", "parallelism_per_kpu", "checkpoint.interval_ms"],
        "{}",
        r.body
    );

    let r = raw(
        &app,
        &org.admin,
        "/v1/compute-pools",
        b"{\"name\": \"x\",\n \"region\": }".to_vec(),
    )
    .await;
    r.assert_problem(400, "malformed_json");
    assert_eq!(
        (
            r.body["errors"][0]["line"].as_u64(),
            r.body["errors"][0]["column"].as_u64()
        ),
        (Some(2), Some(12)),
        "{}",
        r.body
    );

    let r = raw(
        &app,
        &org.admin,
        "/v1/compute-pools",
        b"{\"name\": \"\xff\xfe\", \"region\": \"local\", \"max_kpu\": 1}".to_vec(),
    )
    .await;
    r.assert_problem(400, "malformed_json");

    let r = app
        .send(
            app.http
                .post(format!("{}/v1/compute-pools", app.base))
                .bearer_auth(&org.admin)
                .body("name=x"),
        )
        .await;
    r.assert_problem(415, "unsupported_media_type");

    let mut big = Vec::with_capacity(10 << 20);
    big.extend_from_slice(b"{\"name\": \"");
    big.resize(10 << 20, b'a');
    big.extend_from_slice(b"\", \"region\": \"local\", \"max_kpu\": 1}");
    let r = raw(&app, &org.admin, "/v1/compute-pools", big).await;
    r.assert_problem(413, "payload_too_large");

    assert_eq!(count(&app, "compute_pools").await, pools);
    assert_eq!(count(&app, "applications").await, apps);
    assert_eq!(
        count(&app, "audit_events").await,
        audits,
        "refused requests leave no audit event"
    );
}

#[tokio::test]
async fn bad_sql_is_reported_with_line_and_column_and_nothing_is_created() {
    let app = spawn_app().await;
    let org = app.new_org("sql").await;
    let pool = app.create_pool(&org.admin, "p", 4).await;
    let mut body = app_body(pool["id"].as_str().unwrap(), "broken");
    body["sql"] = json!(
        "CREATE TABLE s (a INT) WITH ('connector' = 'datagen');\nCREATE TABLE t (a INT) WITH ('connector' = 'print');\nINSERT INTO t\nSELEC a FROM s;"
    );
    let r = app.post("/v1/applications", &org.admin, body).await;
    r.assert_problem(422, "validation_failed");
    let e = &r.body["errors"][0];
    assert_eq!(
        (e["field"].as_str(), e["code"].as_str()),
        (Some("sql"), Some("sql_syntax_error")),
        "{}",
        r.body
    );
    assert_eq!(
        (e["line"].as_u64(), e["column"].as_u64()),
        (Some(4), Some(1)),
        "{}",
        r.body
    );
    assert_eq!(
        app.get("/v1/applications", &org.admin).await.body["items"],
        json!([])
    );
    // The same SQL with the typo fixed is accepted, and the Flink job of the fixtures too.
    let mut fixed = app_body(pool["id"].as_str().unwrap(), "fixed");
    fixed["sql"] = json!(
        "CREATE TABLE s (a INT) WITH ('connector' = 'datagen');\nCREATE TABLE t (a INT) WITH ('connector' = 'print');\nINSERT INTO t\nSELECT a FROM s;"
    );
    assert_eq!(
        app.post("/v1/applications", &org.admin, fixed).await.status,
        201
    );
    assert!(SQL.contains("WATERMARK"));
}

#[tokio::test]
async fn unknown_routes_methods_and_ids_are_problems_too() {
    let app = spawn_app().await;
    let org = app.new_org("routes").await;
    app.get("/v1/nothing-here", &org.admin)
        .await
        .assert_problem(404, "not_found");
    app.call(Method::PUT, "/v1/compute-pools", Some(&org.admin), None)
        .await
        .assert_problem(405, "method_not_allowed");
    app.get("/v1/compute-pools/not-an-id", &org.admin)
        .await
        .assert_problem(404, "not_found");
    app.get("/v1/compute-pools?page_size=abc", &org.admin)
        .await
        .assert_problem(422, "validation_failed");
    let r = app.get("/v1/compute-pools?colour=red", &org.admin).await;
    assert_eq!(r.body["errors"][0]["field"], "query.colour", "{}", r.body);
    let r = app
        .send(
            app.http
                .patch(format!(
                    "{}/v1/compute-pools/pool_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b",
                    app.base
                ))
                .bearer_auth(&org.admin)
                .header("if-match", "soon")
                .json(&json!({})),
        )
        .await;
    r.assert_problem(400, "invalid_if_match");
}

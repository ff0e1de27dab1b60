//! Budgets: thresholds audited once per month, the hard stop through the application service.
//! (The usage API's latency benchmark is `examples/usage_bench.rs`: a latency bound inside the
//! parallel test suite would measure the neighbouring tests.)

use std::time::Duration as StdDuration;

use chrono::Utc;
use reqwest::Method;
use serde_json::json;

use crate::billing::insert_run;
use crate::helpers::{TestApp, app_body, spawn_app_with};

async fn budget_audit(app: &TestApp, token: &str) -> Vec<(String, String)> {
    let r = app
        .get("/v1/audit-events?resource_type=budget&page_size=200", token)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let what = match e["details"]["threshold_percent"].as_u64() {
                Some(p) => format!("{}:{p}", e["action"].as_str().unwrap()),
                None => e["action"].as_str().unwrap().to_owned(),
            };
            (what, e["actor"].as_str().unwrap().to_owned())
        })
        .collect()
}

/// `application.stop` audit events of `job` by `actor`.
async fn stops_by(app: &TestApp, token: &str, job: &str, actor: &str) -> usize {
    let r = app
        .get(
            &format!("/v1/audit-events?resource_id={job}&page_size=200"),
            token,
        )
        .await;
    r.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "application.stop" && e["actor"] == actor)
        .count()
}

async fn desired_state(app: &TestApp, token: &str, id: &str) -> String {
    app.get(&format!("/v1/applications/{id}"), token).await.body["spec"]["desired_state"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn wait_stopped(app: &TestApp, token: &str, id: &str) {
    sluice_test_support::wait_for(
        "the budget's hard stop to stop the application",
        StdDuration::from_secs(30),
        || async { (desired_state(app, token, id).await == "stopped").then_some(()) },
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn thresholds_alert_once_per_month_and_the_hard_stop_stops_running_applications() {
    // The pass runs every 100 ms here (configuration, not a sleep in the test).
    let app = spawn_app_with(|c| c.billing.budget_interval_ms = 100).await;
    let org = app.new_org("spender").await;
    let quiet = app.new_org("quiet").await;
    let pool = app.create_pool(&org.admin, "p", 8).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut body = app_body(&pool, "job");
    body["desired_state"] = json!("running");
    let job = app.post("/v1/applications", &org.admin, body).await;
    assert_eq!(job.status, 201, "{}", job.body);
    let job = job.body["id"].as_str().unwrap().to_owned();

    let (_, billing) = app.token_with(&org, "billing_admin", None).await;
    let (_, viewer) = app.token_with(&org, "viewer", None).await;
    let bad = [
        (json!({ "monthly_limit_micros": 0 }), "monthly_limit_micros"),
        (
            json!({ "monthly_limit_micros": 1, "thresholds_percent": [80, 50] }),
            "thresholds_percent",
        ),
        (
            json!({ "monthly_limit_micros": 1, "hard_stop": "yes" }),
            "hard_stop",
        ),
    ];
    for (b, field) in bad {
        let r = app
            .call(Method::PUT, "/v1/budget", Some(&billing), Some(b))
            .await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{}", r.body);
    }
    let budget = json!({ "monthly_limit_micros": 10_000_000, "thresholds_percent": [50, 80, 100], "hard_stop": true });
    app.call(
        Method::PUT,
        "/v1/budget",
        Some(&viewer),
        Some(budget.clone()),
    )
    .await
    .assert_problem(403, "forbidden");
    app.get("/v1/budget", &billing)
        .await
        .assert_problem(404, "not_found");
    let put = app
        .call(
            Method::PUT,
            "/v1/budget",
            Some(&billing),
            Some(budget.clone()),
        )
        .await;
    assert_eq!(put.status, 200, "{}", put.body);
    assert_eq!(put.etag(), "\"1\"");
    assert_eq!(put.body["current_month"]["spend_micros"], 0);
    // A change based on a stale version is refused.
    let stale = app
        .send(
            app.http
                .put(format!("{}/v1/budget", app.base))
                .bearer_auth(&billing)
                .header("if-match", "\"7\"")
                .json(&budget),
        )
        .await;
    stale.assert_problem(412, "precondition_failed");
    // The quiet organization has a budget it does not reach.
    let r = app
        .call(
            Method::PUT,
            "/v1/budget",
            Some(&quiet.admin),
            Some(json!({ "monthly_limit_micros": 1_000_000_000_000i64 })),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);

    // A million KPU since the start of the month costs 30.56 USD a second: past 100 % of
    // 10 USD after the month's first second.
    let month_start = sluice_billing::Month::containing(Utc::now())
        .unwrap()
        .start();
    let db = app.db().await;
    insert_run(
        &db,
        &format!("run_{}_big", &org.id[4..]),
        &org.id,
        &job,
        &pool,
        "local",
        &[(1_000_000_000, month_start)],
        None,
    )
    .await;
    insert_run(
        &db,
        &format!("run_{}_small", &quiet.id[4..]),
        &quiet.id,
        "app_000000000000000000000000000000aa",
        "pool_000000000000000000000000000000aa",
        "local",
        &[(1250, month_start)],
        None,
    )
    .await;

    wait_stopped(&app, &org.admin, &job).await;
    let got = app.get("/v1/budget", &viewer).await;
    assert_eq!(got.status, 200, "{}", got.body);
    let month = &got.body["current_month"];
    assert_eq!(month["alerts_raised"], json!([50, 80, 100]));
    assert_eq!(month["thresholds_reached"], json!([50, 80, 100]));
    assert!(
        month["spend_micros"].as_i64().unwrap() > 10_000_000,
        "{month}"
    );

    // The stop went through the application service: a new version, a stop operation and an
    // audit event by the organization's hard-stop service account.
    let versions = app
        .get(&format!("/v1/applications/{job}/versions"), &org.admin)
        .await;
    let last = versions.body["items"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["spec"]["desired_state"], "stopped");
    let accounts = app.get("/v1/service-accounts", &org.admin).await;
    let hard_stop_sa = accounts.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "billing-budget-hard-stop")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(stops_by(&app, &org.admin, &job, &hard_stop_sa).await, 1);

    // Started again within the month, it is stopped again; the alerts are not repeated.
    let start = app
        .post(
            &format!("/v1/applications/{job}:start"),
            &org.admin,
            json!({}),
        )
        .await;
    assert!(start.status.is_success(), "{}", start.body);
    wait_stopped(&app, &org.admin, &job).await;
    assert_eq!(stops_by(&app, &org.admin, &job, &hard_stop_sa).await, 2);
    let audit = budget_audit(&app, &org.admin).await;
    let actions: Vec<&str> = audit.iter().map(|(a, _)| a.as_str()).collect();
    assert_eq!(
        actions,
        [
            "budget.update",
            "budget.threshold_reached:50",
            "budget.threshold_reached:80",
            "budget.threshold_reached:100",
            "budget.hard_stop",
        ]
    );
    assert!(
        audit[1..]
            .iter()
            .all(|(_, actor)| actor == "system:billing")
    );
    let quiet_audit = budget_audit(&app, &quiet.admin).await;
    assert_eq!(quiet_audit.len(), 1, "{quiet_audit:?}");

    // Removing the budget ends the hard stop; a stale If-Match is refused first.
    let del = app
        .send(
            app.http
                .delete(format!("{}/v1/budget", app.base))
                .bearer_auth(&billing)
                .header("if-match", "\"9\""),
        )
        .await;
    del.assert_problem(412, "precondition_failed");
    let del = app
        .call(Method::DELETE, "/v1/budget", Some(&billing), None)
        .await;
    assert_eq!(del.status, 204, "{}", del.body);
    app.get("/v1/budget", &billing)
        .await
        .assert_problem(404, "not_found");
}

//! Tenant isolation: every route of the OpenAPI document that names a
//! resource answers another organization's credential with 404 and changes
//! nothing; row-level security hides foreign rows from a query without a filter.

use reqwest::Method;
use serde_json::{Value, json};
use sluice_api_types::OrgId;

use crate::helpers::spawn_app;

/// Every (method, path) of the document.
pub fn operations(doc: &Value) -> Vec<(Method, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "post", "patch", "put", "delete"] {
            if item.get(m).is_some() {
                out.push((
                    Method::from_bytes(m.to_uppercase().as_bytes()).unwrap(),
                    path.clone(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn another_orgs_credential_gets_404_on_every_route_and_changes_nothing() {
    let app = spawn_app().await;
    let a = app.new_org("a").await;
    let b = app.new_org("b").await;
    let pool = app.create_pool(&a.admin, "p", 8).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let appl = app.create_app(&a.admin, &pool, "job").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let op = app
        .post(
            &format!("/v1/applications/{appl}:start"),
            &a.admin,
            json!({}),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sa = app
        .post(
            "/v1/service-accounts",
            &a.admin,
            json!({ "name": "robot", "role": "viewer" }),
        )
        .await
        .body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let key = app
        .post("/v1/api-keys", &a.admin, json!({ "name": "k" }))
        .await
        .body["api_key"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sp = app
        .post(
            &format!("/v1/applications/{appl}/savepoints"),
            &a.admin,
            json!({ "label": "mine" }),
        )
        .await;
    assert_eq!(sp.status, 202, "{}", sp.body);
    let sp = sp.body["id"].as_str().unwrap().to_owned();
    let paths = [
        format!("/v1/compute-pools/{pool}"),
        format!("/v1/savepoints/{sp}"),
        format!("/v1/applications/{appl}"),
        format!("/v1/applications/{appl}/versions"),
        format!("/v1/service-accounts/{sa}"),
        format!("/v1/api-keys/{key}"),
        format!("/v1/users/{}", a.admin_user),
        "/v1/audit-events?page_size=200".to_owned(),
    ];
    let snapshot = || async {
        let mut s = Vec::new();
        for p in &paths {
            s.push(app.get(p, &a.admin).await.body);
        }
        s
    };
    let before = snapshot().await;

    let doc = app
        .call(Method::GET, "/openapi.json", None, None)
        .await
        .body;
    let mut checked = 0;
    for (method, path) in operations(&doc) {
        if !path.contains('{') || !path.starts_with("/v1/") {
            continue;
        }
        // Addressed by month, not by a resource id: every organization has its own invoice of
        // every month (isolation of usage and invoices: billing.rs).
        if path.starts_with("/v1/invoices/") {
            continue;
        }
        let id = if path.starts_with("/v1/compute-pools/") {
            &pool
        } else if path.starts_with("/v1/applications/") {
            &appl
        } else if path.starts_with("/v1/operations/") {
            &op
        } else if path.starts_with("/v1/service-accounts/") {
            &sa
        } else if path.starts_with("/v1/api-keys/") {
            &key
        } else if path.starts_with("/v1/users/") {
            &a.admin_user
        } else if path.starts_with("/v1/savepoints/") {
            &sp
        } else {
            panic!("route {method} {path} has no fixture in the isolation test: add one");
        };
        let url = path.replace("{id}", id).replace("{n}", "1");
        // A body of the right shape, so that only the resource's owner decides the answer.
        let body = matches!(method, Method::POST | Method::PATCH | Method::PUT).then(|| {
            if path.ends_with(":export") {
                json!({ "target_uri": "file:///tmp/export" })
            } else {
                json!({})
            }
        });
        let r = app.call(method.clone(), &url, Some(&b.admin), body).await;
        assert_eq!(
            r.status, 404,
            "{method} {url} with another org's credential: {}",
            r.body
        );
        r.assert_problem(404, "not_found");
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} routes checked");
    assert_eq!(
        snapshot().await,
        before,
        "a foreign credential changed something"
    );
    // Lists of B never show A's resources.
    for p in [
        "/v1/compute-pools",
        "/v1/applications",
        "/v1/service-accounts",
        "/v1/api-keys",
        "/v1/audit-events",
    ] {
        let r = app.get(p, &b.admin).await;
        let text = r.body.to_string();
        assert!(
            !text.contains(&pool) && !text.contains(&appl) && !text.contains(&sa),
            "{p}: {text}"
        );
    }
}

/// Every table under row-level security, with its organization column.
const TENANT_TABLES: &[(&str, &str)] = &[
    ("organizations", "id"),
    ("users", "org_id"),
    ("service_accounts", "org_id"),
    ("compute_pools", "org_id"),
    ("compute_pool_status", "org_id"),
    ("api_keys", "org_id"),
    ("applications", "org_id"),
    ("application_versions", "org_id"),
    ("application_status", "org_id"),
    ("operations", "org_id"),
    ("idempotency_keys", "org_id"),
    ("audit_events", "org_id"),
];

async fn count(conn: &mut sqlx::PgConnection, sql: String, org: Option<&str>) -> i64 {
    let q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()));
    let q = match org {
        Some(o) => q.bind(o.to_owned()),
        None => q,
    };
    q.fetch_one(conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

#[tokio::test]
async fn row_level_security_hides_foreign_rows_from_a_query_without_a_filter() {
    let app = spawn_app().await;
    let a = app.new_org("a").await;
    let b = app.new_org("b").await;
    let pool = app.create_pool(&a.admin, "p", 8).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let appl = app.create_app(&a.admin, &pool, "job").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Rows of A in the tables that hold none yet: an operation, a service
    // account with a key, an idempotency record, and (as the reconciler will)
    // an application's observed status.
    let started = app
        .post(
            &format!("/v1/applications/{appl}:start"),
            &a.admin,
            json!({}),
        )
        .await;
    assert_eq!(started.status, 202, "{}", started.body);
    app.token_with(&a, "viewer", None).await;
    let idem = app
        .send(
            app.http
                .post(format!("{}/v1/compute-pools", app.base))
                .bearer_auth(&a.admin)
                .header("idempotency-key", "rls")
                .json(&json!({ "name": "q", "region": "local", "max_kpu": 1 })),
        )
        .await;
    assert_eq!(idem.status, 201, "{}", idem.body);
    let db = app.db().await;
    sqlx::query(
        "INSERT INTO application_status (application_id, org_id, phase) VALUES ($1, $2, 'STOPPED')",
    )
    .bind(&appl)
    .bind(&a.id)
    .execute(&db)
    .await
    .unwrap();

    // The production path: a connection of the server's tenant pool, entered
    // for B with B's live credential, runs queries that forgot their filter.
    let tenant = sluice_control_plane::store::connect_tenant(
        &sluice_control_plane::config::DatabaseConfig {
            url: app.db_url.clone(),
            max_connections: 1,
            acquire_timeout_ms: 5_000,
            migrate_on_start: false,
        },
    )
    .unwrap();
    let b_org: OrgId = b.id.parse().unwrap();
    let b_user: sluice_api_types::UserId = b.admin_user.parse().unwrap();
    let check = sluice_control_plane::store::CredentialCheck {
        api_key: None,
        user: Some(&b_user),
        role: sluice_api_types::Role::OrgAdmin,
        pool: None,
    };
    for (table, col) in TENANT_TABLES {
        let of_a = format!("SELECT count(*) FROM {table} WHERE {col} = $1");
        let all = format!("SELECT count(*) FROM {table}");
        let mut owner = db.acquire().await.unwrap();
        let a_rows = count(&mut owner, of_a.clone(), Some(&a.id)).await;
        let b_rows = count(&mut owner, of_a.clone(), Some(&b.id)).await;
        drop(owner);
        assert!(a_rows > 0, "{table}: the fixture gives A rows");
        // Through the owner's pool, as store::tenant_tx does it.
        let mut tx = sluice_control_plane::store::tenant_tx(&db, &b_org)
            .await
            .unwrap();
        assert_eq!(
            count(&mut tx, of_a.clone(), Some(&a.id)).await,
            0,
            "{table}: tenant_tx of B sees A's rows"
        );
        assert_eq!(
            count(&mut tx, all.clone(), None).await,
            b_rows,
            "{table}: tenant_tx of B"
        );
        tx.rollback().await.unwrap();
        // Through the server's tenant pool, with and without a transaction.
        let mut tx = sluice_control_plane::store::tenant_tx_checked(&tenant, &b_org, &check)
            .await
            .unwrap()
            .expect("B's admin is live");
        assert_eq!(
            count(&mut tx, of_a.clone(), Some(&a.id)).await,
            0,
            "{table}: tenant tx of B sees A's rows"
        );
        assert_eq!(
            count(&mut tx, all.clone(), None).await,
            b_rows,
            "{table}: tenant tx of B"
        );
        tx.rollback().await.unwrap();
        let mut conn = sluice_control_plane::store::tenant_conn_checked(&tenant, &b_org, &check)
            .await
            .unwrap()
            .expect("B's admin is live");
        assert_eq!(
            count(&mut conn, of_a, Some(&a.id)).await,
            0,
            "{table}: tenant read of B sees A's rows"
        );
        assert_eq!(
            count(&mut conn, all, None).await,
            b_rows,
            "{table}: tenant read of B"
        );
    }
    // A credential that is not live enters no organization: the same pooled
    // connection, just used for B, now sees nothing at all.
    let gone = sluice_api_types::UserId::new();
    let dead = sluice_control_plane::store::CredentialCheck {
        user: Some(&gone),
        ..check
    };
    assert!(
        sluice_control_plane::store::tenant_conn_checked(&tenant, &b_org, &dead)
            .await
            .unwrap()
            .is_none()
    );
    let mut conn = tenant.acquire().await.unwrap();
    for (table, _) in TENANT_TABLES {
        assert_eq!(
            count(&mut conn, format!("SELECT count(*) FROM {table}"), None).await,
            0,
            "{table}"
        );
    }
    drop(conn);
    tenant.close().await;

    // Writing a row for A inside B's transaction is refused by the policy.
    let mut tx = sluice_control_plane::store::tenant_tx(&db, &b_org)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO compute_pools (id, org_id, name, region, max_kpu, admission) VALUES ($1, $2, 'x', 'local', 1, 'reject')")
        .bind(sluice_api_types::PoolId::new().as_str())
        .bind(&a.id)
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("row-level security"), "{err}");
    tx.rollback().await.unwrap();
    // And a transaction without an organization sees nothing at all.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE sluice_tenant")
        .execute(&mut *tx)
        .await
        .unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM applications")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 0);
    tx.rollback().await.unwrap();
    db.close().await;
}

#[tokio::test]
async fn another_orgs_ids_in_bodies_and_queries_find_nothing() {
    let app = spawn_app().await;
    let a = app.new_org("a").await;
    let b = app.new_org("b").await;
    let pool = app.create_pool(&a.admin, "p", 8).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let appl = app.create_app(&a.admin, &pool, "job").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, _) = app.token_with(&a, "viewer", None).await;
    let sa = app.get("/v1/service-accounts", &a.admin).await.body["items"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let refused = |r: crate::helpers::Res, field: &str| {
        r.assert_problem(422, "validation_failed");
        assert!(
            r.body["errors"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["field"] == field && e["code"] == "not_found"),
            "{}",
            r.body
        );
    };
    refused(
        app.post(
            "/v1/applications",
            &b.admin,
            crate::helpers::app_body(&pool, "steal"),
        )
        .await,
        "compute_pool_id",
    );
    refused(
        app.post(
            "/v1/api-keys",
            &b.admin,
            json!({ "name": "x", "service_account_id": sa }),
        )
        .await,
        "service_account_id",
    );
    refused(
        app.post(
            "/v1/api-keys",
            &b.admin,
            json!({ "name": "x", "compute_pool_id": pool }),
        )
        .await,
        "compute_pool_id",
    );
    for q in [
        format!("/v1/applications?compute_pool_id={pool}"),
        format!("/v1/audit-events?actor={}", a.admin_user),
        format!("/v1/audit-events?resource_id={appl}"),
    ] {
        let r = app.get(&q, &b.admin).await;
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        assert_eq!(r.body["items"], json!([]), "{q}: {}", r.body);
        // The same filter from A finds its rows, so the empty answer is the wall.
        let r = app.get(&q, &a.admin).await;
        assert!(
            !r.body["items"].as_array().unwrap().is_empty(),
            "{q}: {}",
            r.body
        );
    }
    // Nothing was written for B.
    for p in ["/v1/applications", "/v1/api-keys"] {
        let r = app.get(p, &b.admin).await;
        let text = r.body.to_string();
        assert!(
            !text.contains(&pool) && !text.contains("steal"),
            "{p}: {text}"
        );
    }
}

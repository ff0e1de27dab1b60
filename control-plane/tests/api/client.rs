//! The generated client (`sluice-client`) against the real server: each shape the generator
//! emits (path, query and header parameters, JSON and optional bodies, ETags, empty and text
//! answers, the two bearer schemes) and problem+json errors as typed errors.

use chrono::{DateTime, Utc};
use sluice_api_types::{
    AdminUserSpec, CreateComputePool, CreateOrganization, LoginRequest, Role, UpdateComputePool,
};
use sluice_client::{
    Client, Error, GetUsageCsvQuery, GetUsageQuery, ListComputePoolsQuery, ListOrganizationsQuery,
};

use crate::helpers::{ADMIN_TOKEN, PASSWORD, spawn_app};

fn pool(name: &str, region: &str) -> CreateComputePool {
    CreateComputePool {
        name: name.into(),
        region: region.into(),
        max_kpu: 4,
        admission: Default::default(),
    }
}

#[track_caller]
fn problem(e: Error, status: u16, code: &str) -> sluice_api_types::Problem {
    match e {
        Error::Api(p) => {
            assert_eq!((p.status, p.code.as_str()), (status, code), "{p:?}");
            assert!(!p.detail.is_empty() && p.request_id.is_some(), "{p:?}");
            *p
        }
        other => panic!("expected a {status} {code} problem, got {other}"),
    }
}

#[tokio::test]
async fn the_generated_client_drives_the_real_server() {
    let app = spawn_app().await;
    let anonymous = Client::new(&app.base);
    let operator = Client::new(&app.base).with_token(ADMIN_TOKEN);

    // The platform operator's scheme, a JSON body, a 201 without ETag.
    let email = format!("{}@example.com", sluice_test_support::unique_name("client"));
    let created = operator
        .create_organization(&CreateOrganization {
            name: "typed".into(),
            admin: AdminUserSpec {
                email: email.clone(),
                name: "Typed Admin".into(),
                password: PASSWORD.into(),
            },
        })
        .await
        .unwrap();
    let orgs = operator
        .list_organizations(&ListOrganizationsQuery {
            page_size: Some(200),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        orgs.items.iter().any(|o| o.id == created.organization.id),
        "{orgs:?}"
    );
    // Public operations send no token; bearer operations without one are 401 problems.
    let keys = anonymous.jwks().await.unwrap();
    assert!(
        keys["keys"].as_array().is_some_and(|k| !k.is_empty()),
        "{keys}"
    );
    problem(anonymous.me().await.unwrap_err(), 401, "unauthenticated");

    let token = anonymous
        .login(&LoginRequest {
            email,
            password: PASSWORD.into(),
        })
        .await
        .unwrap()
        .access_token;
    let api = Client::new(&app.base).with_token(&token);
    let me = api.me().await.unwrap();
    assert_eq!(me.organization.id, created.organization.id);
    assert_eq!(me.role, Role::OrgAdmin);

    // Idempotency-Key is sent: a retry returns the first pool, not a second one.
    let first = api
        .create_compute_pool(&pool("a", "local"), Some("create-a"))
        .await
        .unwrap();
    let again = api
        .create_compute_pool(&pool("a", "local"), Some("create-a"))
        .await
        .unwrap();
    assert_eq!(first.value.id, again.value.id);
    assert_eq!(first.etag.as_deref(), Some("\"1\""));
    api.create_compute_pool(&pool("b", "eu-west"), None)
        .await
        .unwrap();

    // Query parameters: one pool per page, then the next page by its token.
    let page = |token: Option<String>| ListComputePoolsQuery {
        page_size: Some(1),
        page_token: token,
    };
    let p1 = api.list_compute_pools(&page(None)).await.unwrap();
    assert_eq!(p1.items.len(), 1);
    let p2 = api
        .list_compute_pools(&page(p1.next_page_token.clone()))
        .await
        .unwrap();
    assert_eq!(p2.items.len(), 1);
    assert_ne!(p1.items[0].id, p2.items[0].id);

    // If-Match is sent: a stale ETag is 412, the current one changes the pool.
    let id = first.value.id.to_string();
    let change = UpdateComputePool {
        name: None,
        max_kpu: Some(8),
        admission: None,
    };
    let updated = api
        .update_compute_pool(&id, &change, first.etag.as_deref())
        .await
        .unwrap();
    assert_eq!(updated.value.max_kpu, 8);
    assert_eq!(updated.etag.as_deref(), Some("\"2\""));
    let stale = api
        .update_compute_pool(&id, &change, first.etag.as_deref())
        .await
        .unwrap_err();
    problem(stale, 412, "precondition_failed");

    // A validation error carries its fields.
    let bad = api
        .create_compute_pool(&pool("c", "mars"), None)
        .await
        .unwrap_err();
    let p = problem(bad, 422, "validation_failed");
    assert!(p.errors.iter().any(|f| f.field == "region"), "{p:?}");

    // Path parameters are one segment: a crafted id reaches no other route.
    let crafted = api.get_compute_pool("../api-keys").await.unwrap_err();
    assert!(
        matches!(crafted.status(), Some(404 | 422)),
        "{crafted}: {:?}",
        crafted.problem()
    );
    assert!(matches!(
        api.get_compute_pool("..").await.unwrap_err(),
        Error::PathParameter { name: "id", .. }
    ));

    // 204: no body; the pool is gone.
    api.delete_compute_pool(&id, updated.etag.as_deref())
        .await
        .unwrap();
    problem(
        api.get_compute_pool(&id).await.unwrap_err(),
        404,
        "not_found",
    );
}

#[tokio::test]
async fn usage_as_json_and_as_csv_text_with_date_time_queries() {
    let app = spawn_app().await;
    let (org, _other, _db) = crate::billing::fixture(&app).await;
    let api = Client::new(&app.base).with_token(&org.admin);
    let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
    let (from, to) = (at("2026-10-01T00:00:00Z"), at("2026-11-01T00:00:00Z"));
    let report = api
        .get_usage(&GetUsageQuery {
            from: Some(from),
            to: Some(to),
            granularity: Some("day".into()),
            group_by: Some("pool".into()),
            format: None,
        })
        .await
        .unwrap();
    assert_eq!((report.from, report.to), (from, to));
    assert!(report.total_milli_kpu_seconds > 0, "{report:?}");
    let csv = api
        .get_usage_csv(&GetUsageCsvQuery {
            from: Some(from),
            to: Some(to),
            granularity: Some("day".into()),
            group_by: Some("pool".into()),
            format: None,
        })
        .await
        .unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("bucket_start,group,milli_kpu_seconds,cost")
    );
    let sum: i64 = lines
        .map(|l| l.split(',').nth(2).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(sum, report.total_milli_kpu_seconds, "{csv}");
    // The same series as the text alternative of `GET /v1/usage`.
    let text = api
        .get_usage_text(&GetUsageQuery {
            from: Some(from),
            to: Some(to),
            granularity: Some("day".into()),
            group_by: Some("pool".into()),
            format: Some("csv".into()),
        })
        .await
        .unwrap();
    assert_eq!(text, csv);
    // A query the server refuses names the parameter.
    let e = api
        .get_usage(&GetUsageQuery {
            from: Some(to),
            to: Some(from),
            ..Default::default()
        })
        .await
        .unwrap_err();
    let p = problem(e, 422, "validation_failed");
    assert!(p.errors.iter().any(|f| f.field == "query.from"), "{p:?}");
}

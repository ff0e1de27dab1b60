//! Usage, invoices, usage events and the operator's billing commands against the real server
//! and PostgreSQL, with the ledger written the way the reconciler writes it (a `runs` row,
//! then its `usage_spans`, straight into the database).
//!
//! The fixture month is October 2026 (31 days), organization `{org}` (created through the
//! admin API, so its id is substituted into the expected files), currency USD.
//!
//! Price books: `local` 0.110000 per KPU-hour (the seeded version, from 2020-01-01), then
//! 0.100000 from 2026-10-16T00:00:00Z; `eu-west` 0.130000 from 2026-01-01. Both past versions
//! are inserted into `price_books` directly, as an operator's data migration would: the admin
//! API refuses versions that would change a past month.
//!
//! Ledger (`pool_…01` = prod in `local`, `pool_…02` = batch in `eu-west`):
//! - run_1, app_…01 (orders), prod: opened 2026-09-30T22:00Z at 2,250 milli-KPU, resized
//!   2026-10-10T12:00Z to 4,250, exited 2026-10-20T06:30:00.500Z (billed to 06:30:00).
//!   - at 0.11: 10-01 00:00 → 10-10 12:00 = 820,800 s × 2,250 = 1,846,800,000, plus
//!     10-10 12:00 → 10-16 00:00 = 475,200 s × 4,250 = 2,019,600,000; 3,866,400,000
//!     milli-KPU-s = 1,074 KPU-h → 118.140000.
//!   - at 0.10: 10-16 00:00 → 10-20 06:30 = 369,000 s × 4,250 = 1,568,250,000 = 435.625 KPU-h
//!     → 43.562500.
//! - run_2, app_…02 (clicks), prod: 2026-10-03T08:00:00Z → 08:00:10.999Z at 1,250: 12,500.
//! - run_3, app_…02, prod: opened 2026-10-03T08:01:00Z at 1,250 and still running, so the
//!   final invoice bills it to 11-01 00:00.
//!   - at 0.11: 08:01 → 10-04 00:00 = 57,540 s, plus 12 days = 1,036,800 s: 1,094,340 s ×
//!     1,250 = 1,367,925,000; with run_2 1,367,937,500; × 110,000 / 3,600,000 =
//!     15,047,312,500 / 360 = 41,798,090 remainder 100 (< 180) → 41.798090.
//!   - at 0.10: 16 days = 1,382,400 s × 1,250 = 1,728,000,000 = 480 KPU-h → 48.000000.
//! - run_4, app_…03 (etl), batch: 2026-10-27T12:00:00Z → 13:00:18.250Z at 1,250: 3,618 s ×
//!   1,250 = 4,522,500; × 130,000 / 3,600,000 = 58,792,500 / 360 = 163,312.5, exactly half a
//!   micro-unit: half up → 0.163313.
//! - run_x of another organization, same pool names and month, 16 KPU: never visible.
//!
//! Subtotals: prod 118.140000 + 43.562500 + 41.798090 + 48.000000 = 251.500590; batch
//! 0.163313. Total 251.663903. Lines sort by region (`eu-west` < `local`), pool, application,
//! price version.

use chrono::{DateTime, Duration, Timelike, Utc};
use reqwest::Method;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::{Org, Res, TestApp, spawn_app};

pub const PROD: &str = "pool_00000000000000000000000000000001";
pub const BATCH: &str = "pool_00000000000000000000000000000002";
pub const ORDERS: &str = "app_00000000000000000000000000000001";
pub const CLICKS: &str = "app_00000000000000000000000000000002";
pub const ETL: &str = "app_00000000000000000000000000000003";

const EXPECTED_JSON: &str = include_str!("fixtures/invoice-2026-10.json");
const EXPECTED_CSV: &str = include_str!("fixtures/invoice-2026-10.csv");

/// Milli-KPU-seconds of the fixture month (the invoice lines' quantities).
const OCTOBER_TOTAL: i64 =
    4_522_500 + 3_866_400_000 + 1_568_250_000 + 1_367_937_500 + 1_728_000_000;

pub fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad test instant {text:?}: {e}"))
        .to_utc()
}

/// A run as the reconciler records it: the `runs` row, then one span per size (each closed
/// where the next opens, the last at `ended_at` or open).
#[allow(clippy::too_many_arguments, reason = "one row's columns")]
pub async fn insert_run(
    db: &PgPool,
    run_id: &str,
    org: &str,
    app: &str,
    pool: &str,
    region: &str,
    sizes: &[(i64, DateTime<Utc>)],
    ended_at: Option<DateTime<Utc>>,
) {
    let generation: i64 = sqlx::query_scalar(
        "SELECT coalesce(max(generation), 0) + 1 FROM runs WHERE application_id = $1",
    )
    .bind(app)
    .fetch_one(db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO runs (id, org_id, application_id, pool_id, region, generation,
                           application_version, kpu_milli, created_at, ended_at, end_reason)
         VALUES ($1, $2, $3, $4, $5, $6, 1, $7, $8, $9, $10)",
    )
    .bind(run_id)
    .bind(org)
    .bind(app)
    .bind(pool)
    .bind(region)
    .bind(generation)
    .bind(sizes.last().unwrap().0)
    .bind(sizes[0].1)
    .bind(ended_at)
    .bind(ended_at.map(|_| "stopped"))
    .execute(db)
    .await
    .unwrap();
    for (i, (kpu, start)) in sizes.iter().enumerate() {
        let (end, closed_by) = match sizes.get(i + 1) {
            Some((_, next)) => (Some(*next), Some("updated")),
            None => (ended_at, ended_at.map(|_| "stopped")),
        };
        sqlx::query(
            "INSERT INTO usage_spans (org_id, run_id, application_id, pool_id, region, kpu_milli,
                                      started_at, ended_at, closed_by)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(org)
        .bind(run_id)
        .bind(app)
        .bind(pool)
        .bind(region)
        .bind(kpu)
        .bind(start)
        .bind(end)
        .bind(closed_by)
        .execute(db)
        .await
        .unwrap();
    }
}

/// The fixture's price versions (see the module comment).
pub async fn fixture_prices(db: &PgPool) {
    sqlx::query(
        "INSERT INTO price_books (region, effective_from, currency, kpu_hour_micros,
                                  orchestration_share_milli, savepoint_gib_month_micros, created_by)
         VALUES ('local', '2026-10-16T00:00:00Z', 'USD', 100000, 250, 20000, 'test'),
                ('eu-west', '2026-01-01T00:00:00Z', 'USD', 130000, 250, 25000, 'test')",
    )
    .execute(db)
    .await
    .unwrap();
}

/// Two organizations: `a` with the fixture ledger, `b` with one big run in the same month.
pub async fn fixture(app: &TestApp) -> (Org, Org, PgPool) {
    let a = app.new_org("acme").await;
    let b = app.new_org("other").await;
    let db = app.db().await;
    fixture_prices(&db).await;
    let run = |s: &str| format!("run_{}_{s}", &a.id[4..]);
    insert_run(
        &db,
        &run("1"),
        &a.id,
        ORDERS,
        PROD,
        "local",
        &[
            (2250, t("2026-09-30T22:00:00Z")),
            (4250, t("2026-10-10T12:00:00Z")),
        ],
        Some(t("2026-10-20T06:30:00.500Z")),
    )
    .await;
    insert_run(
        &db,
        &run("2"),
        &a.id,
        CLICKS,
        PROD,
        "local",
        &[(1250, t("2026-10-03T08:00:00Z"))],
        Some(t("2026-10-03T08:00:10.999Z")),
    )
    .await;
    insert_run(
        &db,
        &run("3"),
        &a.id,
        CLICKS,
        PROD,
        "local",
        &[(1250, t("2026-10-03T08:01:00Z"))],
        None,
    )
    .await;
    insert_run(
        &db,
        &run("4"),
        &a.id,
        ETL,
        BATCH,
        "eu-west",
        &[(1250, t("2026-10-27T12:00:00Z"))],
        Some(t("2026-10-27T13:00:18.250Z")),
    )
    .await;
    insert_run(
        &db,
        &format!("run_{}_x", &b.id[4..]),
        &b.id,
        "app_000000000000000000000000000000ff",
        PROD,
        "local",
        &[(16_250, t("2026-10-02T00:00:00Z"))],
        Some(t("2026-10-09T00:00:00Z")),
    )
    .await;
    (a, b, db)
}

async fn text(app: &TestApp, path: &str, token: &str, accept: Option<&str>) -> (Res, String) {
    let mut req = app
        .http
        .get(format!("{}{path}", app.base))
        .bearer_auth(token);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let r = req.send().await.unwrap();
    let status = r.status();
    let headers = r.headers().clone();
    let body = r.text().await.unwrap();
    let json = serde_json::from_str(&body).unwrap_or(Value::Null);
    (
        Res {
            status,
            headers,
            body: json,
        },
        body,
    )
}

fn content_type(r: &Res) -> &str {
    r.headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test]
async fn the_fixture_months_invoice_equals_the_hand_computed_files_and_regenerates_byte_for_byte() {
    let app = spawn_app().await;
    let (a, b, _db) = fixture(&app).await;

    let (r, json1) = text(&app, "/v1/invoices/2026-10", &a.admin, None).await;
    assert_eq!(r.status, 200, "{json1}");
    assert_eq!(content_type(&r), "application/json");
    assert_eq!(json1, EXPECTED_JSON.replace("{org}", &a.id));
    let (_, json2) = text(&app, "/v1/invoices/2026-10?format=json", &a.admin, None).await;
    assert_eq!(json1, json2, "regenerated JSON differs");
    // The document matches the published schema (what the typed client decodes).
    let typed: sluice_api_types::Invoice = serde_json::from_str(&json1).unwrap();
    assert_eq!(typed.total_micros, 251_663_903);

    let (r, csv1) = text(&app, "/v1/invoices/2026-10?format=csv", &a.admin, None).await;
    assert_eq!(r.status, 200);
    assert!(
        content_type(&r).starts_with("text/csv"),
        "{}",
        content_type(&r)
    );
    assert_eq!(csv1, EXPECTED_CSV.replace("{org}", &a.id));
    let (_, csv2) = text(&app, "/v1/invoices/2026-10", &a.admin, Some("text/csv")).await;
    assert_eq!(
        csv1, csv2,
        "Accept: text/csv gives the same bytes as format=csv"
    );

    let (r, html1) = text(&app, "/v1/invoices/2026-10", &a.admin, Some("text/html")).await;
    assert_eq!(r.status, 200);
    assert!(content_type(&r).starts_with("text/html"));
    assert!(
        html1.contains("Total: <strong>251.663903 USD</strong>") && html1.contains(ORDERS),
        "{html1}"
    );
    let (_, html2) = text(&app, "/v1/invoices/2026-10?format=html", &a.admin, None).await;
    assert_eq!(html1, html2);

    // The other organization's invoice holds its own run only.
    let (_, other) = text(&app, "/v1/invoices/2026-10", &b.admin, None).await;
    let other: Value = serde_json::from_str(&other).unwrap();
    assert_eq!(other["lines"].as_array().unwrap().len(), 1, "{other}");
    // 7 days × 16.25 KPU × 0.11 = 300.30.
    assert_eq!(other["total"], "300.300000");

    // The list: this month (a draft) back to October, newest first.
    let list = app.get("/v1/invoices", &a.admin).await;
    assert_eq!(list.status, 200, "{}", list.body);
    let items = list.body["items"].as_array().unwrap();
    let now = Utc::now();
    assert_eq!(items[0]["month"], now.format("%Y-%m").to_string());
    assert_eq!(items[0]["status"], "draft");
    let october = items.iter().find(|i| i["month"] == "2026-10").unwrap();
    assert_eq!(october["status"], "final");
    assert_eq!(october["total_micros"], 251_663_903);
    assert_eq!(items.last().unwrap()["month"], "2026-09");
    // Paging walks the same months.
    let first = app.get("/v1/invoices?page_size=1", &a.admin).await;
    let token = first.body["next_page_token"].as_str().unwrap().to_owned();
    let second = app
        .get(
            &format!("/v1/invoices?page_size=1&page_token={token}"),
            &a.admin,
        )
        .await;
    assert_eq!(second.body["items"][0]["month"], items[1]["month"]);
}

fn sum_points(group: &Value) -> i64 {
    group["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["milli_kpu_seconds"].as_i64().unwrap())
        .sum()
}

#[tokio::test]
async fn usage_series_add_up_to_the_invoice_and_open_spans_run_to_now() {
    let app = spawn_app().await;
    let (a, _b, _db) = fixture(&app).await;
    let range = "from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z";
    for (granularity, buckets) in [("hour", 744), ("day", 31)] {
        for group_by in ["application", "pool"] {
            let r = app
                .get(
                    &format!("/v1/usage?{range}&granularity={granularity}&group_by={group_by}"),
                    &a.admin,
                )
                .await;
            assert_eq!(r.status, 200, "{}", r.body);
            assert_eq!(r.body["total_milli_kpu_seconds"], OCTOBER_TOTAL);
            assert_eq!(r.body["currency"], "USD");
            let series = r.body["series"].as_array().unwrap();
            let mut sum = 0;
            for g in series {
                assert_eq!(g["points"].as_array().unwrap().len(), buckets);
                assert_eq!(
                    sum_points(g),
                    g["total_milli_kpu_seconds"].as_i64().unwrap()
                );
                sum += sum_points(g);
            }
            assert_eq!(sum, OCTOBER_TOTAL, "{granularity} by {group_by}");
            for totals in ["by_pool", "by_application"] {
                let t: i64 = r.body[totals]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x["milli_kpu_seconds"].as_i64().unwrap())
                    .sum();
                assert_eq!(t, OCTOBER_TOTAL, "{totals}");
            }
            // Report costs round once per figure; the invoice rounds per line (5 lines).
            let cost = r.body["total_cost_micros"].as_i64().unwrap();
            assert!((cost - 251_663_903).abs() <= 3, "cost {cost}");
        }
    }
    let by_app = app
        .get(&format!("/v1/usage?{range}&group_by=application"), &a.admin)
        .await;
    let keys: Vec<&str> = by_app.body["by_application"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, [ORDERS, CLICKS, ETL]);
    assert_eq!(
        by_app.body["by_application"][1]["milli_kpu_seconds"],
        1_367_937_500i64 + 1_728_000_000
    );
    // Minutes of clicks across run_2 and run_3: 08:00 holds 10 s, 08:01 on whole minutes.
    let m = app
        .get(
            "/v1/usage?from=2026-10-03T08:00:00Z&to=2026-10-03T08:03:00Z&granularity=minute&group_by=application",
            &a.admin,
        )
        .await;
    let clicks = m.body["series"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["key"] == CLICKS)
        .unwrap();
    let points: Vec<i64> = clicks["points"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["milli_kpu_seconds"].as_i64().unwrap())
        .collect();
    assert_eq!(points, [12_500, 75_000, 75_000]);

    // CSV: the same series, by `format=csv`, `Accept` or `/v1/usage.csv`.
    let q = format!("/v1/usage?{range}&granularity=day&group_by=pool");
    let (r, csv) = text(&app, &format!("{q}&format=csv"), &a.admin, None).await;
    assert!(content_type(&r).starts_with("text/csv"));
    let (_, csv2) = text(&app, &q, &a.admin, Some("text/csv")).await;
    let (_, csv3) = text(
        &app,
        &format!("/v1/usage.csv?{range}&granularity=day&group_by=pool"),
        &a.admin,
        None,
    )
    .await;
    assert_eq!(csv, csv2);
    assert_eq!(csv, csv3);
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some("bucket_start,group,milli_kpu_seconds,cost")
    );
    let csv_sum: i64 = lines
        .map(|l| l.split(',').nth(2).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(csv_sum, OCTOBER_TOTAL);

    // run_3 is still open: its usage runs up to now, never past `to`.
    let before = Utc::now();
    let from = before.with_nanosecond(0).unwrap() - Duration::hours(2);
    let to = from + Duration::hours(4);
    let r = app
        .get(
            &format!(
                "/v1/usage?from={}&to={}&granularity=hour",
                from.format("%Y-%m-%dT%H:%M:%SZ"),
                to.format("%Y-%m-%dT%H:%M:%SZ")
            ),
            &a.admin,
        )
        .await;
    let after = Utc::now();
    let seconds = r.body["total_milli_kpu_seconds"].as_i64().unwrap() / 1250;
    assert!(
        seconds >= (before - from).num_seconds() - 1 && seconds <= (after - from).num_seconds(),
        "{seconds} s of an open span between {from} and now"
    );
}

#[tokio::test]
async fn bad_usage_and_invoice_input_is_4xx_naming_the_parameter() {
    let app = spawn_app().await;
    let a = app.new_org("bad").await;
    let cases: &[(&str, &str)] = &[
        ("/v1/usage?to=2026-10-02T00:00:00Z", "query.from"),
        ("/v1/usage?from=2026-10-02T00:00:00Z", "query.to"),
        (
            "/v1/usage?from=2026-10-02T00:00:00Z&to=2026-10-01T00:00:00Z",
            "query.from",
        ),
        (
            "/v1/usage?from=2026-10-01T00:00:00Z&to=2026-10-02T00:00:00Z&group_by=tenant",
            "query.group_by",
        ),
        (
            "/v1/usage?from=2026-10-01T00:00:00Z&to=2026-10-02T00:00:00Z&granularity=week",
            "query.granularity",
        ),
        // Over the limit: 3 days of minutes, 94 days of hours.
        (
            "/v1/usage?from=2026-10-01T00:00:00Z&to=2026-10-04T00:00:00Z&granularity=minute",
            "query.to",
        ),
        (
            "/v1/usage?from=2026-07-01T00:00:00Z&to=2026-10-03T00:00:00Z&granularity=hour",
            "query.to",
        ),
        (
            "/v1/usage?from=yesterday&to=2026-10-04T00:00:00Z",
            "query.from",
        ),
        (
            "/v1/usage?from=2026-10-01T00:00:00Z&to=2026-10-02T00:00:00Z&format=xml",
            "query.format",
        ),
        (
            "/v1/usage?from=2026-10-01T00:00:00Z&to=2026-10-02T00:00:00Z&colour=blue",
            "query.colour",
        ),
        (
            "/v1/usage/events?from=2026-10-01T00:00:30Z&to=2026-10-01T00:02:00Z",
            "query.from",
        ),
        (
            "/v1/usage/events?from=2026-10-01T00:00:00Z&to=2026-10-02T00:01:00Z",
            "query.to",
        ),
        ("/v1/usage/events?from=2026-10-01T00:00:00Z", "query.to"),
        ("/v1/invoices/2026-13", "path.month"),
        ("/v1/invoices/october", "path.month"),
        ("/v1/invoices/2026-10?format=pdf", "query.format"),
        ("/v1/invoices?page_token=bm9wZQ", "query.page_token"),
    ];
    for (path, field) in cases {
        let r = app.get(path, &a.admin).await;
        r.assert_problem(422, "validation_failed");
        let fields: Vec<&str> = r.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, [*field], "{path}: {}", r.body);
    }
    // Minutes not over yet cannot be exported: their figure could still change.
    let soon = (Utc::now() + Duration::minutes(2))
        .format("%Y-%m-%dT%H:%M:00Z")
        .to_string();
    let earlier = (Utc::now() - Duration::minutes(5))
        .format("%Y-%m-%dT%H:%M:00Z")
        .to_string();
    let r = app
        .get(
            &format!("/v1/usage/events?from={earlier}&to={soon}"),
            &a.admin,
        )
        .await;
    r.assert_problem(422, "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "query.to");
    // Usage in a region without a price book cannot be priced: the operator's to fix, and the
    // answer says which region.
    let db = app.db().await;
    insert_run(
        &db,
        &format!("run_{}_unpriced", &a.id[4..]),
        &a.id,
        ETL,
        BATCH,
        "eu-west",
        &[(1250, t("2026-10-01T00:00:00Z"))],
        Some(t("2026-10-01T01:00:00Z")),
    )
    .await;
    let r = app
        .get(
            "/v1/usage?from=2026-10-01T00:00:00Z&to=2026-10-02T00:00:00Z",
            &a.admin,
        )
        .await;
    r.assert_problem(409, "price_book_missing");
    assert!(
        r.body["detail"].as_str().unwrap().contains("eu-west"),
        "{}",
        r.body
    );
    // A month that has not begun has no invoice.
    let next_year = Utc::now().format("%Y").to_string().parse::<i32>().unwrap() + 1;
    app.get(&format!("/v1/invoices/{next_year}-01"), &a.admin)
        .await
        .assert_problem(404, "not_found");
}

#[tokio::test]
async fn usage_is_readable_by_billing_roles_only_and_never_shows_another_org() {
    let app = spawn_app().await;
    let (a, b, db) = fixture(&app).await;
    let range = "from=2026-10-01T00:00:00Z&to=2026-11-01T00:00:00Z";
    for role in ["viewer", "billing_admin", "org_admin"] {
        let (_, token) = app.token_with(&a, role, None).await;
        let r = app.get(&format!("/v1/usage?{range}"), &token).await;
        assert_eq!(r.status, 200, "{role}: {}", r.body);
        assert_eq!(r.body["total_milli_kpu_seconds"], OCTOBER_TOTAL, "{role}");
    }
    let (_, dev) = app.token_with(&a, "developer", None).await;
    for path in [
        format!("/v1/usage?{range}"),
        format!("/v1/usage.csv?{range}"),
        "/v1/usage/events?from=2026-10-03T08:00:00Z&to=2026-10-03T08:05:00Z".into(),
        "/v1/invoices".into(),
        "/v1/invoices/2026-10".into(),
        "/v1/budget".into(),
    ] {
        app.get(&path, &dev).await.assert_problem(403, "forbidden");
    }

    // Organization b sees its own run only, whatever it asks for.
    let r = app
        .get(&format!("/v1/usage?{range}&group_by=application"), &b.admin)
        .await;
    assert_eq!(r.body["total_milli_kpu_seconds"], 7 * 86_400 * 16_250i64);
    let text = r.body.to_string();
    for own in [ORDERS, CLICKS, ETL, a.id.as_str()] {
        assert!(!text.contains(own), "{own} leaked: {text}");
    }
    let events = app
        .get(
            "/v1/usage/events?from=2026-10-03T08:00:00Z&to=2026-10-03T08:05:00Z",
            &b.admin,
        )
        .await;
    assert!(
        events
            .body
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["data"]["org"] == b.id.as_str()),
        "{}",
        events.body
    );
    // Row-level security is the second wall: a tenant connection of b reads no row of a, even
    // without a filter on the organization.
    let mut tx = db.begin().await.unwrap();
    sqlx::query(
        "SELECT set_config('role', 'sluice_tenant', true), set_config('sluice.org_id', $1, true)",
    )
    .bind(&b.id)
    .execute(&mut *tx)
    .await
    .unwrap();
    let foreign: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM usage_spans WHERE org_id <> current_setting('sluice.org_id')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(foreign, 0);
    tx.rollback().await.unwrap();

    // A key limited to one pool sees that pool's usage only.
    let pool_key = {
        let sa = app
            .post(
                "/v1/service-accounts",
                &a.admin,
                json!({ "name": "scoped", "role": "viewer" }),
            )
            .await;
        // The key's pool must exist as a compute pool of the organization.
        let pool = app.create_pool(&a.admin, "scoped", 4).await["id"]
            .as_str()
            .unwrap()
            .to_owned();
        insert_run(
            &db,
            &format!("run_{}_scoped", &a.id[4..]),
            &a.id,
            "app_0000000000000000000000000000000a",
            &pool,
            "local",
            &[(1000, t("2026-10-05T00:00:00Z"))],
            Some(t("2026-10-05T01:00:00Z")),
        )
        .await;
        let key = app
            .post(
                "/v1/api-keys",
                &a.admin,
                json!({ "name": "k", "service_account_id": sa.body["id"], "compute_pool_id": pool }),
            )
            .await;
        app.exchange(
            key.body["api_key"]["id"].as_str().unwrap(),
            key.body["secret"].as_str().unwrap(),
        )
        .await
    };
    let r = app.get(&format!("/v1/usage?{range}"), &pool_key).await;
    assert_eq!(r.body["total_milli_kpu_seconds"], 3_600_000);
    let inv = app.get("/v1/invoices/2026-10", &pool_key).await;
    assert_eq!(
        inv.body["lines"].as_array().unwrap().len(),
        1,
        "{}",
        inv.body
    );
}

#[tokio::test]
async fn usage_events_are_cloudevents_with_deterministic_ids() {
    let app = spawn_app().await;
    let (a, _b, _db) = fixture(&app).await;
    let path = "/v1/usage/events?from=2026-10-03T08:00:00Z&to=2026-10-03T08:03:00Z";
    let (r, body1) = text(&app, path, &a.admin, None).await;
    assert_eq!(r.status, 200, "{body1}");
    assert_eq!(content_type(&r), "application/cloudevents-batch+json");
    let (_, body2) = text(&app, path, &a.admin, None).await;
    assert_eq!(body1, body2, "a re-export is byte-identical");
    let events: Vec<sluice_api_types::UsageEvent> = serde_json::from_str(&body1).unwrap();
    let run = |s: &str| format!("run_{}_{s}", &a.id[4..]);
    let got: Vec<(String, i64)> = events
        .iter()
        .map(|e| (e.id.clone(), e.data.milli_kpu_seconds))
        .collect();
    let id = |r: &str, m: &str| format!("{}/{CLICKS}/{}/2026-10-03T08:{m}Z", a.id, run(r));
    // run_1 (orders) is running all along: one event per minute too.
    let orders = |m: &str| {
        (
            format!("{}/{ORDERS}/{}/2026-10-03T08:{m}Z", a.id, run("1")),
            60 * 2250,
        )
    };
    assert_eq!(
        got,
        [
            orders("00"),
            (id("2", "00"), 12_500),
            orders("01"),
            (id("3", "01"), 75_000),
            orders("02"),
            (id("3", "02"), 75_000),
        ]
    );
    let e = &events[1];
    assert_eq!(
        (
            e.specversion.as_str(),
            e.event_type.as_str(),
            e.time.as_str()
        ),
        ("1.0", "io.sluice.billing.usage.v1", "2026-10-03T08:01:00Z")
    );
    assert_eq!(e.source, format!("/sluice/orgs/{}", a.id));
}

#[tokio::test]
async fn operator_commands_rate_export_and_reconcile_against_the_database() {
    use sluice_control_plane::service::billing_ops::{self, BillingCmd, DocFormat, ExportFormat};
    let app = spawn_app().await;
    let (a, _b, db) = fixture(&app).await;
    let regions = vec!["local".to_owned(), "eu-west".to_owned()];
    let run = |cmd: BillingCmd| {
        let db = db.clone();
        let regions = regions.clone();
        async move {
            let mut out = Vec::new();
            billing_ops::run(&db, &regions, cmd, &mut out)
                .await
                .unwrap();
            String::from_utf8(out).unwrap()
        }
    };
    let csv = run(BillingCmd::Rate {
        org: a.id.clone(),
        month: "2026-10".into(),
        format: DocFormat::Csv,
        as_of: None,
    })
    .await;
    assert_eq!(csv, EXPECTED_CSV.replace("{org}", &a.id));

    let export = run(BillingCmd::Export {
        org: a.id.clone(),
        from: t("2026-10-03T08:00:00Z"),
        to: t("2026-10-03T08:03:00Z"),
        format: ExportFormat::Cloudevents,
    })
    .await;
    let api: Vec<Value> = serde_json::from_value(
        app.get(
            "/v1/usage/events?from=2026-10-03T08:00:00Z&to=2026-10-03T08:03:00Z",
            &a.admin,
        )
        .await
        .body,
    )
    .unwrap();
    let lines: Vec<Value> = export
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, api, "the CLI exports what the API serves");

    // A run whose exit the provisioner recorded while its span stayed open (a crash between
    // the two writes): reconcile reports it, --apply closes it at the recorded exit.
    let crashed = format!("run_{}_crashed", &a.id[4..]);
    let started = Utc::now().with_nanosecond(0).unwrap() - Duration::hours(1);
    insert_run(
        &db,
        &crashed,
        &a.id,
        "app_0000000000000000000000000000000c",
        PROD,
        "local",
        &[(1250, started)],
        None,
    )
    .await;
    let exit = started + Duration::minutes(20) + Duration::milliseconds(250);
    sqlx::query("UPDATE runs SET ended_at = $2, end_reason = 'failed' WHERE id = $1")
        .bind(&crashed)
        .bind(exit)
        .execute(&db)
        .await
        .unwrap();
    let dry = run(BillingCmd::Reconcile {
        since: None,
        apply: false,
    })
    .await;
    assert!(
        dry.contains("close_at_exit") && dry.contains(&crashed) && dry.contains("dry run"),
        "{dry}"
    );
    let applied = run(BillingCmd::Reconcile {
        since: None,
        apply: true,
    })
    .await;
    assert!(
        applied.contains("spans closed at recorded exits: 1;"),
        "{applied}"
    );
    let ended: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT ended_at FROM usage_spans WHERE run_id = $1")
            .bind(&crashed)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(ended, Some(exit));
    let again = run(BillingCmd::Reconcile {
        since: None,
        apply: true,
    })
    .await;
    assert!(
        again.contains("spans closed at recorded exits: 0;")
            && again.contains("findings left for an operator: 0"),
        "{again}"
    );
}

#[tokio::test]
async fn operators_add_price_versions_that_never_change_a_past_month() {
    let app = spawn_app().await;
    let admin = |m: Method, path: &str, body: Option<Value>| {
        let mut req = app
            .http
            .request(m, format!("{}{path}", app.base))
            .bearer_auth(crate::helpers::ADMIN_TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        app.send(req)
    };
    let books = admin(Method::GET, "/admin/v1/price-books", None).await;
    assert_eq!(books.status, 200, "{}", books.body);
    assert_eq!(books.body["items"][0]["region"], "local");
    assert_eq!(
        books.body["items"][0]["versions"][0]["kpu_hour_micros"],
        110_000
    );

    let now = Utc::now();
    let next_month = sluice_billing::Month::containing(now).unwrap().end();
    let version = |from: DateTime<Utc>, currency: &str| {
        json!({ "effective_from": from, "currency": currency, "kpu_hour_micros": 99_000,
                "savepoint_gib_month_micros": 21_000 })
    };
    let r = admin(
        Method::POST,
        "/admin/v1/price-books/local/versions",
        Some(version(next_month, "USD")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(r.body["versions"].as_array().unwrap().len(), 2);
    assert_eq!(r.body["versions"][1]["orchestration_share_milli"], 250);

    let last_month = sluice_billing::Month::containing(now).unwrap().start() - Duration::days(3);
    let cases = [
        (
            "local",
            version(last_month.with_nanosecond(0).unwrap(), "USD"),
            "effective_from",
        ),
        ("local", version(next_month, "USD"), "effective_from"),
        ("eu-west", version(next_month, "EUR"), ""),
        ("mars-1", version(next_month, "USD"), "path.region"),
    ];
    for (region, body, field) in cases {
        let r = admin(
            Method::POST,
            &format!("/admin/v1/price-books/{region}/versions"),
            Some(body),
        )
        .await;
        r.assert_problem(422, "validation_failed");
        assert_eq!(r.body["errors"][0]["field"], field, "{region}: {}", r.body);
    }
    let r = admin(Method::GET, "/admin/v1/price-books/eu-west", None).await;
    r.assert_problem(404, "not_found");
    let r = app
        .call(
            Method::GET,
            "/admin/v1/price-books",
            Some("not-the-token"),
            None,
        )
        .await;
    r.assert_problem(401, "unauthenticated");
}

#[tokio::test]
async fn savepoint_storage_is_billed_from_completion_until_disposal_in_the_apps_region() {
    let app = spawn_app().await;
    let (a, b, db) = fixture(&app).await;
    let gib: i64 = 1 << 30;
    let savepoint = |id: &str,
                     org: &str,
                     application: &str,
                     size: Option<i64>,
                     done: Option<&str>,
                     gone: Option<&str>| {
        let db = db.clone();
        let (id, org, application) = (id.to_owned(), org.to_owned(), application.to_owned());
        let (done, gone) = (done.map(t), gone.map(t));
        async move {
            sqlx::query(
                "INSERT INTO savepoints (id, org_id, application_id, origin, status, size_bytes,
                                         completed_at, deleted_at)
                 VALUES ($1, $2, $3, 'manual', $4, $5, $6, $7)",
            )
            .bind(id)
            .bind(org)
            .bind(application)
            .bind(match (done, gone) {
                (None, _) => "FAILED",
                (Some(_), None) => "COMPLETED",
                (Some(_), Some(_)) => "DELETED",
            })
            .bind(size)
            .bind(done)
            .bind(gone)
            .execute(&db)
            .await
            .unwrap();
        }
    };
    // Kept all month: 15 days at 0.023 and 16 at 0.020 per GiB-month of 31 days.
    savepoint(
        "sp_00000000000000000000000000000001",
        &a.id,
        ORDERS,
        Some(gib),
        Some("2026-09-20T00:00:00Z"),
        None,
    )
    .await;
    // Two GiB for one day in eu-west at 0.025.
    savepoint(
        "sp_00000000000000000000000000000002",
        &a.id,
        ETL,
        Some(2 * gib),
        Some("2026-10-27T12:00:00Z"),
        Some("2026-10-28T12:00:00Z"),
    )
    .await;
    // Failed: no files, nothing billed; another organization's: never visible.
    savepoint(
        "sp_00000000000000000000000000000003",
        &a.id,
        CLICKS,
        None,
        None,
        None,
    )
    .await;
    savepoint(
        "sp_00000000000000000000000000000004",
        &b.id,
        "app_000000000000000000000000000000ff",
        Some(gib),
        Some("2026-10-01T00:00:00Z"),
        None,
    )
    .await;

    let inv = app.get("/v1/invoices/2026-10", &a.admin).await;
    assert_eq!(inv.status, 200, "{}", inv.body);
    let storage: Vec<(String, i64, i64)> = inv.body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["kind"] == "savepoint_storage")
        .map(|l| {
            (
                format!(
                    "{}/{}/{}",
                    l["region"].as_str().unwrap(),
                    l["application"].as_str().unwrap(),
                    l["unit_price_micros"]
                ),
                l["quantity"].as_i64().unwrap(),
                l["amount_micros"].as_i64().unwrap(),
            )
        })
        .collect();
    // 23,000 × 15/31 = 11,129.03; 20,000 × 16/31 = 10,322.58; 2 × 25,000 × 1/31 = 1,612.90.
    assert_eq!(
        storage,
        [
            (format!("eu-west/{ETL}/25000"), 2 * gib * 86_400, 1_613),
            (format!("local/{ORDERS}/23000"), gib * 15 * 86_400, 11_129),
            (format!("local/{ORDERS}/20000"), gib * 16 * 86_400, 10_323),
        ]
    );
    assert_eq!(
        inv.body["total_micros"],
        251_663_903i64 + 1_613 + 11_129 + 10_323
    );
    let html = app.get("/v1/invoices/2026-10?format=html", &a.admin).await;
    assert!(html.body.as_str().unwrap().contains("Savepoint storage"));
}

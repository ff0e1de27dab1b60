//! The store against a real PostgreSQL (a fresh database per test, every migration applied):
//! spans are inserted the way the reconciler writes them (`runs`, then `usage_spans`).

use chrono::{DateTime, Utc};
use sluice_billing::reconcile::{Finding, reconcile};
use sluice_billing::store::{self, AlertKind, StoreError};
use sluice_billing::{BillingError, Budget, Ledger, PriceVersion, usage_between};
use sqlx::{PgConnection, PgPool};

use crate::t;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

async fn database() -> PgPool {
    let url = sluice_test_support::postgres()
        .fresh_database()
        .await
        .expect("fresh database");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("connect");
    MIGRATOR.run(&pool).await.expect("migrations apply");
    pool
}

async fn org(conn: &mut PgConnection, id: &str) {
    sqlx::query("INSERT INTO organizations (id, name) VALUES ($1, $1)")
        .bind(id)
        .execute(conn)
        .await
        .expect("org");
}

/// A run and its spans: `sizes` are (kpu_milli, started_at); each span ends where the next
/// starts (a resize), the last at `ended_at` (None: still running).
async fn run(
    conn: &mut PgConnection,
    run_id: &str,
    org: &str,
    app: &str,
    pool: &str,
    sizes: &[(i64, &str)],
    ended_at: Option<&str>,
) {
    let ended = ended_at.map(t);
    // One run per generation of an application, as the reconciler numbers them.
    sqlx::query(
        "INSERT INTO runs (id, org_id, application_id, pool_id, region, generation,
                           application_version, kpu_milli, ended_at, end_reason)
         SELECT $1, $2, $3, $4, 'local',
                (SELECT coalesce(max(generation), 0) + 1 FROM runs WHERE application_id = $3),
                1, $5, $6, $7",
    )
    .bind(run_id)
    .bind(org)
    .bind(app)
    .bind(pool)
    .bind(sizes.last().expect("a size").0)
    .bind(ended)
    .bind(ended.map(|_| "stopped"))
    .execute(&mut *conn)
    .await
    .expect("run");
    for (i, (kpu, start)) in sizes.iter().enumerate() {
        let end = match sizes.get(i + 1) {
            Some((_, next)) => Some(t(next)),
            None => ended,
        };
        let closed_by = match (sizes.get(i + 1), end) {
            (Some(_), _) => Some("resized"),
            (None, Some(_)) => Some("stopped"),
            (None, None) => None,
        };
        sqlx::query(
            "INSERT INTO usage_spans (org_id, run_id, application_id, pool_id, region, kpu_milli,
                                      started_at, ended_at, closed_by)
             VALUES ($1, $2, $3, $4, 'local', $5, $6, $7, $8)",
        )
        .bind(org)
        .bind(run_id)
        .bind(app)
        .bind(pool)
        .bind(kpu)
        .bind(t(start))
        .bind(end)
        .bind(closed_by)
        .execute(&mut *conn)
        .await
        .expect("span");
    }
}

#[tokio::test]
async fn spans_are_read_by_org_range_and_pool_and_bill_exactly() {
    let db = database().await;
    let mut c = db.acquire().await.unwrap();
    org(&mut c, "org_a").await;
    org(&mut c, "org_b").await;
    run(
        &mut c,
        "run_1",
        "org_a",
        "app_1",
        "pool_1",
        &[
            (1250, "2026-10-01T00:00:00.400Z"),
            (2250, "2026-10-01T01:00:00Z"),
        ],
        Some("2026-10-01T02:00:00.900Z"),
    )
    .await;
    // Ends exactly where the range below starts: bills nothing in it.
    run(
        &mut c,
        "run_2",
        "org_a",
        "app_2",
        "pool_2",
        &[(1000, "2026-09-30T00:00:00Z")],
        Some("2026-10-01T00:00:00Z"),
    )
    .await;
    run(
        &mut c,
        "run_3",
        "org_a",
        "app_2",
        "pool_2",
        &[(1000, "2026-10-01T01:30:00Z")],
        None,
    )
    .await;
    run(
        &mut c,
        "run_x",
        "org_b",
        "app_x",
        "pool_x",
        &[(9000, "2026-10-01T00:00:00Z")],
        None,
    )
    .await;

    let (from, to) = (t("2026-10-01T00:00:00Z"), t("2026-10-01T03:00:00Z"));
    let spans = store::spans(&mut c, "org_a", from, to, None).await.unwrap();
    let runs: Vec<&str> = spans.iter().map(|s| s.run_id.as_str()).collect();
    assert_eq!(
        runs,
        ["run_1", "run_1", "run_3"],
        "org_b and run_2 excluded"
    );
    // run_1: [0, 3600) at 1.25 and [3600, 7200) at 2.25; run_3 open from 5400, as of 03:00.
    assert_eq!(
        usage_between(&spans, from, to, to).unwrap(),
        3600 * 1250 + 3600 * 2250 + 5400 * 1000
    );
    let pool_2 = store::spans(&mut c, "org_a", from, to, Some("pool_2"))
        .await
        .unwrap();
    assert_eq!(pool_2.len(), 1);
    assert_eq!(pool_2[0].ended_at, None);
    assert_eq!(
        store::first_usage_at(&mut c, "org_a").await.unwrap(),
        Some(t("2026-09-30T00:00:00Z"))
    );
    assert_eq!(
        store::first_usage_at(&mut c, "org_none").await.unwrap(),
        None
    );
}

#[tokio::test]
async fn price_versions_are_validated_against_the_whole_catalog() {
    let db = database().await;
    let mut c = db.acquire().await.unwrap();
    let seeded = store::catalog(&mut c).await.expect("seeded catalog");
    assert_eq!(seeded.currency(), "USD");
    let local = seeded.book("local").unwrap();
    assert_eq!(local.versions.len(), 1);
    assert_eq!(local.versions[0].kpu_hour_micros, 110_000);

    let version = |from: &str, price| PriceVersion {
        effective_from: t(from),
        kpu_hour_micros: price,
        orchestration_share_milli: 250,
        savepoint_gib_month_micros: 20_000,
    };
    let not_before = t("2026-12-01T00:00:00Z");
    let param = |e: StoreError| match e {
        StoreError::Invalid(e) => e.parameter().map(str::to_owned),
        other => panic!("unexpected {other}"),
    };
    // Before the current month: it would change final invoices.
    let past = store::insert_price(
        &mut c,
        "local",
        "USD",
        &version("2026-11-30T00:00:00Z", 1),
        not_before,
        "test",
    )
    .await
    .unwrap_err();
    assert_eq!(param(past).as_deref(), Some("effective_from"));
    // A second currency in the catalog.
    let eur = store::insert_price(
        &mut c,
        "eu-west",
        "EUR",
        &version("2027-01-01T00:00:00Z", 1),
        not_before,
        "test",
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            eur,
            StoreError::Invalid(BillingError::InvalidPriceBook { .. })
        ),
        "{eur}"
    );
    // Not on a whole second.
    let frac = store::insert_price(
        &mut c,
        "local",
        "USD",
        &version("2027-01-01T00:00:00.5Z", 1),
        not_before,
        "test",
    )
    .await
    .unwrap_err();
    assert!(matches!(frac, StoreError::Invalid(_)), "{frac}");

    store::insert_price(
        &mut c,
        "local",
        "USD",
        &version("2027-01-01T00:00:00Z", 100_000),
        not_before,
        "test",
    )
    .await
    .expect("a future version");
    let dup = store::insert_price(
        &mut c,
        "local",
        "USD",
        &version("2027-01-01T00:00:00Z", 90_000),
        not_before,
        "test",
    )
    .await
    .unwrap_err();
    assert_eq!(param(dup).as_deref(), Some("effective_from"));
    let catalog = store::catalog(&mut c).await.unwrap();
    let book = catalog.book("local").unwrap();
    assert_eq!(
        book.version_at(t("2027-01-01T00:00:00Z"))
            .unwrap()
            .kpu_hour_micros,
        100_000
    );
    assert_eq!(
        book.version_at(t("2026-12-31T23:59:59Z"))
            .unwrap()
            .kpu_hour_micros,
        110_000
    );
}

#[tokio::test]
async fn budgets_compare_and_swap_and_alerts_are_recorded_once() {
    let db = database().await;
    let mut c = db.acquire().await.unwrap();
    org(&mut c, "org_a").await;
    assert_eq!(store::budget(&mut c, "org_a", false).await.unwrap(), None);
    let b = Budget::new("org_a", 10_000_000, vec![50, 100], false).unwrap();
    let first = store::put_budget(&mut c, &b, Some(0))
        .await
        .expect("create");
    assert_eq!(first.version, 1);
    let stale = store::put_budget(&mut c, &b, Some(7)).await.unwrap_err();
    assert!(
        matches!(
            stale,
            StoreError::VersionMismatch {
                expected: 7,
                current: 1
            }
        ),
        "{stale}"
    );
    let b2 = Budget::new("org_a", 20_000_000, vec![80], true).unwrap();
    let second = store::put_budget(&mut c, &b2, Some(1)).await.unwrap();
    assert_eq!((second.version, second.budget.clone()), (2, b2.clone()));
    assert_eq!(store::all_budgets(&mut c).await.unwrap(), vec![second]);

    let record = |kind| {
        let db = db.clone();
        async move {
            let mut c = db.acquire().await.unwrap();
            store::record_alert(&mut c, "org_a", "2026-10", kind, 16_000_000, 20_000_000)
                .await
                .unwrap()
        }
    };
    assert!(record(AlertKind::Threshold(80)).await);
    assert!(!record(AlertKind::Threshold(80)).await, "once per month");
    assert!(record(AlertKind::HardStop).await);
    assert!(!record(AlertKind::HardStop).await);
    assert_eq!(
        store::alerted_thresholds(&mut c, "org_a", "2026-10")
            .await
            .unwrap(),
        vec![80]
    );
    assert!(
        store::alerted_thresholds(&mut c, "org_a", "2026-11")
            .await
            .unwrap()
            .is_empty()
    );

    assert!(
        store::delete_budget(&mut c, "org_a", Some(1))
            .await
            .is_err()
    );
    assert!(
        store::delete_budget(&mut c, "org_a", Some(2))
            .await
            .unwrap()
    );
    assert!(!store::delete_budget(&mut c, "org_a", None).await.unwrap());
}

fn at(text: &str) -> DateTime<Utc> {
    t(text)
}

#[tokio::test]
async fn reconciliation_closes_open_spans_at_recorded_exits_only() {
    let db = database().await;
    let mut c = db.acquire().await.unwrap();
    org(&mut c, "org_a").await;
    // Still running: nothing to do.
    run(
        &mut c,
        "run_ok",
        "org_a",
        "app_1",
        "pool_1",
        &[(1250, "2026-10-01T00:00:00Z")],
        None,
    )
    .await;
    // The provisioner recorded the exit but the span stayed open (a crash in between).
    run(
        &mut c,
        "run_gone",
        "org_a",
        "app_2",
        "pool_1",
        &[(2250, "2026-10-01T00:00:00Z")],
        None,
    )
    .await;
    sqlx::query(
        "UPDATE runs SET ended_at = '2026-10-01T05:00:00.250Z', end_reason = 'failed' WHERE id = 'run_gone'",
    )
    .execute(&mut *c)
    .await
    .unwrap();

    let evidence = store::runs_to_reconcile(&mut c, at("2026-09-01T00:00:00Z"))
        .await
        .unwrap();
    let ids: Vec<String> = evidence.iter().map(|r| r.run_id.clone()).collect();
    assert_eq!(ids, ["run_gone", "run_ok"]);
    let ledger = Ledger::from_spans(store::spans_of_runs(&mut c, &ids).await.unwrap()).unwrap();
    let findings = reconcile(&ledger, &store::observations(&evidence));
    assert_eq!(
        findings,
        vec![Finding::CloseAtExit {
            run_id: "run_gone".into(),
            exit_at: at("2026-10-01T05:00:00.250Z"),
        }]
    );
    assert!(
        store::close_open_span(
            &mut c,
            "run_gone",
            at("2026-10-01T05:00:00.250Z"),
            "reconcile"
        )
        .await
        .unwrap()
    );
    assert!(
        !store::close_open_span(
            &mut c,
            "run_gone",
            at("2026-10-01T05:00:00.250Z"),
            "reconcile"
        )
        .await
        .unwrap(),
        "closing twice changes nothing"
    );
    let ledger = Ledger::from_spans(store::spans_of_runs(&mut c, &ids).await.unwrap()).unwrap();
    assert!(reconcile(&ledger, &store::observations(&evidence)).is_empty());
    let closed_by: String =
        sqlx::query_scalar("SELECT closed_by FROM usage_spans WHERE run_id = 'run_gone'")
            .fetch_one(&mut *c)
            .await
            .unwrap();
    assert_eq!(closed_by, "reconcile");
}

//! The invoice of a fixture month against expected files written by hand.
//!
//! Organisation `org_acme`, February 2026 (28 days = 2,419,200 s), currency EUR.
//!
//! Price books:
//! - `eu-west-1`: from 2026-01-01 0.110000 per KPU-hour and 0.023000 per GiB-month; from
//!   2026-02-15T00:00:00Z 0.100000 per KPU-hour and 0.020000 per GiB-month.
//! - `us-east-1`: from 2025-01-01 0.130000 per KPU-hour and 0.025000 per GiB-month.
//!
//! Ledger (sizes from `kpu_milli(P, K, 250)`):
//! - run_1, app_orders, pool_prod, eu-west-1: opened 2026-01-31T23:00Z at P=4, K=2 → 2,250;
//!   resized 2026-02-10T12:00Z to P=8, K=2 → 4,250; exited 2026-02-20T06:30:00.500Z (billed to
//!   06:30:00, the whole-second rule).
//!   - before the change: 02-01 00:00 → 02-10 12:00 = 228 h = 820,800 s × 2,250 = 1,846,800,000,
//!     plus 02-10 12:00 → 02-15 00:00 = 108 h = 388,800 s × 4,250 = 1,652,400,000;
//!     line = 3,499,200,000 milli-KPU-s = 972 KPU-h × 0.11 = 106.920000.
//!   - after: 02-15 00:00 → 02-20 06:30 = 126.5 h = 455,400 s × 4,250 = 1,935,450,000
//!     = 537.625 KPU-h × 0.10 = 53.762500.
//! - run_2, app_clicks, pool_prod, eu-west-1: opened 2026-02-03T08:00:00Z at P=1, K=1 → 1,250,
//!   failed 08:00:10.999Z → 10 s × 1,250 = 12,500.
//! - run_3, app_clicks (the restart, a new run): opened 2026-02-03T08:01:00Z at 1,250, still
//!   running, so a final invoice bills it to 03-01 00:00.
//!   - before the change: 08:01 → 02-04 00:00 = 57,540 s, plus 11 days = 950,400 s;
//!     1,007,940 s × 1,250 = 1,259,925,000; with run_2, line = 1,259,937,500 milli-KPU-s;
//!     × 110,000 / 3,600,000 = 13,859,312,500 / 360 = 38,498,090 remainder 100 (< 180) → 38.498090.
//!   - after: 14 days = 1,209,600 s × 1,250 = 1,512,000,000 → / 36 = 42.000000.
//! - run_4, app_etl, pool_batch, us-east-1: 2026-02-27T12:00:00Z → 13:00:18.250Z at 1,250:
//!   3,618 s × 1,250 = 4,522,500; × 130,000 / 3,600,000 = 58,792,500 / 360 = 163,312.5, exactly
//!   half a micro-unit: half up → 0.163313.
//! - run_x of `org_other` in the same regions must not appear.
//!
//! Savepoint storage (GiB-month = 2^30 bytes × 2,419,200 s):
//! - app_orders, 10 GiB = 10,737,418,240 bytes all month: before the change 14 days
//!   → 10,737,418,240 × 1,209,600 = 12,987,981,103,104,000 byte-s = 5 GiB-months × 0.023
//!   = 0.115000; after, the same quantity × 0.020 = 0.100000.
//! - app_etl, 1.5 GiB = 1,610,612,736 bytes from 02-22 to 03-01 (604,800 s):
//!   974,098,582,732,800 byte-s = 0.375 GiB-month × 0.025 = 0.009375.
//!
//! Subtotals: pool_batch 0.163313 + 0.009375 = 0.172688; pool_prod 38.498090 + 42.000000 +
//! 106.920000 + 53.762500 + 0.115000 + 0.100000 = 241.395590. Regions: eu-west-1 = pool_prod,
//! us-east-1 = pool_batch. Total 241.568278.

use sluice_billing::{
    Invoice, InvoiceStatus, Ledger, Month, PriceBook, PriceCatalog, PriceVersion, RunRef,
    SavepointStorage, Span, build_invoice, kpu_milli,
};

use crate::t;

const EXPECTED_JSON: &str = include_str!("../fixtures/invoice-org_acme-2026-02.json");
const EXPECTED_CSV: &str = include_str!("../fixtures/invoice-org_acme-2026-02.csv");

fn catalog() -> PriceCatalog {
    let version = |from: &str, kpu_hour_micros, savepoint_gib_month_micros| PriceVersion {
        effective_from: t(from),
        kpu_hour_micros,
        orchestration_share_milli: 250,
        savepoint_gib_month_micros,
    };
    let eu = PriceBook::new(
        "eu-west-1",
        "EUR",
        vec![
            version("2026-01-01T00:00:00Z", 110_000, 23_000),
            version("2026-02-15T00:00:00Z", 100_000, 20_000),
        ],
    )
    .expect("eu book");
    let us = PriceBook::new(
        "us-east-1",
        "EUR",
        vec![version("2025-01-01T00:00:00Z", 130_000, 25_000)],
    )
    .expect("us book");
    // Deliberately not in region order: the catalog and the invoice must not depend on it.
    PriceCatalog::new(vec![us, eu]).expect("catalog")
}

fn run(run_id: &str, org: &str, application: &str, pool: &str, region: &str) -> RunRef {
    RunRef {
        run_id: run_id.into(),
        org: org.into(),
        pool: pool.into(),
        application: application.into(),
        region: region.into(),
    }
}

fn ledger() -> Vec<Span> {
    let size = |p, k| kpu_milli(p, k, 250).expect("size");
    let mut ledger = Ledger::new();
    let orders = run("run_1", "org_acme", "app_orders", "pool_prod", "eu-west-1");
    ledger
        .open_run(&orders, size(4, 2), t("2026-01-31T23:00:00Z"))
        .expect("run_1");
    let x = run("run_x", "org_other", "app_x", "pool_x", "eu-west-1");
    ledger
        .open_run(&x, size(16, 1), t("2026-02-01T00:00:00Z"))
        .expect("run_x");
    let clicks = run("run_2", "org_acme", "app_clicks", "pool_prod", "eu-west-1");
    ledger
        .open_run(&clicks, size(1, 1), t("2026-02-03T08:00:00Z"))
        .expect("run_2");
    ledger
        .close("run_2", t("2026-02-03T08:00:10.999Z"))
        .expect("run_2 exit");
    let clicks_again = run("run_3", "org_acme", "app_clicks", "pool_prod", "eu-west-1");
    ledger
        .open_run(&clicks_again, size(1, 1), t("2026-02-03T08:01:00Z"))
        .expect("run_3");
    ledger
        .resize("run_1", size(8, 2), t("2026-02-10T12:00:00Z"))
        .expect("run_1 resize");
    ledger
        .close("run_1", t("2026-02-20T06:30:00.500Z"))
        .expect("run_1 exit");
    let etl = run("run_4", "org_acme", "app_etl", "pool_batch", "us-east-1");
    ledger
        .open_run(&etl, size(1, 1), t("2026-02-27T12:00:00Z"))
        .expect("run_4");
    ledger
        .close("run_4", t("2026-02-27T13:00:18.250Z"))
        .expect("run_4 exit");
    ledger.into_spans()
}

fn storage() -> Vec<SavepointStorage> {
    let record = |org: &str, application: &str, pool: &str, region: &str, bytes, from, to| {
        SavepointStorage {
            org: org.into(),
            pool: pool.into(),
            application: application.into(),
            region: region.into(),
            bytes,
            from: t(from),
            to: t(to),
        }
    };
    vec![
        record(
            "org_acme",
            "app_etl",
            "pool_batch",
            "us-east-1",
            1_610_612_736,
            "2026-02-22T00:00:00Z",
            "2026-03-10T00:00:00Z",
        ),
        record(
            "org_other",
            "app_x",
            "pool_x",
            "eu-west-1",
            1 << 40,
            "2026-01-01T00:00:00Z",
            "2026-03-01T00:00:00Z",
        ),
        record(
            "org_acme",
            "app_orders",
            "pool_prod",
            "eu-west-1",
            10_737_418_240,
            "2026-01-15T00:00:00Z",
            "2026-03-15T00:00:00Z",
        ),
    ]
}

fn final_invoice() -> Invoice {
    let month = Month::parse("2026-02").expect("month");
    build_invoice(
        "org_acme",
        month,
        &ledger(),
        &storage(),
        &catalog(),
        t("2026-03-02T09:00:00Z"),
    )
    .expect("invoice")
}

#[test]
fn final_invoice_matches_the_hand_computed_json() {
    let invoice = final_invoice();
    assert_eq!(invoice.status, InvoiceStatus::Final);
    assert_eq!(invoice.total_micros, 241_568_278);
    let rendered: serde_json::Value =
        serde_json::from_str(&invoice.to_json().expect("json")).expect("rendered JSON parses");
    let expected: serde_json::Value = serde_json::from_str(EXPECTED_JSON).expect("fixture parses");
    assert_eq!(rendered, expected);
}

#[test]
fn final_invoice_matches_the_hand_computed_csv() {
    assert_eq!(final_invoice().to_csv(), EXPECTED_CSV);
}

#[test]
fn regenerating_gives_the_same_bytes_in_every_rendering() {
    let a = final_invoice();
    let mut spans = ledger();
    spans.reverse();
    let mut records = storage();
    records.reverse();
    let month = Month::parse("2026-02").expect("month");
    let b = build_invoice(
        "org_acme",
        month,
        &spans,
        &records,
        &catalog(),
        t("2027-01-01T00:00:00Z"),
    )
    .expect("invoice");
    assert_eq!(a.to_json().expect("json"), b.to_json().expect("json"));
    assert_eq!(a.to_csv(), b.to_csv());
    assert_eq!(a.to_html(), b.to_html());
    let html = a.to_html();
    assert!(
        html.contains("Total: <strong>241.568278 EUR</strong>"),
        "{html}"
    );
    assert!(
        html.contains("3499200.000"),
        "KPU-seconds of app_orders shown exactly"
    );
}

#[test]
fn draft_bills_open_runs_up_to_as_of() {
    let month = Month::parse("2026-02").expect("month");
    // As of 02-04 00:00: run_1 2,250 × 3 days; run_2 12,500; run_3 57,540 s × 1,250; all at the
    // first price (0.11 / KPU-h); storage app_orders 3 days of 10 GiB at 0.023 per GiB-month.
    let draft = build_invoice(
        "org_acme",
        month,
        &ledger(),
        &storage(),
        &catalog(),
        t("2026-02-04T00:00:00Z"),
    )
    .expect("draft");
    assert_eq!(draft.status, InvoiceStatus::Draft);
    assert_eq!(draft.rated_through, t("2026-02-04T00:00:00Z"));
    // run_1: 2,250 × 259,200 = 583,200,000 → 162 KPU-h × 0.11 = 17.820000.
    // app_clicks: 12,500 + 71,925,000 = 71,937,500 × 11 / 360 = 2,198,090.277… → 2.198090.
    // storage: 10 GiB × 3/28 month × 0.023 = 0.690 / 28 = 0.024642857… → 0.024643.
    let amounts: Vec<i64> = draft.lines.iter().map(|l| l.amount_micros).collect();
    assert_eq!(amounts, vec![2_198_090, 17_820_000, 24_643]);
    assert_eq!(draft.total_micros, 2_198_090 + 17_820_000 + 24_643);
}

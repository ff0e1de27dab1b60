//! Metering and billing (DESIGN.md §7): usage series, usage events, invoices, budgets and the
//! operator's price books.
//!
//! Quantities are integers: usage in milli-KPU-seconds (1000 = one KPU held for one second),
//! money in micro-units of the deployment's currency (1,000,000 = one unit). Decimal strings
//! (`amount`, `total`) are renderings of those integers for people, never inputs.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// `GET /v1/usage` and `GET /v1/usage.csv`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageParams {
    /// Start of the range (RFC 3339, inclusive). Required.
    pub from: Option<DateTime<Utc>>,
    /// End of the range (RFC 3339, exclusive). Required; at most 2 days for `minute`, 93 days
    /// for `hour`, 1,100 days for `day`.
    pub to: Option<DateTime<Utc>>,
    /// `minute`, `hour` (default) or `day`; buckets are aligned to UTC.
    pub granularity: Option<String>,
    /// `pool`, `application` or `region`; absent: one series keyed `total`.
    pub group_by: Option<String>,
    /// `json` (default) or `csv`; `Accept: text/csv` also selects CSV.
    pub format: Option<String>,
}

/// One bucket of a usage series.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsagePoint {
    /// Start of the UTC bucket (the first bucket may start before `from`; it then holds only
    /// the usage from `from` on).
    pub bucket_start: DateTime<Utc>,
    pub milli_kpu_seconds: i64,
    /// Cost of the bucket at the price in force, rounded half up once (a report figure: the
    /// invoice, rounded per line, is what is billed).
    pub cost_micros: i64,
}

/// The series of one group (`key` is the pool or application id, the region, or `total`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageGroup {
    pub key: String,
    pub total_milli_kpu_seconds: i64,
    pub total_cost_micros: i64,
    pub points: Vec<UsagePoint>,
}

/// Usage of one pool or application over the whole range.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageTotal {
    pub key: String,
    pub milli_kpu_seconds: i64,
    pub cost_micros: i64,
}

/// A usage report: the series asked for plus per-pool and per-application totals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageReport {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub granularity: String,
    pub group_by: Option<String>,
    /// ISO 4217 code of every cost figure.
    pub currency: String,
    /// Open spans (clusters still running) are counted up to this instant.
    pub as_of: DateTime<Utc>,
    pub total_milli_kpu_seconds: i64,
    pub total_cost_micros: i64,
    /// Sorted by key; buckets in time order.
    pub series: Vec<UsageGroup>,
    pub by_pool: Vec<UsageTotal>,
    pub by_application: Vec<UsageTotal>,
}

/// `GET /v1/usage/events`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UsageEventParams {
    /// A whole UTC minute (RFC 3339). Required.
    pub from: Option<DateTime<Utc>>,
    /// A whole UTC minute, not in the future, at most one day after `from`. Required.
    pub to: Option<DateTime<Utc>>,
}

/// The `data` of a usage event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageEventData {
    pub org: String,
    pub pool: String,
    pub application: String,
    pub run_id: String,
    pub region: String,
    pub minute_start: String,
    pub milli_kpu_seconds: i64,
}

/// A CloudEvents 1.0 usage event: one per run and UTC minute. The id `org/app/run/minute` is
/// deterministic, so an external billing system can deduplicate re-exports by it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct UsageEvent {
    pub specversion: String,
    pub id: String,
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub subject: String,
    /// End of the minute.
    pub time: String,
    pub datacontenttype: String,
    pub data: UsageEventData,
}

/// `?format=` of `GET /v1/invoices/{month}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct InvoiceParams {
    /// `json` (default), `csv` or `html`; without it the `Accept` header decides.
    pub format: Option<String>,
}

/// One invoice line: one (kind, region, pool, application, price version).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvoiceLine {
    /// `compute` or `savepoint_storage`.
    pub kind: String,
    pub region: String,
    pub pool: String,
    pub application: String,
    /// The price book version that priced this line.
    pub price_effective_from: DateTime<Utc>,
    /// Exact quantity in `quantity_unit` (`milli_kpu_second` or `byte_second`).
    #[schema(value_type = i64)]
    pub quantity: i128,
    pub quantity_unit: String,
    pub unit_price_micros: i64,
    /// `kpu_hour` or `gib_month`.
    pub price_unit: String,
    /// `quantity × unit price / unit size`, rounded half up once, in micro-units.
    pub amount_micros: i64,
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvoiceSubtotal {
    pub key: String,
    pub amount_micros: i64,
    pub amount: String,
}

/// A monthly invoice: `draft` during the month (open clusters rated up to `rated_through`),
/// `final` from the month's end. Regenerating it from the ledger gives the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Invoice {
    pub org: String,
    /// `YYYY-MM` (UTC).
    pub month: String,
    /// `draft` or `final`.
    pub status: String,
    pub currency: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub rated_through: DateTime<Utc>,
    pub lines: Vec<InvoiceLine>,
    pub subtotals_by_pool: Vec<InvoiceSubtotal>,
    pub subtotals_by_region: Vec<InvoiceSubtotal>,
    /// Sum of the rounded line amounts.
    pub total_micros: i64,
    pub total: String,
}

/// An invoice without its lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvoiceSummary {
    pub month: String,
    pub status: String,
    pub currency: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    pub rated_through: DateTime<Utc>,
    pub total_micros: i64,
    pub total: String,
}

/// Newest month first, from the current month back to the organization's first usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvoiceList {
    pub items: Vec<InvoiceSummary>,
    pub next_page_token: Option<String>,
}

/// `PUT /v1/budget`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutBudget {
    /// The monthly budget in micro-units of the currency (> 0).
    pub monthly_limit_micros: i64,
    /// Alert thresholds in percent of the budget, strictly increasing, each 1..=1000
    /// (default 50, 80, 100). Each raises one audit event per month, when first reached.
    #[serde(default = "default_thresholds")]
    pub thresholds_percent: Vec<u32>,
    /// At 100 %, stop the organization's running applications (with savepoints).
    #[serde(default)]
    pub hard_stop: bool,
}

fn default_thresholds() -> Vec<u32> {
    vec![50, 80, 100]
}

/// Spend of the current month against the budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct BudgetMonth {
    pub month: String,
    /// The current month's invoice total so far (its draft).
    pub spend_micros: i64,
    /// Thresholds the spend has reached.
    pub thresholds_reached: Vec<u32>,
    /// Thresholds already alerted on this month (audit events `budget.threshold_reached`).
    pub alerts_raised: Vec<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Budget {
    pub monthly_limit_micros: i64,
    pub thresholds_percent: Vec<u32>,
    pub hard_stop: bool,
    pub currency: String,
    pub current_month: BudgetMonth,
    /// Compare-and-swap version; sent back as `ETag` and expected in `If-Match`.
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One version of a region's price book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PriceVersion {
    /// The version is in force from here until the next version's `effective_from`.
    pub effective_from: DateTime<Utc>,
    /// Price of one KPU held for one hour, in micro-units.
    pub kpu_hour_micros: i64,
    /// JobManager share added to every application, in milli-KPU (0..=1000).
    pub orchestration_share_milli: i64,
    /// Price of one GiB of savepoint storage held for a whole month, in micro-units.
    pub savepoint_gib_month_micros: i64,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PriceBook {
    pub region: String,
    pub currency: String,
    /// Oldest first.
    pub versions: Vec<PriceVersion>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PriceBookList {
    pub items: Vec<PriceBook>,
}

/// `POST /admin/v1/price-books/{region}/versions`: a new version of a region's book. It may
/// not take effect before the start of the current month, so final invoices never change.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreatePriceVersion {
    /// A whole second, not before the start of the current UTC month.
    pub effective_from: DateTime<Utc>,
    /// ISO 4217; every region of a deployment bills in one currency.
    pub currency: String,
    pub kpu_hour_micros: i64,
    /// Default 250 (0.25 KPU).
    #[serde(default = "default_share")]
    pub orchestration_share_milli: i64,
    pub savepoint_gib_month_micros: i64,
}

fn default_share() -> i64 {
    250
}

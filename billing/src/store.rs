//! The billing tables in PostgreSQL (sqlx): the span ledger as the reconciler writes it
//! (`runs`, `usage_spans`), savepoint sizes (`savepoints`), price books (`price_books`),
//! budgets (`budgets`) and the alerts a budget raised (`budget_alerts`). Schema: `migrations/`.
//!
//! Every function takes a connection, so the caller decides what is atomic and whether it runs
//! under row-level security (a tenant connection) or as the tables' owner (the budget pass, the
//! operator's CLI). Reads of a tenant's data filter on `org_id` explicitly as well.
//!
//! Tests: `dev/cargo test -p sluice-billing` (`tests/billing/store.rs`, real PostgreSQL).

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use crate::budget::Budget;
use crate::error::BillingError;
use crate::invoice::SavepointStorage;
use crate::ledger::Span;
use crate::price::{PriceBook, PriceCatalog, PriceVersion};
use crate::reconcile::{Observation, Observed};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database query failed: {0}")]
    Db(#[from] sqlx::Error),
    /// What is stored, or about to be, breaks a billing rule (a malformed price book, a budget
    /// out of range, a ledger that overlaps).
    #[error(transparent)]
    Invalid(#[from] BillingError),
    /// A compare-and-swap write found another version.
    #[error("version {expected} expected but the stored version is {current}")]
    VersionMismatch { expected: i64, current: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// `org`'s spans that bill any second of `[from, to)` (open spans included: they run to the
/// caller's "as of"), optionally of one pool only, in no particular order.
///
/// A span bills `[floor(started_at), floor(ended_at))`; `started_at < to` and
/// `ended_at > from` (with `from`, `to` whole seconds) select exactly the spans that can
/// overlap, plus at worst spans ending inside `from`'s first second, which bill nothing there.
pub async fn spans(
    conn: &mut PgConnection,
    org: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    pool: Option<&str>,
) -> Result<Vec<Span>> {
    // No ORDER BY: every consumer is order-independent (roll-ups, invoices and events key
    // their output; validation sorts), and sorting text under the database's collation was a
    // measurable part of a 30-day report. Columns are decoded by position, not by name.
    let rows = sqlx::query_as::<_, SpanTuple>(
        "SELECT run_id, org_id, pool_id, application_id, region, kpu_milli, started_at, ended_at
         FROM usage_spans
         WHERE org_id = $1 AND started_at < $3 AND (ended_at IS NULL OR ended_at > $2)
           AND ($4::text IS NULL OR pool_id = $4)",
    )
    .bind(org)
    .bind(whole_second(from))
    .bind(whole_second(to))
    .bind(pool)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(span_from_tuple).collect())
}

type SpanTuple = (
    String,
    String,
    String,
    String,
    String,
    i64,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

fn span_from_tuple(
    (run_id, org, pool, application, region, kpu_milli, started_at, ended_at): SpanTuple,
) -> Span {
    Span {
        run_id,
        org,
        pool,
        application,
        region,
        kpu_milli,
        started_at,
        ended_at,
    }
}

fn whole_second(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp(at.timestamp(), 0).unwrap_or(at)
}

type StorageTuple = (
    String,
    String,
    String,
    String,
    i64,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
);

/// Savepoint bytes `org` held in storage during `[from, to)`: every savepoint with a size from
/// its completion until its files are disposed of (`deleted_at`; until `to` while it is kept),
/// optionally of one pool only. A savepoint is priced in the region of its application's
/// latest run (or its application's pool when it never ran); one whose application is gone
/// without ever having run has no region and cannot be priced, so it is left out.
pub async fn savepoint_storage(
    conn: &mut PgConnection,
    org: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    pool: Option<&str>,
) -> Result<Vec<SavepointStorage>> {
    let rows = sqlx::query_as::<_, StorageTuple>(
        "SELECT s.org_id, coalesce(r.pool_id, a.pool_id), coalesce(r.region, p.region),
                s.application_id, s.size_bytes, s.completed_at, s.deleted_at
         FROM savepoints s
         LEFT JOIN LATERAL (SELECT pool_id, region FROM runs
                            WHERE runs.application_id = s.application_id AND runs.org_id = s.org_id
                            ORDER BY generation DESC LIMIT 1) r ON true
         LEFT JOIN applications a ON a.id = s.application_id AND a.org_id = s.org_id
         LEFT JOIN compute_pools p ON p.id = a.pool_id
         WHERE s.org_id = $1 AND s.size_bytes IS NOT NULL AND s.completed_at IS NOT NULL
           AND s.completed_at < $3 AND (s.deleted_at IS NULL OR s.deleted_at > $2)
           AND coalesce(r.region, p.region) IS NOT NULL
           AND ($4::text IS NULL OR coalesce(r.pool_id, a.pool_id) = $4)",
    )
    .bind(org)
    .bind(from)
    .bind(to)
    .bind(pool)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(org, pool, region, application, bytes, completed_at, deleted_at)| SavepointStorage {
                org,
                pool,
                region,
                application,
                bytes,
                from: completed_at,
                to: deleted_at.unwrap_or(to).max(completed_at),
            },
        )
        .collect())
}

/// When `org`'s first span started (None: no usage ever).
pub async fn first_usage_at(conn: &mut PgConnection, org: &str) -> Result<Option<DateTime<Utc>>> {
    Ok(
        sqlx::query_scalar("SELECT min(started_at) FROM usage_spans WHERE org_id = $1")
            .bind(org)
            .fetch_one(conn)
            .await?,
    )
}

#[derive(sqlx::FromRow)]
struct PriceRow {
    region: String,
    currency: String,
    effective_from: DateTime<Utc>,
    kpu_hour_micros: i64,
    orchestration_share_milli: i64,
    savepoint_gib_month_micros: i64,
    created_at: DateTime<Utc>,
}

/// A stored price version with its region, currency and creation time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPrice {
    pub region: String,
    pub currency: String,
    pub version: PriceVersion,
    pub created_at: DateTime<Utc>,
}

/// Every price version of every region, by region then effective date.
pub async fn prices(conn: &mut PgConnection) -> Result<Vec<StoredPrice>> {
    let rows = sqlx::query_as::<_, PriceRow>(
        "SELECT region, currency, effective_from, kpu_hour_micros, orchestration_share_milli,
                savepoint_gib_month_micros, created_at
         FROM price_books ORDER BY region, effective_from",
    )
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| StoredPrice {
            region: r.region,
            currency: r.currency,
            version: PriceVersion {
                effective_from: r.effective_from,
                kpu_hour_micros: r.kpu_hour_micros,
                orchestration_share_milli: r.orchestration_share_milli,
                savepoint_gib_month_micros: r.savepoint_gib_month_micros,
            },
            created_at: r.created_at,
        })
        .collect())
}

/// Groups stored versions into validated books (one currency per book: the first version's).
pub fn books(prices: &[StoredPrice]) -> Result<Vec<PriceBook>> {
    let mut books: Vec<PriceBook> = Vec::new();
    for p in prices {
        match books.last_mut() {
            Some(book) if book.region == p.region => {
                if book.currency != p.currency {
                    return Err(BillingError::InvalidPriceBook {
                        region: p.region.clone(),
                        reason: format!(
                            "versions in two currencies ({} and {})",
                            book.currency, p.currency
                        ),
                    }
                    .into());
                }
                book.versions.push(p.version.clone());
            }
            _ => books.push(PriceBook {
                region: p.region.clone(),
                currency: p.currency.clone(),
                versions: vec![p.version.clone()],
            }),
        }
    }
    for book in &books {
        book.validate()?;
    }
    Ok(books)
}

/// The catalog of every region's book; an error when there is no book at all or the books
/// disagree on the currency.
pub async fn catalog(conn: &mut PgConnection) -> Result<PriceCatalog> {
    let prices = prices(conn).await?;
    Ok(PriceCatalog::new(books(&prices)?)?)
}

/// Adds a version to `region`'s book (creating the book), after checking that the catalog
/// stays valid with it: one currency across regions, increasing whole-second dates, prices in
/// range. Not before `not_before` (the start of the current month: final invoices never change).
/// The caller's transaction should hold [`lock_price_books`] so two writers cannot interleave.
pub async fn insert_price(
    conn: &mut PgConnection,
    region: &str,
    currency: &str,
    version: &PriceVersion,
    not_before: DateTime<Utc>,
    created_by: &str,
) -> Result<()> {
    if version.effective_from < not_before {
        return Err(BillingError::InvalidParameter {
            parameter: "effective_from",
            reason: format!(
                "{} precedes {}: a price may not change usage already rated in a past or final invoice",
                crate::time::rfc3339(version.effective_from),
                crate::time::rfc3339(not_before)
            ),
        }
        .into());
    }
    let mut all = prices(conn).await?;
    if all
        .iter()
        .any(|p| p.region == region && p.version.effective_from == version.effective_from)
    {
        return Err(BillingError::InvalidParameter {
            parameter: "effective_from",
            reason: format!(
                "region {region} already has a version taking effect at {}",
                crate::time::rfc3339(version.effective_from)
            ),
        }
        .into());
    }
    all.push(StoredPrice {
        region: region.to_owned(),
        currency: currency.to_owned(),
        version: version.clone(),
        created_at: Utc::now(),
    });
    all.sort_by(|a, b| {
        (&a.region, a.version.effective_from).cmp(&(&b.region, b.version.effective_from))
    });
    PriceCatalog::new(books(&all)?)?;
    sqlx::query(
        "INSERT INTO price_books (region, effective_from, currency, kpu_hour_micros,
                                  orchestration_share_milli, savepoint_gib_month_micros, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(region)
    .bind(version.effective_from)
    .bind(currency)
    .bind(version.kpu_hour_micros)
    .bind(version.orchestration_share_milli)
    .bind(version.savepoint_gib_month_micros)
    .bind(created_by)
    .execute(conn)
    .await?;
    Ok(())
}

/// Serialises writers of the price books for the rest of the transaction.
pub async fn lock_price_books(conn: &mut PgConnection) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sluice.price_books'))")
        .execute(conn)
        .await?;
    Ok(())
}

/// A stored budget with its compare-and-swap version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBudget {
    pub budget: Budget,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct BudgetRow {
    org_id: String,
    monthly_limit_micros: i64,
    thresholds_percent: Vec<i32>,
    hard_stop: bool,
    version: i64,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl BudgetRow {
    fn into_stored(self) -> Result<StoredBudget> {
        let thresholds = self
            .thresholds_percent
            .iter()
            .map(|&p| u32::try_from(p))
            .collect::<Result<Vec<u32>, _>>()
            .map_err(|_| BillingError::InvalidBudget {
                org: self.org_id.clone(),
                reason: "a stored threshold is negative".into(),
            })?;
        Ok(StoredBudget {
            budget: Budget::new(
                self.org_id,
                self.monthly_limit_micros,
                thresholds,
                self.hard_stop,
            )?,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
        })
    }
}

const BUDGET_COLUMNS: &str =
    "org_id, monthly_limit_micros, thresholds_percent, hard_stop, version, created_at, updated_at";

pub async fn budget(
    conn: &mut PgConnection,
    org: &str,
    for_update: bool,
) -> Result<Option<StoredBudget>> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    sqlx::query_as::<_, BudgetRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {BUDGET_COLUMNS} FROM budgets WHERE org_id = $1{lock}"
    )))
    .bind(org)
    .fetch_optional(conn)
    .await?
    .map(BudgetRow::into_stored)
    .transpose()
}

/// Every organisation's budget (the budget pass runs as the tables' owner).
pub async fn all_budgets(conn: &mut PgConnection) -> Result<Vec<StoredBudget>> {
    let rows = sqlx::query_as::<_, BudgetRow>(sqlx::AssertSqlSafe(format!(
        "SELECT {BUDGET_COLUMNS} FROM budgets ORDER BY org_id"
    )))
    .fetch_all(conn)
    .await?;
    rows.into_iter().map(BudgetRow::into_stored).collect()
}

/// Creates or replaces the budget; with `if_match`, only when the stored version is that one
/// (a budget that does not exist yet has no version to match).
pub async fn put_budget(
    conn: &mut PgConnection,
    budget: &Budget,
    if_match: Option<i64>,
) -> Result<StoredBudget> {
    budget.validate()?;
    let current = self::budget(conn, &budget.org, true).await?;
    if let Some(expected) = if_match {
        let current = current.as_ref().map_or(0, |c| c.version);
        if current != expected {
            return Err(StoreError::VersionMismatch { expected, current });
        }
    }
    let thresholds: Vec<i32> = budget
        .thresholds_percent
        .iter()
        .map(|&p| i32::try_from(p).unwrap_or(i32::MAX))
        .collect();
    let row = sqlx::query_as::<_, BudgetRow>(sqlx::AssertSqlSafe(format!(
        "INSERT INTO budgets (org_id, monthly_limit_micros, thresholds_percent, hard_stop)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (org_id) DO UPDATE SET monthly_limit_micros = EXCLUDED.monthly_limit_micros,
             thresholds_percent = EXCLUDED.thresholds_percent, hard_stop = EXCLUDED.hard_stop,
             version = budgets.version + 1, updated_at = now()
         RETURNING {BUDGET_COLUMNS}"
    )))
    .bind(&budget.org)
    .bind(budget.monthly_limit_micros)
    .bind(&thresholds)
    .bind(budget.hard_stop)
    .fetch_one(conn)
    .await?;
    row.into_stored()
}

/// Deletes the budget; false when there was none. With `if_match`, only that version.
pub async fn delete_budget(
    conn: &mut PgConnection,
    org: &str,
    if_match: Option<i64>,
) -> Result<bool> {
    let Some(current) = budget(conn, org, true).await? else {
        return Ok(false);
    };
    if let Some(expected) = if_match
        && expected != current.version
    {
        return Err(StoreError::VersionMismatch {
            expected,
            current: current.version,
        });
    }
    sqlx::query("DELETE FROM budgets WHERE org_id = $1")
        .bind(org)
        .execute(conn)
        .await?;
    Ok(true)
}

/// What a budget alert records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertKind {
    /// A threshold was reached.
    Threshold(u32),
    /// The hard stop fired (spend reached 100 % with `hard_stop` on).
    HardStop,
}

impl AlertKind {
    fn columns(self) -> (&'static str, i32) {
        match self {
            AlertKind::Threshold(p) => ("threshold", i32::try_from(p).unwrap_or(i32::MAX)),
            AlertKind::HardStop => ("hard_stop", 100),
        }
    }
}

/// Records an alert of `month`; true only the first time (one alert per kind and month,
/// whatever number of passes or replicas see it).
pub async fn record_alert(
    conn: &mut PgConnection,
    org: &str,
    month: &str,
    kind: AlertKind,
    spend_micros: i64,
    limit_micros: i64,
) -> Result<bool> {
    let (kind, threshold) = kind.columns();
    let inserted = sqlx::query(
        "INSERT INTO budget_alerts (org_id, month, kind, threshold_percent, spend_micros, limit_micros)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(org)
    .bind(month)
    .bind(kind)
    .bind(threshold)
    .bind(spend_micros)
    .bind(limit_micros)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// The thresholds alerted on in `month`, ascending.
pub async fn alerted_thresholds(
    conn: &mut PgConnection,
    org: &str,
    month: &str,
) -> Result<Vec<u32>> {
    let rows: Vec<i32> = sqlx::query_scalar(
        "SELECT threshold_percent FROM budget_alerts
         WHERE org_id = $1 AND month = $2 AND kind = 'threshold' ORDER BY threshold_percent",
    )
    .bind(org)
    .bind(month)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|p| u32::try_from(p).ok())
        .collect())
}

/// One run as the provisioner's evidence recorded it, with the ledger's view of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunEvidence {
    pub run_id: String,
    pub org: String,
    pub application: String,
    /// The size the run holds now according to the runs table.
    pub kpu_milli: i64,
    /// The exit or termination time the provisioner observed (None: still running).
    pub ended_at: Option<DateTime<Utc>>,
    pub end_reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct RunRow {
    id: String,
    org_id: String,
    application_id: String,
    kpu_milli: i64,
    ended_at: Option<DateTime<Utc>>,
    end_reason: Option<String>,
}

/// Runs that matter to a reconciliation: every run still open in either the runs table or
/// the ledger, and every run that ended at or after `since` (older evidence has been
/// reconciled before and is not re-read).
pub async fn runs_to_reconcile(
    conn: &mut PgConnection,
    since: DateTime<Utc>,
) -> Result<Vec<RunEvidence>> {
    let rows = sqlx::query_as::<_, RunRow>(
        "SELECT r.id, r.org_id, r.application_id, r.kpu_milli, r.ended_at, r.end_reason
         FROM runs r
         WHERE r.ended_at IS NULL OR r.ended_at >= $1
            OR EXISTS (SELECT 1 FROM usage_spans s WHERE s.run_id = r.id AND s.ended_at IS NULL)
         ORDER BY r.id",
    )
    .bind(since)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| RunEvidence {
            run_id: r.id,
            org: r.org_id,
            application: r.application_id,
            kpu_milli: r.kpu_milli,
            ended_at: r.ended_at,
            end_reason: r.end_reason,
        })
        .collect())
}

/// The spans of `runs` (every span, open or closed), for rebuilding their ledger.
pub async fn spans_of_runs(conn: &mut PgConnection, runs: &[String]) -> Result<Vec<Span>> {
    let rows = sqlx::query_as::<_, SpanTuple>(
        "SELECT run_id, org_id, pool_id, application_id, region, kpu_milli, started_at, ended_at
         FROM usage_spans WHERE run_id = ANY($1) ORDER BY run_id, started_at",
    )
    .bind(runs)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(span_from_tuple).collect())
}

/// The provisioner's evidence as [`crate::reconcile`] observations.
pub fn observations(runs: &[RunEvidence]) -> Vec<Observation> {
    runs.iter()
        .map(|r| Observation {
            run_id: r.run_id.clone(),
            observed: match r.ended_at {
                Some(exit_at) => Observed::Exited { exit_at },
                None => Observed::Running {
                    kpu_milli: r.kpu_milli,
                },
            },
        })
        .collect()
}

/// Closes the open span of `run_id` at the recorded exit time; false when it had none (a
/// concurrent closer won, which is the same outcome).
pub async fn close_open_span(
    conn: &mut PgConnection,
    run_id: &str,
    exit_at: DateTime<Utc>,
    closed_by: &str,
) -> Result<bool> {
    let done = sqlx::query(
        "UPDATE usage_spans SET ended_at = $2, closed_by = $3
         WHERE run_id = $1 AND ended_at IS NULL AND started_at <= $2",
    )
    .bind(run_id)
    .bind(exit_at)
    .bind(closed_by)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(done == 1)
}

//! Usage reports (`GET /v1/usage`, `/v1/usage.csv`) and usage events (`GET /v1/usage/events`)
//! from the span ledger, priced with the region's price book (DESIGN.md §7).
//!
//! The ledger is read under the caller's tenant connection (row-level security) and filtered on
//! the organization and, for a pool-scoped key, on its pool. Open spans are counted up to now
//! (and never past the query's `to`). The arithmetic is `sluice_billing`'s.

use chrono::{DateTime, Utc};
use sluice_api_types::{
    UsageEventParams, UsageGroup, UsageParams, UsagePoint, UsageReport, UsageTotal,
};
use sluice_billing::rollup::UsageSeries;
use sluice_billing::{BillingError, Granularity, GroupBy, UsageQuery, rollup_with_cost};

use super::{Ctx, Service, ServiceError, policy};

/// Longest range of one `GET /v1/usage/events` call: a day of minutes per run keeps a response
/// to a few MB; `sluice billing export` walks longer ranges day by day.
pub const MAX_EVENTS_RANGE_S: i64 = 86_400;

/// A billing rule broken by the caller's input becomes a 422 naming the parameter
/// (`query.<name>`, or the body field); a missing price is the operator's to fix and says
/// which region; anything else is an internal error.
pub fn billing_error(e: BillingError, location: &str) -> ServiceError {
    match e {
        BillingError::InvalidParameter { parameter, reason } => {
            let field = if location.is_empty() {
                parameter.to_owned()
            } else {
                format!("{location}.{parameter}")
            };
            ServiceError::invalid(&field, "invalid_value", reason)
        }
        BillingError::NoPrice { .. } | BillingError::InvalidPriceBook { .. } => {
            ServiceError::Conflict {
                code: "price_book_missing",
                detail: format!(
                    "usage cannot be priced: {e}; the platform operator must add a price book version"
                ),
            }
        }
        BillingError::InvalidBudget { reason, .. } => {
            ServiceError::invalid("thresholds_percent", "invalid_value", reason)
        }
        e @ (BillingError::InvalidLedger { .. }
        | BillingError::Encode { .. }
        | BillingError::Overflow { .. }) => ServiceError::Internal(anyhow::Error::new(e)),
    }
}

impl From<sluice_billing::store::StoreError> for ServiceError {
    fn from(e: sluice_billing::store::StoreError) -> Self {
        use sluice_billing::store::StoreError as E;
        match e {
            E::Db(e) => e.into(),
            E::Invalid(e) => billing_error(e, ""),
            E::VersionMismatch { expected, current } => {
                ServiceError::PreconditionFailed { expected, current }
            }
        }
    }
}

fn required(value: Option<DateTime<Utc>>, name: &str) -> Result<DateTime<Utc>, ServiceError> {
    value.ok_or_else(|| {
        ServiceError::invalid(
            &format!("query.{name}"),
            "required",
            format!("{name} is required (RFC 3339, e.g. 2026-10-01T00:00:00Z)"),
        )
    })
}

/// What `GET /v1/usage` answers with.
pub enum UsageBody {
    Json(Box<UsageReport>),
    Csv(String),
}

/// `format=json|csv` wins over `Accept`.
pub fn wants_csv(format: Option<&str>, accept: Option<&str>) -> Result<bool, ServiceError> {
    match format {
        Some("json") => Ok(false),
        Some("csv") => Ok(true),
        Some(other) => Err(ServiceError::invalid(
            "query.format",
            "invalid_value",
            format!("expected json or csv, got {other:?}"),
        )),
        None => Ok(accept.is_some_and(|a| a.contains("text/csv"))),
    }
}

pub async fn usage(
    svc: &Service,
    ctx: &Ctx,
    p: &UsageParams,
    csv: bool,
) -> Result<UsageBody, ServiceError> {
    ctx.require(policy::READ_BILLING, "read usage")?;
    let from = required(p.from, "from")?;
    let to = required(p.to, "to")?;
    let query = UsageQuery::parse(
        from,
        to,
        p.granularity.as_deref().unwrap_or("hour"),
        p.group_by.as_deref(),
    )
    .map_err(|e| billing_error(e, "query"))?;
    let mut conn = ctx.read(svc).await?;
    let catalog = sluice_billing::store::catalog(&mut conn).await?;
    let spans = sluice_billing::store::spans(
        &mut conn,
        ctx.org_id.as_str(),
        from,
        to,
        ctx.pool_scope.as_ref().map(|p| p.as_str()),
    )
    .await?;
    drop(conn);
    let as_of = Utc::now();
    let series = query
        .run_with_cost(&spans, as_of, &catalog)
        .map_err(|e| billing_error(e, "query"))?;
    if csv {
        return Ok(UsageBody::Csv(series.to_csv()));
    }
    let totals = |group_by: GroupBy| -> Result<Vec<UsageTotal>, ServiceError> {
        // Day buckets: the cheapest roll-up; only the group totals are kept.
        let s = rollup_with_cost(
            &spans,
            from,
            to,
            Granularity::Day,
            Some(group_by),
            as_of,
            &catalog,
        )
        .map_err(|e| billing_error(e, "query"))?;
        Ok(s.groups
            .into_iter()
            .map(|g| UsageTotal {
                key: g.key,
                milli_kpu_seconds: g.total_milli_kpu_seconds,
                cost_micros: g.total_cost_micros.unwrap_or(0),
            })
            .collect())
    };
    let by_pool = totals(GroupBy::Pool)?;
    let by_application = totals(GroupBy::Application)?;
    Ok(UsageBody::Json(Box::new(report(
        series,
        catalog.currency(),
        as_of,
        by_pool,
        by_application,
    ))))
}

fn report(
    s: UsageSeries,
    currency: &str,
    as_of: DateTime<Utc>,
    by_pool: Vec<UsageTotal>,
    by_application: Vec<UsageTotal>,
) -> UsageReport {
    UsageReport {
        from: s.from,
        to: s.to,
        granularity: s.granularity.as_str().to_owned(),
        group_by: s.group_by.map(|g| g.as_str().to_owned()),
        currency: currency.to_owned(),
        as_of: DateTime::from_timestamp(as_of.timestamp(), 0).unwrap_or(as_of),
        total_milli_kpu_seconds: s.total_milli_kpu_seconds,
        total_cost_micros: s.total_cost_micros.unwrap_or(0),
        series: s
            .groups
            .into_iter()
            .map(|g| UsageGroup {
                key: g.key,
                total_milli_kpu_seconds: g.total_milli_kpu_seconds,
                total_cost_micros: g.total_cost_micros.unwrap_or(0),
                points: g
                    .points
                    .into_iter()
                    .map(|p| UsagePoint {
                        bucket_start: p.bucket_start,
                        milli_kpu_seconds: p.milli_kpu_seconds,
                        cost_micros: p.cost_micros.unwrap_or(0),
                    })
                    .collect(),
            })
            .collect(),
        by_pool,
        by_application,
    }
}

/// The CloudEvents of every run's whole minutes in `[from, to)`, in the order of
/// `sluice_billing::usage_events` (minute, application, run).
pub async fn events(
    svc: &Service,
    ctx: &Ctx,
    p: &UsageEventParams,
) -> Result<Vec<sluice_billing::UsageEvent>, ServiceError> {
    ctx.require(policy::READ_BILLING, "read usage")?;
    let from = required(p.from, "from")?;
    let to = required(p.to, "to")?;
    if to.timestamp() - from.timestamp() > MAX_EVENTS_RANGE_S {
        return Err(ServiceError::invalid(
            "query.to",
            "out_of_range",
            format!(
                "at most {MAX_EVENTS_RANGE_S} s of events per request; ask for the next day in another request"
            ),
        ));
    }
    let as_of = Utc::now();
    // Validates alignment, order and `to` not in the future before touching the database.
    sluice_billing::usage_events(&[], from, to, as_of).map_err(|e| billing_error(e, "query"))?;
    let mut conn = ctx.read(svc).await?;
    let spans = sluice_billing::store::spans(
        &mut conn,
        ctx.org_id.as_str(),
        from,
        to,
        ctx.pool_scope.as_ref().map(|p| p.as_str()),
    )
    .await?;
    drop(conn);
    sluice_billing::usage_events(&spans, from, to, as_of).map_err(|e| billing_error(e, "query"))
}

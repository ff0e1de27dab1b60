//! Monthly invoices (`GET /v1/invoices`, `GET /v1/invoices/{month}`), rated from the span
//! ledger on every request with `sluice_billing::build_invoice`.
//!
//! Nothing is stored: a final invoice is a pure function of the ledger and the price books,
//! and neither may change it (spans of a past month are closed from evidence; a price version
//! may not take effect before the current month, see `price_book`), so every regeneration
//! gives the same bytes. A draft (the current month) is rated up to the request's second.
//!
//! Savepoint storage is billed from each savepoint's completion until its files are disposed
//! of, at its size, in its application's region (`sluice_billing::store::savepoint_storage`).

use chrono::{DateTime, Utc};
use sluice_api_types::{InvoiceList, InvoiceSummary, PageParams};
use sluice_billing::{Invoice, Month, build_invoice};

use super::usage::billing_error;
use super::{Ctx, Service, ServiceError, next_token, page, policy};

/// The invoice document formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Html,
}

impl Format {
    /// `?format=` wins; else the first of CSV or HTML the `Accept` header names; else JSON.
    pub fn negotiate(format: Option<&str>, accept: Option<&str>) -> Result<Format, ServiceError> {
        match format {
            Some("json") => Ok(Format::Json),
            Some("csv") => Ok(Format::Csv),
            Some("html") => Ok(Format::Html),
            Some(other) => Err(ServiceError::invalid(
                "query.format",
                "invalid_value",
                format!("expected json, csv or html, got {other:?}"),
            )),
            None => {
                let accept = accept.unwrap_or("");
                let csv = accept.find("text/csv");
                let html = accept.find("text/html");
                Ok(match (csv, html) {
                    (Some(c), Some(h)) if h < c => Format::Html,
                    (Some(_), _) => Format::Csv,
                    (None, Some(_)) => Format::Html,
                    (None, None) => Format::Json,
                })
            }
        }
    }
}

/// A rendered invoice.
pub struct Document {
    pub content_type: &'static str,
    pub filename: Option<String>,
    pub body: String,
}

fn parse_month(text: &str) -> Result<Month, ServiceError> {
    Month::parse(text).map_err(|e| billing_error(e, "path"))
}

/// Rates `ctx`'s organization (its pool, for a pool-scoped key) for `month` as of `as_of`.
async fn rate(
    svc: &Service,
    ctx: &Ctx,
    month: Month,
    as_of: DateTime<Utc>,
) -> Result<Invoice, ServiceError> {
    let mut conn = ctx.read(svc).await?;
    let catalog = sluice_billing::store::catalog(&mut conn).await?;
    let spans = sluice_billing::store::spans(
        &mut conn,
        ctx.org_id.as_str(),
        month.start(),
        month.end(),
        ctx.pool_scope.as_ref().map(|p| p.as_str()),
    )
    .await?;
    let storage = sluice_billing::store::savepoint_storage(
        &mut conn,
        ctx.org_id.as_str(),
        month.start(),
        month.end(),
        ctx.pool_scope.as_ref().map(|p| p.as_str()),
    )
    .await?;
    drop(conn);
    build_invoice(
        ctx.org_id.as_str(),
        month,
        &spans,
        &storage,
        &catalog,
        as_of,
    )
    .map_err(|e| billing_error(e, ""))
}

pub async fn get(
    svc: &Service,
    ctx: &Ctx,
    month: &str,
    format: Format,
) -> Result<Document, ServiceError> {
    ctx.require(policy::READ_BILLING, "read invoices")?;
    let month = parse_month(month)?;
    let now = Utc::now();
    if month.start() > now {
        return Err(ServiceError::not_found("invoice", month));
    }
    let invoice = rate(svc, ctx, month, now).await?;
    render(&invoice, format)
}

/// The bytes of `invoice` in `format` (also what `sluice billing rate` prints).
pub fn render(invoice: &Invoice, format: Format) -> Result<Document, ServiceError> {
    let name = format!("invoice-{}-{}", invoice.org, invoice.month);
    Ok(match format {
        Format::Json => Document {
            content_type: "application/json",
            filename: None,
            body: invoice.to_json().map_err(|e| billing_error(e, ""))?,
        },
        Format::Csv => Document {
            content_type: "text/csv; charset=utf-8",
            filename: Some(format!("{name}.csv")),
            body: invoice.to_csv(),
        },
        Format::Html => Document {
            content_type: "text/html; charset=utf-8",
            filename: None,
            body: invoice.to_html(),
        },
    })
}

/// Months from the current one back to the organization's first usage, newest first.
pub async fn list(svc: &Service, ctx: &Ctx, p: &PageParams) -> Result<InvoiceList, ServiceError> {
    ctx.require(policy::READ_BILLING, "read invoices")?;
    let page = page(p.page_size, p.page_token.as_deref())?;
    let now = Utc::now();
    let current = Month::containing(now).map_err(|e| billing_error(e, ""))?;
    let newest = match page.after.as_deref() {
        None => current,
        Some(token) => previous(parse_month(token).map_err(|_| {
            ServiceError::invalid(
                "query.page_token",
                "invalid_page_token",
                "page_token is not a token this API returned",
            )
        })?)?,
    };
    let mut conn = ctx.read(svc).await?;
    let first = sluice_billing::store::first_usage_at(&mut conn, ctx.org_id.as_str())
        .await?
        .map(Month::containing)
        .transpose()
        .map_err(|e| billing_error(e, ""))?
        .unwrap_or(current)
        .min(current);
    let mut months = Vec::new();
    let mut m = newest;
    while m >= first && (months.len() as i64) < page.limit + 1 {
        months.push(m);
        if m == first {
            break;
        }
        m = previous(m)?;
    }
    let more = months.len() as i64 > page.limit;
    months.truncate(page.limit.max(0) as usize);
    let (Some(&oldest), Some(&latest)) = (months.last(), months.first()) else {
        return Ok(InvoiceList {
            items: Vec::new(),
            next_page_token: None,
        });
    };
    // One read of the ledger for the whole page; build_invoice clips each month itself.
    let catalog = sluice_billing::store::catalog(&mut conn).await?;
    let spans = sluice_billing::store::spans(
        &mut conn,
        ctx.org_id.as_str(),
        oldest.start(),
        latest.end(),
        ctx.pool_scope.as_ref().map(|p| p.as_str()),
    )
    .await?;
    let storage = sluice_billing::store::savepoint_storage(
        &mut conn,
        ctx.org_id.as_str(),
        oldest.start(),
        latest.end(),
        ctx.pool_scope.as_ref().map(|p| p.as_str()),
    )
    .await?;
    drop(conn);
    let mut items = Vec::with_capacity(months.len());
    for month in months {
        let inv = build_invoice(ctx.org_id.as_str(), month, &spans, &storage, &catalog, now)
            .map_err(|e| billing_error(e, ""))?;
        items.push(InvoiceSummary {
            month: inv.month.to_string(),
            status: inv.status.as_str().to_owned(),
            currency: inv.currency,
            period_start: inv.period_start,
            period_end: inv.period_end,
            rated_through: inv.rated_through,
            total_micros: inv.total_micros,
            total: inv.total,
        });
    }
    let last = items.last().map(|i| i.month.clone());
    Ok(InvoiceList {
        items,
        next_page_token: next_token(more, last.as_deref()),
    })
}

fn previous(m: Month) -> Result<Month, ServiceError> {
    let (y, mo) = if m.month() == 1 {
        (m.year() - 1, 12)
    } else {
        (m.year(), m.month() - 1)
    };
    Month::new(y, mo).map_err(|e| billing_error(e, ""))
}

//! Monthly invoices per organisation: rating of the ledger against the price books.
//!
//! One line per (kind, region, pool, application, price version): a span or storage record that
//! crosses a price change contributes to two lines, one per version, so every line is exactly
//! `quantity × unit price` and is rounded once ([`crate::price`]). An invoice is a draft while
//! `as_of` is inside its month (open spans billed up to `as_of`) and final from the month's end
//! (open spans billed up to the end of the month). Everything is ordered by keys, and a final
//! invoice carries no trace of when it was generated, so regenerating it gives the same bytes.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};
use crate::ledger::{Span, validate_span_refs};
use crate::price::{
    BYTES_PER_GIB, MILLI_KPU_SECONDS_PER_KPU_HOUR, PriceCatalog, format_micros, round_half_up_div,
};
use crate::time::{Month, at_secs, rfc3339, secs};

/// Savepoint bytes an application kept in storage during `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavepointStorage {
    pub org: String,
    pub pool: String,
    pub application: String,
    pub region: String,
    pub bytes: i64,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LineKind {
    /// Quantity in milli-KPU-seconds, priced per KPU-hour.
    Compute,
    /// Quantity in byte-seconds, priced per GiB-month (a GiB held for the whole invoice month).
    SavepointStorage,
}

impl LineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Compute => "compute",
            LineKind::SavepointStorage => "savepoint_storage",
        }
    }

    pub fn quantity_unit(self) -> &'static str {
        match self {
            LineKind::Compute => "milli_kpu_second",
            LineKind::SavepointStorage => "byte_second",
        }
    }

    pub fn price_unit(self) -> &'static str {
        match self {
            LineKind::Compute => "kpu_hour",
            LineKind::SavepointStorage => "gib_month",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InvoiceStatus {
    Draft,
    Final,
}

impl InvoiceStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            InvoiceStatus::Draft => "draft",
            InvoiceStatus::Final => "final",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub kind: LineKind,
    pub region: String,
    pub pool: String,
    pub application: String,
    /// The price book version that priced this line.
    pub price_effective_from: DateTime<Utc>,
    /// Exact quantity in `quantity_unit`.
    pub quantity: i128,
    pub quantity_unit: String,
    /// Price of one `price_unit`, in micro-units.
    pub unit_price_micros: i64,
    pub price_unit: String,
    /// `quantity × unit_price_micros / (size of price_unit in quantity_unit)`, rounded half up.
    pub amount_micros: i64,
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subtotal {
    pub key: String,
    pub amount_micros: i64,
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub org: String,
    pub month: Month,
    pub status: InvoiceStatus,
    pub currency: String,
    pub period_start: DateTime<Utc>,
    pub period_end: DateTime<Utc>,
    /// Usage is rated up to here: `as_of` for a draft, `period_end` for a final invoice.
    pub rated_through: DateTime<Utc>,
    /// Sorted by kind, region, pool, application, price version.
    pub lines: Vec<InvoiceLine>,
    pub subtotals_by_pool: Vec<Subtotal>,
    pub subtotals_by_region: Vec<Subtotal>,
    /// Sum of the rounded line amounts.
    pub total_micros: i64,
    pub total: String,
}

type LineKey<'a> = (LineKind, &'a str, &'a str, &'a str, usize);

/// Rates `org`'s usage in `month` as seen at `as_of`. `spans` and `storage` may hold other
/// organisations' records; only `org`'s are used.
pub fn build_invoice(
    org: &str,
    month: Month,
    spans: &[Span],
    storage: &[SavepointStorage],
    catalog: &PriceCatalog,
    as_of: DateTime<Utc>,
) -> Result<Invoice> {
    let (period_start, period_end) = (month.start(), month.end());
    if as_of < period_start {
        return Err(BillingError::param(
            "as_of",
            format!(
                "{} precedes the start of month {month} ({})",
                rfc3339(as_of),
                rfc3339(period_start)
            ),
        ));
    }
    let status = if as_of >= period_end {
        InvoiceStatus::Final
    } else {
        InvoiceStatus::Draft
    };
    let rated_through = match status {
        InvoiceStatus::Final => period_end,
        // Whole seconds only, so that the document shows exactly the instant that was rated.
        InvoiceStatus::Draft => at_secs(secs(as_of))?,
    };
    let (from_s, to_s) = (secs(period_start), secs(rated_through));

    let org_spans: Vec<&Span> = spans.iter().filter(|s| s.org == org).collect();
    validate_span_refs(org_spans.iter().copied())?;

    let mut quantities: BTreeMap<LineKey<'_>, i128> = BTreeMap::new();
    for span in org_spans {
        let (start, end) = span.billed_secs(to_s);
        let book = catalog.book(&span.region)?;
        book.for_each_stretch(start.max(from_s), end.min(to_s), |stretch| {
            let key = (
                LineKind::Compute,
                span.region.as_str(),
                span.pool.as_str(),
                span.application.as_str(),
                stretch.version_index,
            );
            *quantities.entry(key).or_default() +=
                i128::from(span.kpu_milli) * i128::from(stretch.to_s - stretch.from_s);
            Ok(())
        })?;
    }
    for (index, record) in storage.iter().enumerate().filter(|(_, r)| r.org == org) {
        if record.bytes < 0 || record.to < record.from {
            return Err(BillingError::param(
                "storage",
                format!(
                    "record {index} for application `{}`: bytes must be >= 0 and `to` not before `from`",
                    record.application
                ),
            ));
        }
        let book = catalog.book(&record.region)?;
        let (start, end) = (secs(record.from).max(from_s), secs(record.to).min(to_s));
        for stretch in book.stretches(start, end)? {
            let key = (
                LineKind::SavepointStorage,
                record.region.as_str(),
                record.pool.as_str(),
                record.application.as_str(),
                stretch.version_index,
            );
            *quantities.entry(key).or_default() +=
                i128::from(record.bytes) * i128::from(stretch.to_s - stretch.from_s);
        }
    }

    let month_byte_seconds = BYTES_PER_GIB * i128::from(month.seconds());
    let mut lines = Vec::with_capacity(quantities.len());
    let mut by_pool: BTreeMap<&str, i64> = BTreeMap::new();
    let mut by_region: BTreeMap<&str, i64> = BTreeMap::new();
    let mut total: i64 = 0;
    for ((kind, region, pool, application, version_index), quantity) in quantities {
        if quantity == 0 {
            continue;
        }
        let version = &catalog.book(region)?.versions[version_index];
        let (unit_price, divisor) = match kind {
            LineKind::Compute => (version.kpu_hour_micros, MILLI_KPU_SECONDS_PER_KPU_HOUR),
            LineKind::SavepointStorage => (version.savepoint_gib_month_micros, month_byte_seconds),
        };
        let numerator =
            quantity
                .checked_mul(i128::from(unit_price))
                .ok_or(BillingError::Overflow {
                    what: "invoice line amount",
                })?;
        let amount = i64::try_from(round_half_up_div(numerator, divisor)).map_err(|_| {
            BillingError::Overflow {
                what: "invoice line amount",
            }
        })?;
        let overflow = BillingError::Overflow {
            what: "invoice total",
        };
        total = total.checked_add(amount).ok_or(overflow.clone())?;
        let pool_sum = by_pool.entry(pool).or_default();
        *pool_sum = pool_sum.checked_add(amount).ok_or(overflow.clone())?;
        let region_sum = by_region.entry(region).or_default();
        *region_sum = region_sum.checked_add(amount).ok_or(overflow)?;
        lines.push(InvoiceLine {
            kind,
            region: region.to_owned(),
            pool: pool.to_owned(),
            application: application.to_owned(),
            price_effective_from: version.effective_from,
            quantity,
            quantity_unit: kind.quantity_unit().to_owned(),
            unit_price_micros: unit_price,
            price_unit: kind.price_unit().to_owned(),
            amount_micros: amount,
            amount: format_micros(amount),
        });
    }

    Ok(Invoice {
        org: org.to_owned(),
        month,
        status,
        currency: catalog.currency().to_owned(),
        period_start,
        period_end,
        rated_through,
        lines,
        subtotals_by_pool: subtotals(by_pool),
        subtotals_by_region: subtotals(by_region),
        total_micros: total,
        total: format_micros(total),
    })
}

fn subtotals(sums: BTreeMap<&str, i64>) -> Vec<Subtotal> {
    sums.into_iter()
        .map(|(key, amount_micros)| Subtotal {
            key: key.to_owned(),
            amount_micros,
            amount: format_micros(amount_micros),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Ledger, RunRef};
    use crate::price::{PriceBook, PriceVersion};

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn catalog() -> PriceCatalog {
        let book = PriceBook::new(
            "eu-1",
            "EUR",
            vec![
                PriceVersion {
                    effective_from: t("2026-01-01T00:00:00Z"),
                    kpu_hour_micros: 110_000,
                    orchestration_share_milli: 250,
                    savepoint_gib_month_micros: 23_000,
                },
                PriceVersion {
                    effective_from: t("2026-10-16T00:00:00Z"),
                    kpu_hour_micros: 100_000,
                    orchestration_share_milli: 250,
                    savepoint_gib_month_micros: 23_000,
                },
            ],
        )
        .unwrap();
        PriceCatalog::new(vec![book]).unwrap()
    }

    fn ledger() -> Ledger {
        let run = RunRef {
            run_id: "run_1".into(),
            org: "org_a".into(),
            pool: "pool_a".into(),
            application: "app_a".into(),
            region: "eu-1".into(),
        };
        let mut ledger = Ledger::new();
        ledger
            .open_run(&run, 1250, t("2026-10-15T23:00:00Z"))
            .unwrap();
        ledger
    }

    #[test]
    fn a_span_across_a_price_change_gives_one_line_per_version() {
        let month = Month::parse("2026-10").unwrap();
        let as_of = t("2026-10-16T01:00:00Z");
        let invoice =
            build_invoice("org_a", month, ledger().spans(), &[], &catalog(), as_of).unwrap();
        assert_eq!(invoice.status, InvoiceStatus::Draft);
        assert_eq!(invoice.lines.len(), 2);
        // 1.25 KPU × 1 h at 0.11 = 0.1375, then at 0.10 = 0.125.
        assert_eq!(invoice.lines[0].amount_micros, 137_500);
        assert_eq!(invoice.lines[1].amount_micros, 125_000);
        assert_eq!(invoice.total_micros, 262_500);
        assert_eq!(invoice.subtotals_by_pool[0].amount, "0.262500");
    }

    #[test]
    fn final_invoice_bills_open_spans_to_month_end_and_ignores_other_orgs() {
        let month = Month::parse("2026-10").unwrap();
        let mut spans = ledger().into_spans();
        let mut foreign = spans[0].clone();
        foreign.org = "org_b".into();
        foreign.run_id = "run_b".into();
        spans.push(foreign);
        let later = t("2026-12-01T00:00:00Z");
        let a = build_invoice("org_a", month, &spans, &[], &catalog(), later).unwrap();
        let b = build_invoice(
            "org_a",
            month,
            &spans,
            &[],
            &catalog(),
            t("2026-11-05T00:00:00Z"),
        )
        .unwrap();
        assert_eq!(
            a, b,
            "a final invoice does not depend on when it is generated"
        );
        assert_eq!(a.status, InvoiceStatus::Final);
        // 1 h at 0.11 plus 16 days (384 h) at 0.10, each × 1.25 KPU.
        assert_eq!(a.total_micros, 137_500 + 384 * 125_000);
    }

    #[test]
    fn as_of_before_the_month_and_bad_storage_are_named() {
        let month = Month::parse("2026-10").unwrap();
        let err = build_invoice(
            "org_a",
            month,
            &[],
            &[],
            &catalog(),
            t("2026-09-30T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(err.parameter(), Some("as_of"));
        let bad = SavepointStorage {
            org: "org_a".into(),
            pool: "pool_a".into(),
            application: "app_a".into(),
            region: "eu-1".into(),
            bytes: -1,
            from: t("2026-10-01T00:00:00Z"),
            to: t("2026-10-02T00:00:00Z"),
        };
        let err = build_invoice(
            "org_a",
            month,
            &[],
            &[bad],
            &catalog(),
            t("2026-10-05T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(err.parameter(), Some("storage"));
    }
}

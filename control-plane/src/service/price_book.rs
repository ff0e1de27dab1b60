//! Price books, the platform operator's (`/admin/v1/price-books`, `sluice billing price-book`).
//!
//! One book per region, versioned by effective date, every region in one currency. A new
//! version may not take effect before the start of the current UTC month: past months'
//! invoices are final and must regenerate to the same bytes, and the current month's draft
//! is allowed to change. Writers serialise on an advisory lock, so the catalog is checked
//! whole (currency, order, ranges) against exactly what it will contain.

use chrono::{DateTime, Datelike, TimeZone, Utc};
use sluice_api_types::{CreatePriceVersion, PriceBook, PriceBookList, PriceVersion};
use sluice_billing::store::StoredPrice;

use super::ServiceError;
use super::usage::billing_error;
use crate::store;

/// Longest region name a price book accepts (the column's check).
const MAX_REGION_LEN: usize = 100;

fn group(prices: Vec<StoredPrice>) -> Vec<PriceBook> {
    let mut books: Vec<PriceBook> = Vec::new();
    for p in prices {
        let version = PriceVersion {
            effective_from: p.version.effective_from,
            kpu_hour_micros: p.version.kpu_hour_micros,
            orchestration_share_milli: p.version.orchestration_share_milli,
            savepoint_gib_month_micros: p.version.savepoint_gib_month_micros,
            created_at: p.created_at,
        };
        match books.last_mut() {
            Some(b) if b.region == p.region => b.versions.push(version),
            _ => books.push(PriceBook {
                region: p.region,
                currency: p.currency,
                versions: vec![version],
            }),
        }
    }
    books
}

pub async fn list(db: &sqlx::PgPool) -> Result<PriceBookList, ServiceError> {
    let mut conn = db.acquire().await?;
    let prices = sluice_billing::store::prices(&mut conn).await?;
    Ok(PriceBookList {
        items: group(prices),
    })
}

pub async fn get(db: &sqlx::PgPool, region: &str) -> Result<PriceBook, ServiceError> {
    list(db)
        .await?
        .items
        .into_iter()
        .find(|b| b.region == region)
        .ok_or_else(|| ServiceError::not_found("price book", region))
}

/// First instant of the month containing `now`: the earliest a new price may take effect.
pub fn earliest_effective(now: DateTime<Utc>) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

/// Adds a version to `region`'s book (creating the book); `actor` is recorded with it.
pub async fn add_version(
    db: &sqlx::PgPool,
    regions: &[String],
    region: &str,
    req: &CreatePriceVersion,
    actor: &str,
) -> Result<PriceBook, ServiceError> {
    if region.is_empty()
        || region.len() > MAX_REGION_LEN
        || !region
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ServiceError::invalid(
            "path.region",
            "invalid_value",
            format!("a region is 1..={MAX_REGION_LEN} letters, digits, '-' or '_'"),
        ));
    }
    if !regions.iter().any(|r| r == region) {
        return Err(ServiceError::invalid(
            "path.region",
            "unknown_region",
            format!(
                "region {region} is not one of this server's regions ({})",
                regions.join(", ")
            ),
        ));
    }
    let version = sluice_billing::PriceVersion {
        effective_from: req.effective_from,
        kpu_hour_micros: req.kpu_hour_micros,
        orchestration_share_milli: req.orchestration_share_milli,
        savepoint_gib_month_micros: req.savepoint_gib_month_micros,
    };
    let mut tx = store::system_tx(db).await?;
    sluice_billing::store::lock_price_books(&mut tx).await?;
    sluice_billing::store::insert_price(
        &mut tx,
        region,
        &req.currency,
        &version,
        earliest_effective(Utc::now()),
        actor,
    )
    .await
    .map_err(|e| match e {
        sluice_billing::store::StoreError::Invalid(
            sluice_billing::BillingError::InvalidPriceBook { reason, .. },
        ) => ServiceError::invalid("", "invalid_price_book", reason),
        sluice_billing::store::StoreError::Invalid(e) => billing_error(e, ""),
        e => e.into(),
    })?;
    tx.commit().await?;
    get(db, region).await
}

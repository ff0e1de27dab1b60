//! Price books: per region, versioned by effective date, in integer micro-units of one currency.
//!
//! Rounding rule (the only one in billing): an invoice line's amount is its exact quantity times
//! its unit price, divided by the unit's size and rounded **half up** to a whole micro-unit, once
//! per line ([`round_half_up_div`]). Amounts are never negative, so half up is also half away
//! from zero. Totals are sums of rounded lines, never re-rounded.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};
use crate::kpu::{DEFAULT_ORCHESTRATION_SHARE_MILLI, MAX_ORCHESTRATION_SHARE_MILLI};
use crate::time::{at_secs, rfc3339, secs};

/// Ceiling on any unit price (one million currency units per KPU-hour or GiB-month): far above
/// any real price, low enough that `quantity × price` of a month stays far inside `i128`.
pub const MAX_UNIT_PRICE_MICROS: i64 = 1_000_000_000_000;

/// Milli-KPU-seconds in one KPU-hour: the divisor that turns usage × price into micro-units.
pub const MILLI_KPU_SECONDS_PER_KPU_HOUR: i128 = 1000 * 3600;

/// Bytes in one GiB.
pub const BYTES_PER_GIB: i128 = 1 << 30;

/// The prices in force from `effective_from` until the next version of the same book.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    pub effective_from: DateTime<Utc>,
    /// Price of one KPU held for one hour, in micro-units.
    pub kpu_hour_micros: i64,
    /// JobManager share that provisioning adds to every application, in milli-KPU.
    #[serde(default = "default_share")]
    pub orchestration_share_milli: i64,
    /// Price of one GiB of savepoint storage held for one whole invoice month, in micro-units.
    pub savepoint_gib_month_micros: i64,
}

fn default_share() -> i64 {
    DEFAULT_ORCHESTRATION_SHARE_MILLI
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceBook {
    pub region: String,
    /// ISO 4217 code, for example `USD`.
    pub currency: String,
    /// Sorted by `effective_from`, strictly increasing, each on a whole second.
    pub versions: Vec<PriceVersion>,
}

/// A stretch `[from_s, to_s)` of seconds priced by one version of a book.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PricedStretch<'a> {
    pub from_s: i64,
    pub to_s: i64,
    pub version_index: usize,
    pub version: &'a PriceVersion,
}

impl PriceBook {
    pub fn new(
        region: impl Into<String>,
        currency: impl Into<String>,
        versions: Vec<PriceVersion>,
    ) -> Result<Self> {
        let book = PriceBook {
            region: region.into(),
            currency: currency.into(),
            versions,
        };
        book.validate()?;
        Ok(book)
    }

    /// Checks a book built by hand or deserialised.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| BillingError::InvalidPriceBook {
            region: self.region.clone(),
            reason,
        };
        if self.region.is_empty() {
            return Err(bad("region must not be empty".into()));
        }
        if self.currency.len() != 3 || !self.currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(bad(format!(
                "currency must be a 3-letter ISO 4217 code, got {:?}",
                self.currency
            )));
        }
        if self.versions.is_empty() {
            return Err(bad("a price book needs at least one version".into()));
        }
        for (index, version) in self.versions.iter().enumerate() {
            let at = rfc3339(version.effective_from);
            if version.effective_from.timestamp_subsec_nanos() != 0 {
                return Err(bad(format!(
                    "version {index} ({at}) must start on a whole second"
                )));
            }
            for (name, price) in [
                ("kpu_hour_micros", version.kpu_hour_micros),
                (
                    "savepoint_gib_month_micros",
                    version.savepoint_gib_month_micros,
                ),
            ] {
                if !(0..=MAX_UNIT_PRICE_MICROS).contains(&price) {
                    return Err(bad(format!(
                        "version {index} ({at}): {name} must be in 0..={MAX_UNIT_PRICE_MICROS}, got {price}"
                    )));
                }
            }
            if !(0..=MAX_ORCHESTRATION_SHARE_MILLI).contains(&version.orchestration_share_milli) {
                return Err(bad(format!(
                    "version {index} ({at}): orchestration_share_milli must be in 0..={MAX_ORCHESTRATION_SHARE_MILLI}, got {}",
                    version.orchestration_share_milli
                )));
            }
            if index > 0 && self.versions[index - 1].effective_from >= version.effective_from {
                return Err(bad(format!(
                    "version {index} ({at}) must take effect after version {} ({})",
                    index - 1,
                    rfc3339(self.versions[index - 1].effective_from)
                )));
            }
        }
        Ok(())
    }

    /// The version in force at `at`.
    pub fn version_at(&self, at: DateTime<Utc>) -> Result<&PriceVersion> {
        let at_s = secs(at);
        let index = self.index_at(at_s).ok_or_else(|| BillingError::NoPrice {
            region: self.region.clone(),
            at,
        })?;
        Ok(&self.versions[index])
    }

    /// The orchestration share provisioning must add at `at`.
    pub fn orchestration_share_milli_at(&self, at: DateTime<Utc>) -> Result<i64> {
        Ok(self.version_at(at)?.orchestration_share_milli)
    }

    fn index_at(&self, at_s: i64) -> Option<usize> {
        let after = self
            .versions
            .partition_point(|v| secs(v.effective_from) <= at_s);
        after.checked_sub(1)
    }

    /// Splits `[from_s, to_s)` at every price change inside it, so that no stretch is priced by
    /// two versions. Seconds before the first version have no price and are an error.
    pub fn stretches(&self, from_s: i64, to_s: i64) -> Result<Vec<PricedStretch<'_>>> {
        let mut out = Vec::new();
        self.for_each_stretch(from_s, to_s, |stretch| {
            out.push(stretch);
            Ok(())
        })?;
        Ok(out)
    }

    /// [`PriceBook::stretches`] without the allocation, for the hot loops of rating and
    /// roll-ups; stops at the first error `f` returns.
    pub fn for_each_stretch<'a>(
        &'a self,
        from_s: i64,
        to_s: i64,
        mut f: impl FnMut(PricedStretch<'a>) -> Result<()>,
    ) -> Result<()> {
        if from_s >= to_s {
            return Ok(());
        }
        let Some(mut index) = self.index_at(from_s) else {
            return Err(BillingError::NoPrice {
                region: self.region.clone(),
                at: at_secs(from_s)?,
            });
        };
        let mut cursor = from_s;
        while cursor < to_s {
            let next_change = self
                .versions
                .get(index + 1)
                .map_or(i64::MAX, |v| secs(v.effective_from));
            let end = next_change.min(to_s);
            f(PricedStretch {
                from_s: cursor,
                to_s: end,
                version_index: index,
                version: &self.versions[index],
            })?;
            cursor = end;
            index += 1;
        }
        Ok(())
    }
}

/// The price books of every region, all in one currency: a deployment invoices in one currency,
/// and an invoice mixing two could not have a total.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<PriceBook>", into = "Vec<PriceBook>")]
pub struct PriceCatalog {
    currency: String,
    books: BTreeMap<String, PriceBook>,
}

impl PriceCatalog {
    pub fn new(books: Vec<PriceBook>) -> Result<Self> {
        let mut currency: Option<String> = None;
        let mut by_region = BTreeMap::new();
        for book in books {
            book.validate()?;
            match &currency {
                None => currency = Some(book.currency.clone()),
                Some(c) if *c != book.currency => {
                    return Err(BillingError::InvalidPriceBook {
                        region: book.region.clone(),
                        reason: format!(
                            "currency {} differs from the catalog's {c}",
                            book.currency
                        ),
                    });
                }
                Some(_) => {}
            }
            let region = book.region.clone();
            if by_region.insert(region.clone(), book).is_some() {
                return Err(BillingError::InvalidPriceBook {
                    region,
                    reason: "two price books for one region".into(),
                });
            }
        }
        let currency = currency.ok_or_else(|| BillingError::InvalidPriceBook {
            region: String::new(),
            reason: "a catalog needs at least one price book".into(),
        })?;
        Ok(PriceCatalog {
            currency,
            books: by_region,
        })
    }

    pub fn currency(&self) -> &str {
        &self.currency
    }

    pub fn book(&self, region: &str) -> Result<&PriceBook> {
        self.books
            .get(region)
            .ok_or_else(|| BillingError::InvalidPriceBook {
                region: region.to_owned(),
                reason: "no price book for this region".into(),
            })
    }
}

impl TryFrom<Vec<PriceBook>> for PriceCatalog {
    type Error = BillingError;
    fn try_from(books: Vec<PriceBook>) -> Result<Self> {
        PriceCatalog::new(books)
    }
}

impl From<PriceCatalog> for Vec<PriceBook> {
    fn from(catalog: PriceCatalog) -> Self {
        catalog.books.into_values().collect()
    }
}

/// `numerator / denominator` rounded half up, for `numerator >= 0` and `denominator > 0`.
/// An odd denominator has no exact half, so adding `denominator / 2` (floored) is exact there too.
pub fn round_half_up_div(numerator: i128, denominator: i128) -> i128 {
    (numerator + denominator / 2) / denominator
}

/// Micro-units as a decimal with six places: `1234567` → `1.234567`.
pub fn format_micros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

/// Milli-units as a decimal with three places: `1250` → `1.250`.
pub fn format_milli(milli: i128) -> String {
    let sign = if milli < 0 { "-" } else { "" };
    let abs = milli.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn version(from: &str, kpu_hour_micros: i64) -> PriceVersion {
        PriceVersion {
            effective_from: t(from),
            kpu_hour_micros,
            orchestration_share_milli: 250,
            savepoint_gib_month_micros: 20_000,
        }
    }

    #[test]
    fn rounds_half_up_exactly_once() {
        assert_eq!(round_half_up_div(0, 3_600_000), 0);
        assert_eq!(round_half_up_div(1_799_999, 3_600_000), 0);
        assert_eq!(round_half_up_div(1_800_000, 3_600_000), 1);
        assert_eq!(round_half_up_div(5_399_999, 3_600_000), 1);
        assert_eq!(round_half_up_div(5_400_000, 3_600_000), 2);
        // Odd denominators have no exact half: 1/3 → 0, 2/3 → 1, 3/3 → 1.
        assert_eq!(round_half_up_div(1, 3), 0);
        assert_eq!(round_half_up_div(2, 3), 1);
        assert_eq!(round_half_up_div(3, 3), 1);
        assert_eq!(round_half_up_div(7, 2), 4);
    }

    #[test]
    fn formats_money_and_quantities_without_floats() {
        assert_eq!(format_micros(0), "0.000000");
        assert_eq!(format_micros(1_234_567), "1.234567");
        assert_eq!(format_micros(-5), "-0.000005");
        assert_eq!(format_milli(1250), "1.250");
        assert_eq!(format_milli(7), "0.007");
    }

    #[test]
    fn stretches_split_at_price_changes() {
        let book = PriceBook::new(
            "eu-1",
            "EUR",
            vec![
                version("2026-01-01T00:00:00Z", 100),
                version("2026-10-15T00:00:00Z", 120),
            ],
        )
        .unwrap();
        let from = secs(t("2026-10-14T23:00:00Z"));
        let to = secs(t("2026-10-15T01:00:00Z"));
        let parts = book.stretches(from, to).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(
            (
                parts[0].to_s - parts[0].from_s,
                parts[0].version.kpu_hour_micros
            ),
            (3600, 100)
        );
        assert_eq!(
            (
                parts[1].to_s - parts[1].from_s,
                parts[1].version.kpu_hour_micros
            ),
            (3600, 120)
        );
        assert_eq!(
            book.version_at(t("2026-10-15T00:00:00Z"))
                .unwrap()
                .kpu_hour_micros,
            120
        );
        let err = book
            .stretches(secs(t("2025-12-31T23:59:59Z")), to)
            .unwrap_err();
        assert!(matches!(err, BillingError::NoPrice { .. }), "{err}");
    }

    #[test]
    fn malformed_books_and_catalogs_are_rejected_with_the_region() {
        let unsorted = PriceBook::new(
            "eu-1",
            "EUR",
            vec![
                version("2026-10-15T00:00:00Z", 1),
                version("2026-10-15T00:00:00Z", 2),
            ],
        );
        assert!(unsorted.unwrap_err().to_string().contains("eu-1"));
        assert!(PriceBook::new("eu-1", "eur", vec![version("2026-01-01T00:00:00Z", 1)]).is_err());
        assert!(PriceBook::new("eu-1", "EUR", vec![version("2026-01-01T00:00:00Z", -1)]).is_err());
        assert!(PriceBook::new("eu-1", "EUR", vec![]).is_err());
        let eur = PriceBook::new("eu-1", "EUR", vec![version("2026-01-01T00:00:00Z", 1)]).unwrap();
        let usd = PriceBook::new("us-1", "USD", vec![version("2026-01-01T00:00:00Z", 1)]).unwrap();
        assert!(PriceCatalog::new(vec![eur.clone(), usd]).is_err());
        assert!(PriceCatalog::new(vec![eur.clone(), eur.clone()]).is_err());
        let catalog = PriceCatalog::new(vec![eur]).unwrap();
        assert_eq!(catalog.currency(), "EUR");
        assert!(catalog.book("us-1").is_err());
    }
}

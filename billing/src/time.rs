//! The ledger's clock: whole UTC seconds since the Unix epoch.
//!
//! Every instant entering the billing core is floored to its second ([`secs`]). Flooring both ends
//! of every span keeps accounting additive: when a resize closes one span and opens the next at the
//! same instant, both floor to the same second, so the seconds of a run telescope exactly and no
//! second is counted twice or lost, whatever the sub-second precision of the provisioner's evidence.
//! Equivalently: second `s` is billed at the size the run held in its last millisecond, `s.999`
//! (the property tests in `tests/billing/history.rs` check the ledger against that statement).

use chrono::{DateTime, Datelike, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{BillingError, Result};

/// The ledger's resolution: the instant floored to whole seconds since the epoch.
pub fn secs(at: DateTime<Utc>) -> i64 {
    // `timestamp()` floors: the nanosecond part of a chrono instant is never negative.
    at.timestamp()
}

/// The instant at `secs` seconds since the epoch.
pub fn at_secs(secs: i64) -> Result<DateTime<Utc>> {
    DateTime::from_timestamp(secs, 0).ok_or(BillingError::Overflow {
        what: "an instant outside chrono's calendar range",
    })
}

/// RFC 3339 with whole seconds and `Z`: the one textual form of instants in our outputs, so
/// that regenerated documents are byte-identical.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A calendar month in UTC, the period of one invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Month {
    year: i32,
    month: u32,
}

impl Month {
    /// `month` is 1..=12; years are limited to 1970..=9999 so every bound is a valid instant.
    pub fn new(year: i32, month: u32) -> Result<Self> {
        if !(1..=12).contains(&month) {
            return Err(BillingError::param(
                "month",
                format!("month number must be 1..=12, got {month}"),
            ));
        }
        if !(1970..=9999).contains(&year) {
            return Err(BillingError::param(
                "month",
                format!("year must be 1970..=9999, got {year}"),
            ));
        }
        Ok(Month { year, month })
    }

    /// Parses `YYYY-MM`.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || BillingError::param("month", format!("expected YYYY-MM, got {text:?}"));
        let (year, month) = text.split_once('-').ok_or_else(bad)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(bad());
        }
        let year: i32 = year.parse().map_err(|_| bad())?;
        let month: u32 = month.parse().map_err(|_| bad())?;
        Month::new(year, month)
    }

    /// The month containing `at`.
    pub fn containing(at: DateTime<Utc>) -> Result<Self> {
        Month::new(at.year(), at.month())
    }

    pub fn year(&self) -> i32 {
        self.year
    }

    pub fn month(&self) -> u32 {
        self.month
    }

    /// First instant of the month.
    pub fn start(&self) -> DateTime<Utc> {
        first_of(self.year, self.month)
    }

    /// First instant after the month.
    pub fn end(&self) -> DateTime<Utc> {
        if self.month == 12 {
            first_of(self.year + 1, 1)
        } else {
            first_of(self.year, self.month + 1)
        }
    }

    /// Length of the month in seconds (2,419,200 to 2,678,400).
    pub fn seconds(&self) -> i64 {
        secs(self.end()) - secs(self.start())
    }
}

fn first_of(year: i32, month: u32) -> DateTime<Utc> {
    // Month::new bounds year and month, and year 10000 is still inside chrono's range, so the
    // fallback is unreachable; it keeps this function total without an unwrap.
    NaiveDate::from_ymd_opt(year, month, 1)
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|naive| naive.and_utc())
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

impl std::fmt::Display for Month {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl TryFrom<String> for Month {
    type Error = BillingError;
    fn try_from(text: String) -> Result<Self> {
        Month::parse(&text)
    }
}

impl From<Month> for String {
    fn from(month: Month) -> String {
        month.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_sub_second_instants_including_before_the_epoch() {
        let t = DateTime::parse_from_rfc3339("2026-10-01T00:00:01.999Z")
            .unwrap()
            .to_utc();
        assert_eq!(secs(t), 1_790_812_801);
        let before = DateTime::parse_from_rfc3339("1969-12-31T23:59:59.5Z")
            .unwrap()
            .to_utc();
        assert_eq!(secs(before), -1);
    }

    #[test]
    fn month_bounds_and_lengths() {
        let oct = Month::parse("2026-10").unwrap();
        assert_eq!(rfc3339(oct.start()), "2026-10-01T00:00:00Z");
        assert_eq!(rfc3339(oct.end()), "2026-11-01T00:00:00Z");
        assert_eq!(oct.seconds(), 31 * 86_400);
        assert_eq!(Month::parse("2028-02").unwrap().seconds(), 29 * 86_400);
        assert_eq!(
            rfc3339(Month::parse("2026-12").unwrap().end()),
            "2027-01-01T00:00:00Z"
        );
        assert_eq!(oct.to_string(), "2026-10");
    }

    #[test]
    fn rejects_malformed_months_naming_the_parameter() {
        for bad in [
            "2026-13", "2026-1", "26-10", "2026/10", "", "1969-12", "2026-00",
        ] {
            let err = Month::parse(bad).unwrap_err();
            assert_eq!(err.parameter(), Some("month"), "{bad}");
        }
    }
}

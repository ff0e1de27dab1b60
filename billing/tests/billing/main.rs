//! The one integration-test binary of `sluice-billing` (one binary per crate: each extra one
//! costs a link and disk on the shared machine).
//!
//! - `history`: property tests of the ledger against an independent millisecond model.
//! - `fixture_month`: an invoice of a fixture month against hand-computed expected files.
//! - `bad_inputs`: every rejected parameter is named in the error.
//! - `store`: the store against a real PostgreSQL (`sluice-test-support`).

mod bad_inputs;
mod fixture_month;
mod history;
mod store;

use chrono::{DateTime, Utc};

pub fn t(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text)
        .unwrap_or_else(|e| panic!("bad test instant {text:?}: {e}"))
        .to_utc()
}

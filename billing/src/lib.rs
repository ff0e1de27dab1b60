//! `sluice-billing`: Sluice metering and billing (DESIGN.md §3, §7; issue 7): a pure core and
//! its store.
//!
//! No floats, and no I/O outside [`store`]: usage is integer milli-KPU-seconds, money integer micro-units of one
//! currency. The control plane records [`Span`]s from provisioner evidence and serves the API;
//! this crate does the arithmetic and the documents.
//!
//! - [`kpu`]: KPU sizing, `ceil(P / K) × 1000 + orchestration share` milli-KPU.
//! - [`ledger`]: spans, the [`Ledger`] operations (open, resize, close from evidence), validation,
//!   usage over `[from, to)`. Resolution is whole seconds (see [`time`]).
//! - [`rollup`]: minute/hour/day series in UTC buckets, grouped by pool, application or region,
//!   with or without cost, and the validated [`UsageQuery`] of `GET /v1/usage`.
//! - [`price`]: versioned price books per region and the one rounding rule (half up, once per line).
//! - [`invoice`] and [`render`]: monthly invoices per organisation as JSON, CSV and printable HTML.
//! - [`events`]: CloudEvents usage events with ids `org/app/run/minute`.
//! - [`reconcile`]: the ledger against provisioner evidence; only recorded exits are applied.
//! - [`budget`]: monthly budgets and the thresholds a spend level crosses.
//! - [`store`]: the billing tables in PostgreSQL (spans, price books, budgets, alerts, run
//!   evidence); the only module with I/O.
//!
//! Test: `dev/cargo test -p sluice-billing` (colocated unit tests plus `tests/billing/`: property
//! tests of the ledger against an independent model, the fixture-month invoice, bad inputs, and
//! the store against a real PostgreSQL from `sluice-test-support`).
//! Benchmark: `dev/cargo run --release -p sluice-billing --example bench`.

pub mod budget;
pub mod error;
pub mod events;
pub mod invoice;
pub mod kpu;
pub mod ledger;
pub mod price;
pub mod reconcile;
pub mod render;
pub mod rollup;
pub mod store;
pub mod time;

pub use budget::Budget;
pub use error::{BillingError, Result};
pub use events::{UsageEvent, usage_events};
pub use invoice::{Invoice, InvoiceLine, InvoiceStatus, LineKind, SavepointStorage, build_invoice};
pub use kpu::kpu_milli;
pub use ledger::{Ledger, RunRef, Span, usage_between, validate_spans};
pub use price::{PriceBook, PriceCatalog, PriceVersion};
pub use reconcile::{Finding, Observation, Observed, reconcile};
pub use rollup::{Granularity, GroupBy, UsageQuery, UsageSeries, rollup, rollup_with_cost};
pub use time::Month;

//! The Sluice control plane.
//!
//! `sluice server` serves the public API, the console and the health endpoints
//! over PostgreSQL; `sluice migrate` applies the schema migrations of
//! `migrations/`; `sluice admin bootstrap` makes a first organization and admin
//! key; `sluice billing` rates, reconciles and exports usage and manages price
//! books for the operator (`service::billing_ops`; billing's tables are
//! `sluice_billing::store`'s); `sluice openapi` prints the OpenAPI document; `sluice login`, `pools`,
//! `apps`, `versions`, `api-keys`, `operations` are the client ([`cli`]). Layers, outermost first:
//! `http` (handlers, one module per resource) →
//! `service` (rules, authorization, transactions, audit) → `store` (the only
//! module that touches sqlx). Configuration: see [`config`].
//!
//! Tests: `cargo test -p sluice-control-plane` (unit tests, and integration
//! tests against a real PostgreSQL started by `sluice-test-support`).

pub mod cli;
pub mod config;
pub mod http;
pub mod reconcile;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;

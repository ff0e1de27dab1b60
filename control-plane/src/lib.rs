//! The Sluice control plane.
//!
//! `sluice server` serves the public API, the console and the health endpoints
//! over PostgreSQL; `sluice migrate` applies the schema migrations of
//! `migrations/`. Layers, outermost first: `http` (handlers) → `store` (the only
//! module that touches sqlx). Configuration: see [`config`].
//!
//! Tests: `cargo test -p sluice-control-plane` (unit tests, and integration
//! tests against a real PostgreSQL started by `sluice-test-support`).

pub mod config;
pub mod http;
pub mod server;
pub mod store;
pub mod telemetry;

//! The one integration-test binary of the control plane: the real server on
//! port 0 against a fresh database of a real PostgreSQL per test.
//!
//! Run: `dev/cargo test -p sluice-control-plane --test api` (`TEST_LOG=1` for server logs).

// Helpers outside `#[test]` functions panic on an unexpected response on purpose:
// that is how a test fails.
#![allow(clippy::unwrap_used, reason = "test code: a panic is a failed test")]

mod cluster;
mod helpers;

mod admission;
mod applications;
mod auth;
mod bad_input;
mod billing;
mod billing_budget;
mod cli;
mod client;
mod compute_pools;
mod failed;
mod fencing;
mod latency;
mod leader;
mod lifecycle;
mod openapi;
mod rate_limit;
mod restore;
mod roles;
mod savepoints;
mod tenancy;

//! The runtime's integration tests, one binary (each extra binary costs link
//! time and disk): golden operator tests, and checkpoint/restore of whole jobs
//! against the filesystem blob store.

mod alignment;
mod checkpoints;
mod golden;
mod golden_dedup_json;
mod golden_join;
mod incremental;
mod testconn;

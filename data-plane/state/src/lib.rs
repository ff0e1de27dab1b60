//! Keyed state for the Sluice engine (DESIGN.md §5): value, map and list state per `(key, namespace)`,
//! event-time and processing-time timers, and snapshot/restore by key group, behind one trait
//! ([`KeyedStateBackend`]) with two backends: [`MemoryBackend`] here and the RocksDB backend in the
//! leaf crate `sluice-state-rocksdb`.
//!
//! **Key groups.** [`key_group_of`] is the one function that maps a key to its key group, for state and
//! for the runtime's hash exchange alike; [`key_group_range`] and [`subtask_for_key_group`] assign key
//! groups to subtasks with Flink's rule. See `README.md` next to this crate for the API walk-through,
//! the snapshot format and how RocksDB incremental checkpoints plug in.
//!
//! Tests: `dev/cargo test -p sluice-state`. The backend contract suite and the proptest model test live
//! in [`contract`] (feature `testing`) so that every backend crate runs the same checks.

pub mod backend;
#[cfg(feature = "testing")]
pub mod contract;
pub mod encoding;
pub mod error;
mod inline;
pub mod keygroup;
pub mod memory;
pub mod snapshot;
pub mod timers;

pub use backend::{
    DueTimers, KeyedStateBackend, NO_NAMESPACE, PairVisitor, StateId, StateKind, TimeDomain, Timer,
};
pub use encoding::ListItems;
pub use error::{Result, StateError};
pub use keygroup::{
    DEFAULT_MAX_PARALLELISM, KeyGroupRange, MAX_MAX_PARALLELISM, key_group_of, key_group_range,
    subtask_for_key_group,
};
pub use memory::MemoryBackend;
pub use snapshot::{PendingSnapshot, ReadSeek, RestoreSummary, SnapshotRecord, SnapshotSummary};

/// The README's example, compiled and run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

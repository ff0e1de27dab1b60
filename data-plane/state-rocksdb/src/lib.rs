//! The `rocksdb` keyed state backend of the Sluice engine: [`RocksDbBackend`] implements
//! [`sluice_state::KeyedStateBackend`] on RocksDB (the workspace's `rocksdb` 0.20.1, linked to Debian's
//! librocksdb 7.8.3), for state larger than memory.
//!
//! A leaf crate: only binaries depend on it, and they hand the runtime a `Box<dyn KeyedStateBackend>`, so
//! editing the runtime never relinks RocksDB. Layout, snapshots and incremental checkpoints (native
//! files, [`native_to_canonical`]) are described in `README.md` next to this crate.
//!
//! Tests: `dev/cargo test -p sluice-state-rocksdb` (the contract suite of `sluice-state`, the model test
//! and cross-backend restores). Benchmark: `dev/cargo run --release -p sluice-state-rocksdb --example
//! state_bench`.

mod backend;
mod keys;
mod options;
mod snapshot;

pub use backend::RocksDbBackend;
pub use options::RocksDbConfig;
pub use snapshot::native_to_canonical;

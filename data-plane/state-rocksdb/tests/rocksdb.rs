//! The backend contract, the model test and cross-backend restores against the RocksDB backend.

use sluice_state::contract::{self, model};
use sluice_state::{KeyGroupRange, KeyedStateBackend, MemoryBackend};
use sluice_state_rocksdb::{RocksDbBackend, RocksDbConfig};

fn small() -> RocksDbConfig {
    RocksDbConfig {
        write_buffer_bytes: 4 << 20,
        block_cache_bytes: 8 << 20,
        background_jobs: 1,
        ..RocksDbConfig::default()
    }
}

/// `value_cache_entries`: the default cache, a tiny one (evicts all the time) and none.
fn rocks_with(
    value_cache_entries: usize,
) -> impl FnMut(u16, KeyGroupRange) -> Box<dyn KeyedStateBackend> {
    move |max_p, range| {
        let config = RocksDbConfig {
            value_cache_entries,
            ..small()
        };
        Box::new(
            RocksDbBackend::open_temp(None, max_p, range, config)
                .expect("rocksdb backend in a temporary directory"),
        )
    }
}

fn rocks() -> impl FnMut(u16, KeyGroupRange) -> Box<dyn KeyedStateBackend> {
    rocks_with(RocksDbConfig::default().value_cache_entries)
}

fn memory() -> impl FnMut(u16, KeyGroupRange) -> Box<dyn KeyedStateBackend> {
    |max_p, range| Box::new(MemoryBackend::new(max_p, range).expect("memory backend"))
}

#[test]
fn rocksdb_backend_passes_the_contract() {
    contract::run_all(&mut rocks()).unwrap();
}

#[test]
fn rocksdb_backend_passes_the_contract_with_a_tiny_value_cache_and_without_one() {
    contract::run_all(&mut rocks_with(3)).unwrap();
    contract::run_all(&mut rocks_with(0)).unwrap();
}

#[test]
fn snapshots_restore_memory_to_rocksdb_and_back() {
    contract::cross_backend(&mut memory(), &mut rocks()).unwrap();
    contract::cross_backend(&mut rocks(), &mut memory()).unwrap();
}

#[test]
fn rocksdb_backend_matches_the_model() {
    model::check(&mut rocks(), 40);
    model::check(&mut rocks_with(2), 40);
    model::check(&mut rocks_with(0), 20);
}

#[test]
fn open_refuses_a_non_empty_directory_and_cleans_up_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("stray"), b"x").unwrap();
    let err = RocksDbBackend::open(dir.path(), 128, KeyGroupRange::all(128), small())
        .err()
        .expect("a non-empty directory is refused");
    assert!(err.to_string().contains("not empty"), "{err}");

    let work = dir.path().join("work");
    let mut b = RocksDbBackend::open(&work, 128, KeyGroupRange::all(128), small()).unwrap();
    contract::populate(&mut b, 50).unwrap();
    let pending = b.snapshot().unwrap();
    let checkpoints = work.join("checkpoints");
    assert_eq!(std::fs::read_dir(&checkpoints).unwrap().count(), 1);
    pending.write_to(&mut Vec::new()).unwrap();
    assert_eq!(
        std::fs::read_dir(&checkpoints).unwrap().count(),
        0,
        "written checkpoint removed"
    );
    drop(b.snapshot().unwrap());
    assert_eq!(
        std::fs::read_dir(&checkpoints).unwrap().count(),
        0,
        "abandoned checkpoint removed"
    );
}

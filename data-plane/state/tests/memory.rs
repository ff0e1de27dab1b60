//! The backend contract and the model test against the memory backend.

use sluice_state::contract::{self, model};
use sluice_state::{KeyGroupRange, KeyedStateBackend, MemoryBackend};

fn factory() -> impl FnMut(u16, KeyGroupRange) -> Box<dyn KeyedStateBackend> {
    |max_p, range| {
        Box::new(MemoryBackend::new(max_p, range).expect("memory backend for a valid range"))
    }
}

#[test]
fn memory_backend_passes_the_contract() {
    contract::run_all(&mut factory()).unwrap();
}

#[test]
fn memory_backend_restores_into_memory_across_parallelism() {
    contract::cross_backend(&mut factory(), &mut factory()).unwrap();
}

#[test]
fn memory_backend_matches_the_model() {
    model::check(&mut factory(), 300);
}

#[test]
fn memory_backend_rejects_a_range_beyond_max_parallelism() {
    assert!(MemoryBackend::new(128, KeyGroupRange::new(0, 129).unwrap()).is_err());
    assert!(MemoryBackend::new(0, KeyGroupRange::new(0, 0).unwrap()).is_err());
}

//! The backend contract: one suite every [`KeyedStateBackend`] must pass, and a proptest model test.
//! Backend crates call these from their tests (feature `testing`):
//!
//! ```text
//! sluice_state::contract::run_all(&mut |max_p, range| -> Box<dyn KeyedStateBackend> {
//!     Box::new(MemoryBackend::new(max_p, range).unwrap())
//! })?;
//! ```
//!
//! Failures are assertion panics naming the case; backend errors come back as `Err`.

pub mod cases;
pub mod model;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Cursor;

use crate::backend::{KeyedStateBackend, StateKind, TimeDomain};
use crate::error::Result;
use crate::keygroup::{KeyGroupRange, key_group_range, subtask_for_key_group};

pub use cases::{cross_backend, run_all};

/// Makes a fresh, empty backend owning `range` of `max_parallelism`.
pub trait BackendFactory {
    fn create(&mut self, max_parallelism: u16, range: KeyGroupRange) -> Box<dyn KeyedStateBackend>;
}

impl<F> BackendFactory for F
where
    F: FnMut(u16, KeyGroupRange) -> Box<dyn KeyedStateBackend>,
{
    fn create(&mut self, max_parallelism: u16, range: KeyGroupRange) -> Box<dyn KeyedStateBackend> {
        self(max_parallelism, range)
    }
}

type Slot = (String, Vec<u8>, Vec<u8>);

/// Everything a backend holds, in a backend-independent, comparable form.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dump {
    pub values: BTreeMap<Slot, Vec<u8>>,
    pub maps: BTreeMap<Slot, BTreeMap<Vec<u8>, Vec<u8>>>,
    pub lists: BTreeMap<Slot, Vec<Vec<u8>>>,
    /// `(domain, time, key, namespace)`
    pub timers: BTreeSet<(TimeDomain, i64, Vec<u8>, Vec<u8>)>,
}

impl Dump {
    pub fn len(&self) -> usize {
        self.values.len() + self.maps.len() + self.lists.len() + self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All keys that have any state or timer.
    pub fn keys(&self) -> BTreeSet<Vec<u8>> {
        let mut keys = BTreeSet::new();
        keys.extend(self.values.keys().map(|s| s.1.clone()));
        keys.extend(self.maps.keys().map(|s| s.1.clone()));
        keys.extend(self.lists.keys().map(|s| s.1.clone()));
        keys.extend(self.timers.iter().map(|t| t.2.clone()));
        keys
    }

    /// Adds `other` into `self`, asserting that no slot is in both (key groups never overlap).
    pub fn merge_disjoint(&mut self, other: Dump) {
        for (slot, v) in other.values {
            assert!(self.values.insert(slot, v).is_none(), "value slot twice");
        }
        for (slot, v) in other.maps {
            assert!(self.maps.insert(slot, v).is_none(), "map slot twice");
        }
        for (slot, v) in other.lists {
            assert!(self.lists.insert(slot, v).is_none(), "list slot twice");
        }
        for t in other.timers {
            assert!(self.timers.insert(t), "timer twice");
        }
    }
}

/// Reads everything out of `backend` (timers are drained and registered again, so it is left as it was).
pub fn dump(backend: &mut dyn KeyedStateBackend) -> Result<Dump> {
    let mut out = Dump::default();
    for (name, kind) in backend.states() {
        let id = backend.register(&name, kind)?;
        let mut slots = Vec::new();
        backend.for_each_key(id, &mut |k, ns| {
            slots.push((k.to_vec(), ns.to_vec()));
            Ok(())
        })?;
        for (k, ns) in slots {
            let slot = (name.clone(), k.clone(), ns.clone());
            match kind {
                StateKind::Value => {
                    let v = backend.value_get(id, &k, &ns)?;
                    let v =
                        v.unwrap_or_else(|| panic!("for_each_key visited {slot:?} without value"));
                    out.values.insert(slot, v.to_vec());
                }
                StateKind::Map => {
                    let mut entries = BTreeMap::new();
                    backend.map_for_each(id, &k, &ns, &mut |uk, v| {
                        entries.insert(uk.to_vec(), v.to_vec());
                        Ok(())
                    })?;
                    assert!(
                        !entries.is_empty(),
                        "for_each_key visited empty map {slot:?}"
                    );
                    out.maps.insert(slot, entries);
                }
                StateKind::List => {
                    let items = backend.list_get(id, &k, &ns)?.to_vec();
                    assert!(
                        !items.is_empty(),
                        "for_each_key visited empty list {slot:?}"
                    );
                    out.lists.insert(slot, items);
                }
            }
        }
    }
    for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
        let mut timers = Vec::new();
        backend.drain_timers(domain, i64::MAX, &mut timers)?;
        for t in timers {
            backend.register_timer(t.domain, t.time, &t.key, &t.namespace)?;
            out.timers.insert((t.domain, t.time, t.key, t.namespace));
        }
    }
    Ok(out)
}

/// Writes state of every kind, with namespaces and timers, for keys `0..n` that fall in the backend's
/// key groups; returns how many keys were in range.
pub fn populate(backend: &mut dyn KeyedStateBackend, n: u32) -> Result<u32> {
    let max_p = backend.max_parallelism();
    let range = backend.key_group_range();
    let count = backend.register("count", StateKind::Value)?;
    let seen = backend.register("seen", StateKind::Map)?;
    let rows = backend.register("rows", StateKind::List)?;
    let mut in_range = 0;
    for i in 0..n {
        let key = test_key(i);
        if !range.contains(crate::key_group_of(&key, max_p)) {
            continue;
        }
        in_range += 1;
        backend.value_put(count, &key, b"", &u64::from(i).to_le_bytes())?;
        let window = (i % 3).to_be_bytes();
        backend.value_put(count, &key, &window, &[i as u8; 3])?;
        for j in 0..(i % 4) {
            backend.map_put(
                seen,
                &key,
                &window,
                &j.to_be_bytes(),
                format!("v{i}-{j}").as_bytes(),
            )?;
        }
        for j in 0..(i % 5) {
            backend.list_append(rows, &key, b"", format!("row {i}.{j}").as_bytes())?;
        }
        if i % 2 == 0 {
            backend.register_timer(TimeDomain::EventTime, i64::from(i % 17), &key, &window)?;
        } else {
            backend.register_timer(TimeDomain::ProcessingTime, -i64::from(i), &key, b"")?;
        }
    }
    Ok(in_range)
}

pub fn test_key(i: u32) -> Vec<u8> {
    format!("user-{i}").into_bytes()
}

/// Snapshots `backend` into bytes (through the asynchronous half, on another thread as the runtime will).
pub fn snapshot_bytes(backend: &mut dyn KeyedStateBackend) -> Result<Vec<u8>> {
    let pending = backend.snapshot()?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                let mut bytes = Vec::new();
                pending.write_to(&mut bytes).map(|_| bytes)
            })
            .join()
            .unwrap_or_else(|_| panic!("snapshot writer thread panicked"))
    })
}

/// Restores a new backend of `factory` for `range` from `files`.
pub fn restore_new(
    factory: &mut dyn BackendFactory,
    max_parallelism: u16,
    range: KeyGroupRange,
    files: &[Vec<u8>],
) -> Result<Box<dyn KeyedStateBackend>> {
    let mut backend = factory.create(max_parallelism, range);
    let mut cursors: Vec<Cursor<&[u8]>> = files.iter().map(|f| Cursor::new(f.as_slice())).collect();
    let mut sources: Vec<&mut dyn crate::ReadSeek> = cursors
        .iter_mut()
        .map(|c| c as &mut dyn crate::ReadSeek)
        .collect();
    backend.restore(&mut sources)?;
    Ok(backend)
}

/// A job at `from` parallelism (`n` keys routed by key group) snapshotted and restored at `to`:
/// every slot lands in exactly the subtask that owns its key group, nothing lost or duplicated.
pub fn check_rescale(
    factory_from: &mut dyn BackendFactory,
    factory_to: &mut dyn BackendFactory,
    max_p: u16,
    from: u16,
    to: u16,
    n: u32,
) -> Result<()> {
    let mut before = Dump::default();
    let mut files = Vec::new();
    let mut total = 0;
    for i in 0..from {
        let mut backend = factory_from.create(max_p, key_group_range(max_p, from, i)?);
        total += populate(backend.as_mut(), n)?;
        before.merge_disjoint(dump(backend.as_mut())?);
        files.push(snapshot_bytes(backend.as_mut())?);
    }
    assert_eq!(total, n, "{from} subtasks together own every key");
    let mut after = Dump::default();
    for i in 0..to {
        let range = key_group_range(max_p, to, i)?;
        let mut backend = restore_new(factory_to, max_p, range, &files)?;
        let part = dump(backend.as_mut())?;
        for key in part.keys() {
            let owner = subtask_for_key_group(crate::key_group_of(&key, max_p), max_p, to);
            assert_eq!(
                owner, i,
                "key {key:?} restored into subtask {i} of {to}, owner {owner}"
            );
        }
        after.merge_disjoint(part);
    }
    assert_eq!(before, after, "rescale {from} -> {to} changed the state");
    Ok(())
}

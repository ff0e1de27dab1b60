//! Model-based property test: random operation sequences run against a backend and against a model
//! built from `BTreeMap`s; every read, iteration and timer drain must agree, including across a
//! snapshot/restore in the middle of the sequence.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

use super::{BackendFactory, restore_new, snapshot_bytes};
use crate::backend::{KeyedStateBackend, StateId, StateKind, TimeDomain};
use crate::encoding::composite_key;
use crate::keygroup::{DEFAULT_MAX_PARALLELISM, KeyGroupRange};

#[derive(Clone, Debug)]
pub enum Op {
    Put { k: u8, ns: u8, v: Vec<u8> },
    Get { k: u8, ns: u8 },
    Incr { k: u8, ns: u8 },
    DeleteByUpdate { k: u8, ns: u8 },
    Clear { state: u8, k: u8, ns: u8 },
    MapPut { k: u8, ns: u8, uk: u8, v: Vec<u8> },
    MapRemove { k: u8, ns: u8, uk: u8 },
    MapGet { k: u8, ns: u8, uk: u8 },
    MapIter { k: u8, ns: u8 },
    ListAppend { k: u8, ns: u8, v: Vec<u8> },
    ListGet { k: u8, ns: u8 },
    TimerRegister { event: bool, t: i8, k: u8, ns: u8 },
    TimerDelete { event: bool, t: i8, k: u8, ns: u8 },
    Drain { event: bool, t: i8 },
    Keys { state: u8 },
    SnapshotRestore,
}

fn op() -> impl Strategy<Value = Op> {
    let k = 0u8..6;
    let ns = 0u8..3;
    let small = proptest::collection::vec(any::<u8>(), 0..12);
    prop_oneof![
        4 => (k.clone(), ns.clone(), small.clone()).prop_map(|(k, ns, v)| Op::Put { k, ns, v }),
        3 => (k.clone(), ns.clone()).prop_map(|(k, ns)| Op::Get { k, ns }),
        3 => (k.clone(), ns.clone()).prop_map(|(k, ns)| Op::Incr { k, ns }),
        1 => (k.clone(), ns.clone()).prop_map(|(k, ns)| Op::DeleteByUpdate { k, ns }),
        2 => (0u8..3, k.clone(), ns.clone()).prop_map(|(state, k, ns)| Op::Clear { state, k, ns }),
        4 => (k.clone(), ns.clone(), 0u8..5, small.clone())
            .prop_map(|(k, ns, uk, v)| Op::MapPut { k, ns, uk, v }),
        2 => (k.clone(), ns.clone(), 0u8..5).prop_map(|(k, ns, uk)| Op::MapRemove { k, ns, uk }),
        2 => (k.clone(), ns.clone(), 0u8..5).prop_map(|(k, ns, uk)| Op::MapGet { k, ns, uk }),
        2 => (k.clone(), ns.clone()).prop_map(|(k, ns)| Op::MapIter { k, ns }),
        3 => (k.clone(), ns.clone(), small).prop_map(|(k, ns, v)| Op::ListAppend { k, ns, v }),
        2 => (k.clone(), ns.clone()).prop_map(|(k, ns)| Op::ListGet { k, ns }),
        3 => (any::<bool>(), -20i8..20, k.clone(), ns.clone())
            .prop_map(|(event, t, k, ns)| Op::TimerRegister { event, t, k, ns }),
        1 => (any::<bool>(), -20i8..20, k.clone(), ns.clone())
            .prop_map(|(event, t, k, ns)| Op::TimerDelete { event, t, k, ns }),
        2 => (any::<bool>(), -20i8..25).prop_map(|(event, t)| Op::Drain { event, t }),
        1 => (0u8..3).prop_map(|state| Op::Keys { state }),
        1 => Just(Op::SnapshotRestore),
    ]
}

type Slot = (Vec<u8>, Vec<u8>);

#[derive(Default)]
struct Model {
    value: BTreeMap<Slot, Vec<u8>>,
    map: BTreeMap<Slot, BTreeMap<Vec<u8>, Vec<u8>>>,
    list: BTreeMap<Slot, Vec<Vec<u8>>>,
    timers: BTreeSet<(TimeDomain, i64, Vec<u8>, Vec<u8>)>,
}

fn key(k: u8) -> Vec<u8> {
    // Keys of different lengths, so the composite's length prefix matters.
    vec![b'k'; usize::from(k % 3) + 1]
        .into_iter()
        .chain([k])
        .collect()
}

fn namespace(ns: u8) -> Vec<u8> {
    if ns == 0 {
        Vec::new()
    } else {
        vec![ns; usize::from(ns)]
    }
}

fn domain(event: bool) -> TimeDomain {
    if event {
        TimeDomain::EventTime
    } else {
        TimeDomain::ProcessingTime
    }
}

fn next_count(bytes: &[u8]) -> Vec<u8> {
    let n = <[u8; 8]>::try_from(bytes).map_or(0, u64::from_le_bytes);
    n.wrapping_add(1).to_le_bytes().to_vec()
}

struct Ids {
    value: StateId,
    map: StateId,
    list: StateId,
}

fn register(b: &mut dyn KeyedStateBackend) -> Result<Ids, TestCaseError> {
    Ok(Ids {
        value: b.register("value", StateKind::Value).map_err(fail)?,
        map: b.register("map", StateKind::Map).map_err(fail)?,
        list: b.register("list", StateKind::List).map_err(fail)?,
    })
}

fn fail(e: crate::StateError) -> TestCaseError {
    TestCaseError::fail(format!("backend error: {e:#?}"))
}

fn run_ops(factory: &mut dyn BackendFactory, ops: &[Op]) -> Result<(), TestCaseError> {
    let max_p = DEFAULT_MAX_PARALLELISM;
    let all = KeyGroupRange::all(max_p);
    let mut b = factory.create(max_p, all);
    let mut ids = register(b.as_mut())?;
    let mut m = Model::default();
    for (step, op) in ops.iter().enumerate() {
        let b_ref = b.as_mut();
        match op.clone() {
            Op::Put { k, ns, v } => {
                b_ref
                    .value_put(ids.value, &key(k), &namespace(ns), &v)
                    .map_err(fail)?;
                m.value.insert((key(k), namespace(ns)), v);
            }
            Op::Get { k, ns } => {
                let got = b_ref
                    .value_get(ids.value, &key(k), &namespace(ns))
                    .map_err(fail)?;
                prop_assert_eq!(
                    got,
                    m.value.get(&(key(k), namespace(ns))).map(Vec::as_slice),
                    "step {}",
                    step
                );
            }
            Op::Incr { k, ns } => {
                b_ref
                    .value_update(ids.value, &key(k), &namespace(ns), &mut |bytes, present| {
                        let next = if present {
                            next_count(bytes)
                        } else {
                            next_count(&[])
                        };
                        bytes.clear();
                        bytes.extend_from_slice(&next);
                        true
                    })
                    .map_err(fail)?;
                let slot = (key(k), namespace(ns));
                let next = next_count(m.value.get(&slot).map_or(&[][..], Vec::as_slice));
                m.value.insert(slot, next);
            }
            Op::DeleteByUpdate { k, ns } => {
                b_ref
                    .value_update(ids.value, &key(k), &namespace(ns), &mut |_, _| false)
                    .map_err(fail)?;
                m.value.remove(&(key(k), namespace(ns)));
            }
            Op::Clear { state, k, ns } => {
                let slot = (key(k), namespace(ns));
                let id = match state {
                    0 => {
                        m.value.remove(&slot);
                        ids.value
                    }
                    1 => {
                        m.map.remove(&slot);
                        ids.map
                    }
                    _ => {
                        m.list.remove(&slot);
                        ids.list
                    }
                };
                b_ref.clear(id, &slot.0, &slot.1).map_err(fail)?;
            }
            Op::MapPut { k, ns, uk, v } => {
                b_ref
                    .map_put(ids.map, &key(k), &namespace(ns), &[uk], &v)
                    .map_err(fail)?;
                m.map
                    .entry((key(k), namespace(ns)))
                    .or_default()
                    .insert(vec![uk], v);
            }
            Op::MapRemove { k, ns, uk } => {
                b_ref
                    .map_remove(ids.map, &key(k), &namespace(ns), &[uk])
                    .map_err(fail)?;
                let slot = (key(k), namespace(ns));
                if let Some(entries) = m.map.get_mut(&slot) {
                    entries.remove(&vec![uk]);
                    if entries.is_empty() {
                        m.map.remove(&slot);
                    }
                }
            }
            Op::MapGet { k, ns, uk } => {
                let got = b_ref
                    .map_get(ids.map, &key(k), &namespace(ns), &[uk])
                    .map_err(fail)?;
                let want = m
                    .map
                    .get(&(key(k), namespace(ns)))
                    .and_then(|e| e.get(&vec![uk]));
                prop_assert_eq!(got, want.map(Vec::as_slice), "step {}", step);
            }
            Op::MapIter { k, ns } => {
                let mut got = BTreeMap::new();
                let mut order = Vec::new();
                b_ref
                    .map_for_each(ids.map, &key(k), &namespace(ns), &mut |uk, v| {
                        order.push(uk.to_vec());
                        got.insert(uk.to_vec(), v.to_vec());
                        Ok(())
                    })
                    .map_err(fail)?;
                prop_assert!(
                    order.windows(2).all(|w| w[0] < w[1]),
                    "map iteration sorted"
                );
                let want = m
                    .map
                    .get(&(key(k), namespace(ns)))
                    .cloned()
                    .unwrap_or_default();
                prop_assert_eq!(got, want, "step {}", step);
            }
            Op::ListAppend { k, ns, v } => {
                b_ref
                    .list_append(ids.list, &key(k), &namespace(ns), &v)
                    .map_err(fail)?;
                m.list.entry((key(k), namespace(ns))).or_default().push(v);
            }
            Op::ListGet { k, ns } => {
                let got = b_ref
                    .list_get(ids.list, &key(k), &namespace(ns))
                    .map_err(fail)?
                    .to_vec();
                let want = m
                    .list
                    .get(&(key(k), namespace(ns)))
                    .cloned()
                    .unwrap_or_default();
                prop_assert_eq!(got, want, "step {}", step);
            }
            Op::TimerRegister { event, t, k, ns } => {
                b_ref
                    .register_timer(domain(event), i64::from(t), &key(k), &namespace(ns))
                    .map_err(fail)?;
                m.timers
                    .insert((domain(event), i64::from(t), key(k), namespace(ns)));
            }
            Op::TimerDelete { event, t, k, ns } => {
                b_ref
                    .delete_timer(domain(event), i64::from(t), &key(k), &namespace(ns))
                    .map_err(fail)?;
                m.timers
                    .remove(&(domain(event), i64::from(t), key(k), namespace(ns)));
            }
            Op::Drain { event, t } => {
                let d = domain(event);
                let mut out = Vec::new();
                b_ref
                    .drain_timers(d, i64::from(t), &mut out)
                    .map_err(fail)?;
                let got: Vec<_> = out
                    .into_iter()
                    .map(|t| (t.time, t.key, t.namespace))
                    .collect();
                let mut want: Vec<_> = m
                    .timers
                    .iter()
                    .filter(|x| x.0 == d && x.1 <= i64::from(t))
                    .cloned()
                    .collect();
                for x in &want {
                    m.timers.remove(x);
                }
                // Same time: ordered by the (key, namespace) composite bytes.
                want.sort_by_cached_key(|x| {
                    let mut c = Vec::new();
                    composite_key(&mut c, &x.2, &x.3);
                    (x.1, c)
                });
                let want: Vec<_> = want.into_iter().map(|x| (x.1, x.2, x.3)).collect();
                prop_assert_eq!(got, want, "step {}", step);
                let next = m.timers.iter().filter(|x| x.0 == d).map(|x| x.1).min();
                prop_assert_eq!(b_ref.next_timer_time(d), next, "step {}", step);
            }
            Op::Keys { state } => {
                let (id, want): (StateId, BTreeSet<Slot>) = match state {
                    0 => (ids.value, m.value.keys().cloned().collect()),
                    1 => (ids.map, m.map.keys().cloned().collect()),
                    _ => (ids.list, m.list.keys().cloned().collect()),
                };
                let mut got = Vec::new();
                b_ref
                    .for_each_key(id, &mut |k, ns| {
                        got.push((k.to_vec(), ns.to_vec()));
                        Ok(())
                    })
                    .map_err(fail)?;
                let n = got.len();
                let got: BTreeSet<Slot> = got.into_iter().collect();
                prop_assert_eq!(n, got.len(), "for_each_key visited a slot twice");
                prop_assert_eq!(got, want, "step {}", step);
            }
            Op::SnapshotRestore => {
                let bytes = snapshot_bytes(b_ref).map_err(fail)?;
                b = restore_new(factory, max_p, all, &[bytes]).map_err(fail)?;
                ids = register(b.as_mut())?;
            }
        }
    }
    Ok(())
}

/// Runs `cases` random sequences of up to 60 operations against backends made by `factory`.
pub fn check(factory: &mut dyn BackendFactory, cases: u32) {
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let factory = RefCell::new(factory);
    let result = runner.run(&proptest::collection::vec(op(), 1..60), |ops| {
        run_ops(*factory.borrow_mut(), &ops)
    });
    if let Err(e) = result {
        panic!("model test failed: {e}");
    }
}

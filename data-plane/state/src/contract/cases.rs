//! The cases of the contract suite.

use std::collections::BTreeMap;

use super::{
    BackendFactory, Dump, check_rescale, dump, populate, restore_new, snapshot_bytes, test_key,
};
use crate::backend::{KeyedStateBackend, NO_NAMESPACE, StateKind, TimeDomain, Timer};
use crate::error::{Result, StateError};
use crate::keygroup::{DEFAULT_MAX_PARALLELISM, KeyGroupRange, key_group_of, key_group_range};

const MAX_P: u16 = DEFAULT_MAX_PARALLELISM;

fn full(factory: &mut dyn BackendFactory) -> Box<dyn KeyedStateBackend> {
    factory.create(MAX_P, KeyGroupRange::all(MAX_P))
}

fn incr(
    backend: &mut dyn KeyedStateBackend,
    id: crate::StateId,
    key: &[u8],
    ns: &[u8],
) -> Result<()> {
    backend.value_update(id, key, ns, &mut |bytes, present| {
        let n = if present {
            u64::from_le_bytes(bytes.as_slice().try_into().unwrap_or([0; 8]))
        } else {
            0
        };
        bytes.clear();
        bytes.extend_from_slice(&(n + 1).to_le_bytes());
        true
    })
}

fn get_u64(
    backend: &mut dyn KeyedStateBackend,
    id: crate::StateId,
    key: &[u8],
    ns: &[u8],
) -> Result<Option<u64>> {
    Ok(backend
        .value_get(id, key, ns)?
        .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0xff; 8]))))
}

/// Runs every case of the contract against backends made by `factory`.
pub fn run_all(factory: &mut dyn BackendFactory) -> Result<()> {
    value_state(factory)?;
    namespaces(factory)?;
    map_state(factory)?;
    list_state(factory)?;
    registration_and_kinds(factory)?;
    key_groups_are_enforced(factory)?;
    iteration_and_clear(factory)?;
    timers(factory)?;
    snapshot_round_trip(factory)?;
    snapshot_is_consistent_while_writes_go_on(factory)?;
    restore_errors(factory)?;
    rescale(factory)?;
    Ok(())
}

pub fn value_state(factory: &mut dyn BackendFactory) -> Result<()> {
    let mut b = full(factory);
    let b = b.as_mut();
    let v = b.register("v", StateKind::Value)?;
    assert_eq!(b.value_get(v, b"k", NO_NAMESPACE)?, None);
    b.value_put(v, b"k", NO_NAMESPACE, b"one")?;
    assert_eq!(b.value_get(v, b"k", NO_NAMESPACE)?, Some(&b"one"[..]));
    b.value_put(v, b"k", NO_NAMESPACE, b"a longer value")?;
    assert_eq!(
        b.value_get(v, b"k", NO_NAMESPACE)?,
        Some(&b"a longer value"[..])
    );
    b.value_put(v, b"k", NO_NAMESPACE, b"")?;
    assert_eq!(
        b.value_get(v, b"k", NO_NAMESPACE)?,
        Some(&b""[..]),
        "empty value is present"
    );
    for _ in 0..5 {
        incr(b, v, b"counter", NO_NAMESPACE)?;
    }
    assert_eq!(get_u64(b, v, b"counter", NO_NAMESPACE)?, Some(5));
    // Returning false from the update deletes; returning false for an absent value stores nothing.
    b.value_update(v, b"counter", NO_NAMESPACE, &mut |_, present| {
        assert!(present);
        false
    })?;
    assert_eq!(b.value_get(v, b"counter", NO_NAMESPACE)?, None);
    b.value_update(v, b"absent", NO_NAMESPACE, &mut |bytes, present| {
        assert!(!present && bytes.is_empty());
        bytes.extend_from_slice(b"scratch");
        false
    })?;
    assert_eq!(b.value_get(v, b"absent", NO_NAMESPACE)?, None);
    b.clear(v, b"k", NO_NAMESPACE)?;
    assert_eq!(b.value_get(v, b"k", NO_NAMESPACE)?, None);
    Ok(())
}

pub fn namespaces(factory: &mut dyn BackendFactory) -> Result<()> {
    let mut b = full(factory);
    let b = b.as_mut();
    let v = b.register("per-window", StateKind::Value)?;
    let m = b.register("per-window-map", StateKind::Map)?;
    let w1 = 60_000i64.to_be_bytes();
    let w2 = 120_000i64.to_be_bytes();
    b.value_put(v, b"k", &w1, b"w1")?;
    b.value_put(v, b"k", &w2, b"w2")?;
    b.value_put(v, b"k", NO_NAMESPACE, b"none")?;
    // A key that is a prefix of another plus a namespace must not collide with it.
    b.value_put(v, b"k\x00", b"", b"other key")?;
    b.map_put(m, b"k", &w1, b"a", b"1")?;
    b.map_put(m, b"k", &w2, b"a", b"2")?;
    assert_eq!(b.value_get(v, b"k", &w1)?, Some(&b"w1"[..]));
    assert_eq!(b.value_get(v, b"k", &w2)?, Some(&b"w2"[..]));
    assert_eq!(b.value_get(v, b"k", NO_NAMESPACE)?, Some(&b"none"[..]));
    assert_eq!(
        b.value_get(v, b"k\x00", NO_NAMESPACE)?,
        Some(&b"other key"[..])
    );
    b.clear(v, b"k", &w1)?;
    b.clear(m, b"k", &w1)?;
    assert_eq!(b.value_get(v, b"k", &w1)?, None);
    assert_eq!(b.value_get(v, b"k", &w2)?, Some(&b"w2"[..]));
    assert_eq!(b.map_get(m, b"k", &w1, b"a")?, None);
    assert_eq!(b.map_get(m, b"k", &w2, b"a")?, Some(&b"2"[..]));
    Ok(())
}

pub fn map_state(factory: &mut dyn BackendFactory) -> Result<()> {
    let mut b = full(factory);
    let b = b.as_mut();
    let m = b.register("m", StateKind::Map)?;
    let collect = |b: &mut dyn KeyedStateBackend, key: &[u8]| -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut out = Vec::new();
        b.map_for_each(m, key, NO_NAMESPACE, &mut |uk, v| {
            out.push((uk.to_vec(), v.to_vec()));
            Ok(())
        })?;
        Ok(out)
    };
    assert!(collect(b, b"k")?.is_empty());
    b.map_put(m, b"k", NO_NAMESPACE, b"b", b"2")?;
    b.map_put(m, b"k", NO_NAMESPACE, b"a", b"1")?;
    b.map_put(m, b"k", NO_NAMESPACE, b"c\xff", b"3")?;
    b.map_put(m, b"k", NO_NAMESPACE, b"", b"empty user key")?;
    b.map_put(m, b"k", NO_NAMESPACE, b"b", b"two")?;
    b.map_put(m, b"other", NO_NAMESPACE, b"a", b"x")?;
    assert_eq!(b.map_get(m, b"k", NO_NAMESPACE, b"b")?, Some(&b"two"[..]));
    assert_eq!(b.map_get(m, b"k", NO_NAMESPACE, b"zz")?, None);
    let sorted: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (b"".to_vec(), b"empty user key".to_vec()),
        (b"a".to_vec(), b"1".to_vec()),
        (b"b".to_vec(), b"two".to_vec()),
        (b"c\xff".to_vec(), b"3".to_vec()),
    ];
    assert_eq!(
        collect(b, b"k")?,
        sorted,
        "map iteration is sorted by user key"
    );
    b.map_remove(m, b"k", NO_NAMESPACE, b"a")?;
    b.map_remove(m, b"k", NO_NAMESPACE, b"never there")?;
    assert_eq!(b.map_get(m, b"k", NO_NAMESPACE, b"a")?, None);
    assert_eq!(collect(b, b"k")?.len(), 3);
    // An early error from the visitor stops the iteration and comes back.
    let mut visited = 0;
    let stopped = b.map_for_each(m, b"k", NO_NAMESPACE, &mut |_, _| {
        visited += 1;
        Err(StateError::InvalidArgument("stop".into()))
    });
    assert!(matches!(stopped, Err(StateError::InvalidArgument(_))) && visited == 1);
    b.clear(m, b"k", NO_NAMESPACE)?;
    assert!(collect(b, b"k")?.is_empty());
    assert_eq!(collect(b, b"other")?, vec![(b"a".to_vec(), b"x".to_vec())]);
    Ok(())
}

pub fn list_state(factory: &mut dyn BackendFactory) -> Result<()> {
    let mut b = full(factory);
    let b = b.as_mut();
    let l = b.register("l", StateKind::List)?;
    assert!(b.list_get(l, b"k", NO_NAMESPACE)?.is_empty());
    let items: Vec<Vec<u8>> = vec![
        b"first".to_vec(),
        Vec::new(),
        vec![0xab; 300],
        b"last".to_vec(),
    ];
    for item in &items {
        b.list_append(l, b"k", NO_NAMESPACE, item)?;
    }
    b.list_append(l, b"k", b"ns", b"elsewhere")?;
    let got = b.list_get(l, b"k", NO_NAMESPACE)?;
    assert_eq!(got.len(), 4);
    assert_eq!(got.to_vec(), items, "list keeps append order");
    b.clear(l, b"k", NO_NAMESPACE)?;
    assert!(b.list_get(l, b"k", NO_NAMESPACE)?.is_empty());
    b.list_append(l, b"k", NO_NAMESPACE, b"again")?;
    assert_eq!(
        b.list_get(l, b"k", NO_NAMESPACE)?.to_vec(),
        vec![b"again".to_vec()]
    );
    assert_eq!(
        b.list_get(l, b"k", b"ns")?.to_vec(),
        vec![b"elsewhere".to_vec()]
    );
    Ok(())
}

pub fn registration_and_kinds(factory: &mut dyn BackendFactory) -> Result<()> {
    let mut b = full(factory);
    let b = b.as_mut();
    let v = b.register("v", StateKind::Value)?;
    let m = b.register("m", StateKind::Map)?;
    assert_ne!(v, m);
    assert_eq!(
        b.register("v", StateKind::Value)?,
        v,
        "registering again returns the same id"
    );
    assert!(matches!(
        b.register("v", StateKind::List),
        Err(StateError::KindMismatch { .. })
    ));
    assert!(matches!(
        b.value_get(m, b"k", NO_NAMESPACE),
        Err(StateError::WrongKind { .. })
    ));
    assert!(matches!(
        b.list_append(v, b"k", NO_NAMESPACE, b"x"),
        Err(StateError::WrongKind { .. })
    ));
    let unknown = crate::StateId::from_index(99);
    assert!(matches!(
        b.value_put(unknown, b"k", NO_NAMESPACE, b"x"),
        Err(StateError::UnknownState(99))
    ));
    assert_eq!(
        b.states(),
        vec![
            ("v".to_owned(), StateKind::Value),
            ("m".to_owned(), StateKind::Map)
        ]
    );
    Ok(())
}

pub fn key_groups_are_enforced(factory: &mut dyn BackendFactory) -> Result<()> {
    let range = key_group_range(MAX_P, 2, 0)?;
    let mut b = factory.create(MAX_P, range);
    let b = b.as_mut();
    assert_eq!(b.key_group_range(), range);
    assert_eq!(b.max_parallelism(), MAX_P);
    let v = b.register("v", StateKind::Value)?;
    let inside = (0..)
        .map(test_key)
        .find(|k| range.contains(key_group_of(k, MAX_P)));
    let outside = (0..)
        .map(test_key)
        .find(|k| !range.contains(key_group_of(k, MAX_P)));
    let (Some(inside), Some(outside)) = (inside, outside) else {
        unreachable!("the test keys are unbounded")
    };
    b.value_put(v, &inside, NO_NAMESPACE, b"ok")?;
    assert!(matches!(
        b.value_put(v, &outside, NO_NAMESPACE, b"no"),
        Err(StateError::KeyGroupOutOfRange { .. })
    ));
    assert!(matches!(
        b.register_timer(TimeDomain::EventTime, 1, &outside, NO_NAMESPACE),
        Err(StateError::KeyGroupOutOfRange { .. })
    ));
    Ok(())
}

pub fn iteration_and_clear(factory: &mut dyn BackendFactory) -> Result<()> {
    let mut b = full(factory);
    let b = b.as_mut();
    populate(b, 200)?;
    let d = dump(b)?;
    let count = b.register("count", StateKind::Value)?;
    let mut visited = Vec::new();
    b.for_each_key(count, &mut |k, ns| {
        visited.push((k.to_vec(), ns.to_vec()));
        Ok(())
    })?;
    visited.sort();
    let expected: Vec<_> = d
        .values
        .keys()
        .filter(|s| s.0 == "count")
        .map(|s| (s.1.clone(), s.2.clone()))
        .collect();
    assert_eq!(
        visited, expected,
        "for_each_key visits each (key, namespace) once"
    );
    assert_eq!(visited.len(), 400);
    for (k, ns) in &visited {
        b.clear(count, k, ns)?;
    }
    let mut left = 0;
    b.for_each_key(count, &mut |_, _| {
        left += 1;
        Ok(())
    })?;
    assert_eq!(left, 0);
    let after = dump(b)?;
    assert!(after.values.is_empty());
    assert_eq!(after.maps, d.maps, "clearing one state leaves the others");
    assert_eq!(after.lists, d.lists);
    Ok(())
}

pub fn timers(factory: &mut dyn BackendFactory) -> Result<()> {
    use TimeDomain::{EventTime, ProcessingTime};
    let mut b = full(factory);
    let b = b.as_mut();
    assert_eq!(b.next_timer_time(EventTime), None);
    b.register_timer(EventTime, 30, b"a", b"w")?;
    b.register_timer(EventTime, 10, b"b", b"")?;
    b.register_timer(EventTime, 10, b"a", b"")?;
    b.register_timer(EventTime, 10, b"a", b"")?;
    b.register_timer(EventTime, -5, b"c", b"")?;
    b.register_timer(EventTime, 20, b"d", b"")?;
    b.register_timer(ProcessingTime, 15, b"a", b"")?;
    b.delete_timer(EventTime, 20, b"d", b"")?;
    b.delete_timer(EventTime, 99, b"never", b"")?;
    assert_eq!(b.next_timer_time(EventTime), Some(-5));
    assert_eq!(b.next_timer_time(ProcessingTime), Some(15));
    let mut out = Vec::new();
    assert_eq!(b.drain_timers(EventTime, 9, &mut out)?, 1);
    assert_eq!(b.drain_timers(EventTime, 25, &mut out)?, 2);
    let fired: Vec<(i64, &[u8])> = out.iter().map(|t| (t.time, t.key.as_slice())).collect();
    assert_eq!(fired, vec![(-5, &b"c"[..]), (10, b"a"), (10, b"b")]);
    assert!(out.iter().all(|t| t.domain == EventTime));
    // A timer registered while firing (at or before the watermark) fires on the next drain.
    b.register_timer(EventTime, 25, b"e", b"")?;
    out.clear();
    assert_eq!(b.drain_timers(EventTime, 25, &mut out)?, 1);
    assert_eq!(b.drain_timers(EventTime, 25, &mut out)?, 0);
    assert_eq!(b.next_timer_time(EventTime), Some(30));
    out.clear();
    b.drain_timers(EventTime, i64::MAX, &mut out)?;
    assert_eq!(
        out,
        vec![Timer {
            domain: EventTime,
            time: 30,
            key: b"a".to_vec(),
            namespace: b"w".to_vec()
        }]
    );
    assert_eq!(
        b.next_timer_time(ProcessingTime),
        Some(15),
        "domains are separate"
    );
    // Many timers come out in time order.
    let times: Vec<i64> = (0..500).map(|i| (i * 7919) % 1000 - 500).collect();
    for (i, t) in times.iter().enumerate() {
        b.register_timer(EventTime, *t, format!("k{i}").as_bytes(), b"")?;
    }
    out.clear();
    b.drain_timers(EventTime, i64::MAX, &mut out)?;
    let mut sorted = times.clone();
    sorted.sort_unstable();
    assert_eq!(out.iter().map(|t| t.time).collect::<Vec<_>>(), sorted);
    Ok(())
}

pub fn snapshot_round_trip(factory: &mut dyn BackendFactory) -> Result<()> {
    let mut b = full(factory);
    assert_eq!(populate(b.as_mut(), 500)?, 500);
    let before = dump(b.as_mut())?;
    assert!(before.len() > 1000);
    let bytes = snapshot_bytes(b.as_mut())?;
    let mut restored = restore_new(
        factory,
        MAX_P,
        KeyGroupRange::all(MAX_P),
        std::slice::from_ref(&bytes),
    )?;
    assert_eq!(
        dump(restored.as_mut())?,
        before,
        "restore gives back what was snapshotted"
    );
    // Restored state is live state: it can be read, written and snapshotted again.
    let count = restored.register("count", StateKind::Value)?;
    incr(restored.as_mut(), count, &test_key(1), NO_NAMESPACE)?;
    assert_eq!(
        get_u64(restored.as_mut(), count, &test_key(1), NO_NAMESPACE)?,
        Some(2)
    );
    let again = snapshot_bytes(restored.as_mut())?;
    let mut third = restore_new(factory, MAX_P, KeyGroupRange::all(MAX_P), &[again])?;
    assert_eq!(
        get_u64(third.as_mut(), count, &test_key(1), NO_NAMESPACE)?,
        Some(2)
    );
    // An empty backend snapshots to a valid, empty file.
    let mut empty = full(factory);
    let empty_bytes = snapshot_bytes(empty.as_mut())?;
    let mut from_empty = restore_new(factory, MAX_P, KeyGroupRange::all(MAX_P), &[empty_bytes])?;
    assert_eq!(dump(from_empty.as_mut())?, Dump::default());
    Ok(())
}

pub fn snapshot_is_consistent_while_writes_go_on(factory: &mut dyn BackendFactory) -> Result<()> {
    let mut b = full(factory);
    populate(b.as_mut(), 100)?;
    let before = dump(b.as_mut())?;
    let pending = b.snapshot()?;
    // Writes after the synchronous half must not leak into the snapshot.
    let count = b.register("count", StateKind::Value)?;
    let rows = b.register("rows", StateKind::List)?;
    let late = b.register("late", StateKind::Value)?;
    for i in 0..100 {
        b.value_put(count, &test_key(i), NO_NAMESPACE, b"changed")?;
        b.list_append(rows, &test_key(i), NO_NAMESPACE, b"appended")?;
        b.value_put(late, &test_key(i), NO_NAMESPACE, b"new state")?;
        b.clear(count, &test_key(i), &(i % 3).to_be_bytes())?;
    }
    b.register_timer(TimeDomain::EventTime, 1_000, &test_key(3), b"")?;
    let mut bytes = Vec::new();
    pending.write_to(&mut bytes)?;
    let mut restored = restore_new(factory, MAX_P, KeyGroupRange::all(MAX_P), &[bytes])?;
    assert_eq!(dump(restored.as_mut())?, before);
    Ok(())
}

pub fn restore_errors(factory: &mut dyn BackendFactory) -> Result<()> {
    let mut b = full(factory);
    populate(b.as_mut(), 50)?;
    let bytes = snapshot_bytes(b.as_mut())?;
    let other_p = restore_new(
        factory,
        256,
        KeyGroupRange::all(256),
        std::slice::from_ref(&bytes),
    );
    assert!(matches!(
        other_p,
        Err(StateError::MaxParallelismMismatch {
            snapshot: 128,
            backend: 256
        })
    ));
    let twice = restore_new(
        factory,
        MAX_P,
        KeyGroupRange::all(MAX_P),
        &[bytes.clone(), bytes.clone()],
    );
    assert!(
        matches!(twice, Err(StateError::CorruptSnapshot { .. })),
        "a key group in two files"
    );
    // Flip one byte in the middle (inside a section): the checksum catches it.
    let mut damaged = bytes.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x40;
    let r = restore_new(factory, MAX_P, KeyGroupRange::all(MAX_P), &[damaged]);
    assert!(
        matches!(r, Err(StateError::CorruptSnapshot { .. })),
        "damaged section: {r:?}",
        r = r.err()
    );
    let truncated = bytes[..bytes.len() - 3].to_vec();
    assert!(restore_new(factory, MAX_P, KeyGroupRange::all(MAX_P), &[truncated]).is_err());
    assert!(
        restore_new(
            factory,
            MAX_P,
            KeyGroupRange::all(MAX_P),
            &[b"not a snapshot at all".to_vec()]
        )
        .is_err()
    );
    Ok(())
}

pub fn rescale(factory: &mut dyn BackendFactory) -> Result<()> {
    // The factory is used for both sides: wrap it so one `&mut` can be lent twice in turn.
    let cell = std::cell::RefCell::new(factory);
    let mut from = |p: u16, r: KeyGroupRange| cell.borrow_mut().create(p, r);
    let mut to = |p: u16, r: KeyGroupRange| cell.borrow_mut().create(p, r);
    check_rescale(&mut from, &mut to, MAX_P, 2, 3, 600)?;
    check_rescale(&mut from, &mut to, MAX_P, 3, 1, 600)?;
    check_rescale(&mut from, &mut to, MAX_P, 1, 4, 300)?;
    Ok(())
}

/// Memory → other → memory (or any pair): a snapshot of one backend restores into the other, at the
/// same and at a different parallelism, and back.
pub fn cross_backend(a: &mut dyn BackendFactory, b: &mut dyn BackendFactory) -> Result<()> {
    let mut first = a.create(MAX_P, KeyGroupRange::all(MAX_P));
    populate(first.as_mut(), 400)?;
    let original = dump(first.as_mut())?;
    let bytes = snapshot_bytes(first.as_mut())?;
    let mut second = restore_new(b, MAX_P, KeyGroupRange::all(MAX_P), &[bytes])?;
    assert_eq!(dump(second.as_mut())?, original, "a -> b");
    let bytes = snapshot_bytes(second.as_mut())?;
    let mut third = restore_new(a, MAX_P, KeyGroupRange::all(MAX_P), &[bytes])?;
    assert_eq!(dump(third.as_mut())?, original, "a -> b -> a");
    check_rescale(a, b, MAX_P, 2, 3, 400)?;
    check_rescale(b, a, MAX_P, 3, 2, 400)?;
    let mut by_slot: BTreeMap<String, usize> = BTreeMap::new();
    for slot in original.values.keys() {
        *by_slot.entry(slot.0.clone()).or_default() += 1;
    }
    assert_eq!(
        by_slot.get("count"),
        Some(&800),
        "the populated data was really compared"
    );
    Ok(())
}

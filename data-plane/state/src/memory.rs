//! The `memory` backend: hash maps on the heap, for state that fits in memory (Flink's hashmap backend).
//!
//! Each state is one hash map from the `(key, namespace)` composite to the stored bytes. Lookups build
//! the composite in a reused buffer and values are updated in place, so steady-state reads and updates
//! neither allocate nor (de)serialise; only a new `(key, namespace)` allocates its entry.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use crate::backend::{
    DueTimers, KeyedStateBackend, PairVisitor, StateId, StateKind, TimeDomain, Timer,
};
use crate::encoding::{ListItems, composite_key, push_list_item, split_composite};
use crate::error::{Result, StateError};
use crate::inline::{InlineKey, InlineValue, KEY_INLINE};
use crate::keygroup::{KeyGroupRange, key_group_of};
use std::io::Write;

use crate::snapshot::{
    EncodedSnapshot, PendingSnapshot, SectionWriter, SnapshotRecord, SnapshotSummary,
};
use crate::timers::TimerQueue;

type FastMap<V> = HashMap<InlineKey, V, foldhash::fast::RandomState>;

#[derive(Clone)]
enum Data {
    Value(FastMap<InlineValue>),
    Map(FastMap<BTreeMap<Box<[u8]>, Vec<u8>>>),
    /// Items framed back to back (see `encoding::push_list_item`): appending is an `extend`.
    List(FastMap<Vec<u8>>),
}

#[derive(Clone)]
struct State {
    name: String,
    kind: StateKind,
    data: Data,
}

pub struct MemoryBackend {
    max_parallelism: u16,
    range: KeyGroupRange,
    /// The range is every key group (parallelism 1): no key can be out of it, so keys are not hashed
    /// to check (two xxHash64 per row of a window operator otherwise).
    owns_all: bool,
    states: Vec<State>,
    timers: TimerQueue,
    /// Composite lookup key, rebuilt per call.
    scratch: Vec<u8>,
    /// Buffer handed to `value_update` for absent values; moved into the map when stored.
    fresh: Vec<u8>,
}

impl MemoryBackend {
    pub fn new(max_parallelism: u16, range: KeyGroupRange) -> Result<Self> {
        if max_parallelism == 0 || range.end > max_parallelism {
            return Err(StateError::InvalidArgument(format!(
                "key group range {range} does not fit max_parallelism {max_parallelism}"
            )));
        }
        Ok(Self {
            max_parallelism,
            range,
            owns_all: range.start == 0 && range.end == max_parallelism,
            states: Vec::new(),
            timers: TimerQueue::new(),
            scratch: Vec::new(),
            fresh: Vec::new(),
        })
    }

    /// Entries over all states plus timers (for tests and metrics).
    pub fn len(&self) -> usize {
        let entries: usize = self
            .states
            .iter()
            .map(|s| match &s.data {
                Data::Value(m) => m.len(),
                Data::List(m) => m.len(),
                Data::Map(m) => m.values().map(BTreeMap::len).sum(),
            })
            .sum();
        entries + self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    #[inline]
    fn check_key(&self, key: &[u8]) -> Result<()> {
        if self.owns_all {
            return Ok(());
        }
        let key_group = key_group_of(key, self.max_parallelism);
        if self.range.contains(key_group) {
            Ok(())
        } else {
            Err(StateError::KeyGroupOutOfRange {
                key_group,
                range: self.range,
            })
        }
    }

    /// The state's data plus the composite of `(key, namespace)` in the scratch buffer, after checking
    /// the key's group.
    #[inline]
    fn locate(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        operation: &'static str,
        expected: StateKind,
    ) -> Result<(&mut Data, &[u8], &mut Vec<u8>)> {
        self.check_key(key)?;
        let Self {
            states,
            scratch,
            fresh,
            ..
        } = self;
        let st = states
            .get_mut(state.index())
            .ok_or(StateError::UnknownState(state.raw()))?;
        if st.kind != expected {
            return Err(StateError::WrongKind {
                state: st.name.clone(),
                operation,
                expected,
                actual: st.kind,
            });
        }
        composite_key(scratch, key, namespace);
        Ok((&mut st.data, scratch.as_slice(), fresh))
    }
}

impl KeyedStateBackend for MemoryBackend {
    fn backend_name(&self) -> &'static str {
        "memory"
    }

    fn max_parallelism(&self) -> u16 {
        self.max_parallelism
    }

    fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    fn register(&mut self, name: &str, kind: StateKind) -> Result<StateId> {
        if let Some(i) = self.states.iter().position(|s| s.name == name) {
            let existing = self.states[i].kind;
            if existing != kind {
                return Err(StateError::KindMismatch {
                    name: name.to_owned(),
                    existing,
                    requested: kind,
                });
            }
            return Ok(StateId::from_index(i));
        }
        let data = match kind {
            StateKind::Value => Data::Value(FastMap::default()),
            StateKind::Map => Data::Map(FastMap::default()),
            StateKind::List => Data::List(FastMap::default()),
        };
        self.states.push(State {
            name: name.to_owned(),
            kind,
            data,
        });
        Ok(StateId::from_index(self.states.len() - 1))
    }

    fn states(&self) -> Vec<(String, StateKind)> {
        self.states
            .iter()
            .map(|s| (s.name.clone(), s.kind))
            .collect()
    }

    fn value_get(&mut self, state: StateId, key: &[u8], namespace: &[u8]) -> Result<Option<&[u8]>> {
        let (data, composite, _) =
            self.locate(state, key, namespace, "value_get", StateKind::Value)?;
        let Data::Value(map) = data else {
            unreachable!("kind checked by locate")
        };
        Ok(map.get(composite).map(InlineValue::as_slice))
    }

    fn value_put(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let (data, composite, _) =
            self.locate(state, key, namespace, "value_put", StateKind::Value)?;
        let Data::Value(map) = data else {
            unreachable!("kind checked by locate")
        };
        match map.get_mut(composite) {
            Some(stored) => stored.set(value),
            None => {
                map.insert(InlineKey::new(composite), InlineValue::new(value));
            }
        }
        Ok(())
    }

    fn value_update(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        update: &mut dyn FnMut(&mut Vec<u8>, bool) -> bool,
    ) -> Result<()> {
        let (data, composite, fresh) =
            self.locate(state, key, namespace, "value_update", StateKind::Value)?;
        let Data::Value(map) = data else {
            unreachable!("kind checked by locate")
        };
        if composite.len() <= KEY_INLINE {
            // An inline key costs no allocation to build, so the entry API can hash and probe once
            // for the read, the insert and the delete alike (a window's first row and its firing).
            match map.entry(InlineKey::new(composite)) {
                Entry::Occupied(mut stored) => {
                    if !stored.get_mut().update(fresh, update) {
                        stored.remove();
                    }
                }
                Entry::Vacant(slot) => {
                    fresh.clear();
                    if update(fresh, false) {
                        slot.insert(InlineValue::from_vec(fresh));
                    }
                }
            }
            return Ok(());
        }
        match map.get_mut(composite) {
            Some(stored) => {
                if !stored.update(fresh, update) {
                    map.remove(composite);
                }
            }
            None => {
                fresh.clear();
                if update(fresh, false) {
                    map.insert(InlineKey::new(composite), InlineValue::from_vec(fresh));
                }
            }
        }
        Ok(())
    }

    fn map_get(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
    ) -> Result<Option<&[u8]>> {
        let (data, composite, _) = self.locate(state, key, namespace, "map_get", StateKind::Map)?;
        let Data::Map(map) = data else {
            unreachable!("kind checked by locate")
        };
        Ok(map
            .get(composite)
            .and_then(|entries| entries.get(user_key))
            .map(Vec::as_slice))
    }

    fn map_put(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        let (data, composite, _) = self.locate(state, key, namespace, "map_put", StateKind::Map)?;
        let Data::Map(map) = data else {
            unreachable!("kind checked by locate")
        };
        let entries = match map.get_mut(composite) {
            Some(entries) => entries,
            None => map.entry(InlineKey::new(composite)).or_default(),
        };
        match entries.get_mut(user_key) {
            Some(stored) => {
                stored.clear();
                stored.extend_from_slice(value);
            }
            None => {
                entries.insert(user_key.into(), value.to_vec());
            }
        }
        Ok(())
    }

    fn map_remove(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
    ) -> Result<()> {
        let (data, composite, _) =
            self.locate(state, key, namespace, "map_remove", StateKind::Map)?;
        let Data::Map(map) = data else {
            unreachable!("kind checked by locate")
        };
        if let Some(entries) = map.get_mut(composite) {
            entries.remove(user_key);
            if entries.is_empty() {
                map.remove(composite);
            }
        }
        Ok(())
    }

    fn map_for_each(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        visit: &mut PairVisitor<'_>,
    ) -> Result<()> {
        let (data, composite, _) =
            self.locate(state, key, namespace, "map_for_each", StateKind::Map)?;
        let Data::Map(map) = data else {
            unreachable!("kind checked by locate")
        };
        if let Some(entries) = map.get(composite) {
            for (user_key, value) in entries {
                visit(user_key, value)?;
            }
        }
        Ok(())
    }

    fn list_append(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        item: &[u8],
    ) -> Result<()> {
        let (data, composite, _) =
            self.locate(state, key, namespace, "list_append", StateKind::List)?;
        let Data::List(map) = data else {
            unreachable!("kind checked by locate")
        };
        match map.get_mut(composite) {
            Some(framed) => push_list_item(framed, item),
            None => {
                let mut framed = Vec::with_capacity(item.len() + 2);
                push_list_item(&mut framed, item);
                map.insert(InlineKey::new(composite), framed);
            }
        }
        Ok(())
    }

    fn list_get(&mut self, state: StateId, key: &[u8], namespace: &[u8]) -> Result<ListItems<'_>> {
        let (data, composite, _) =
            self.locate(state, key, namespace, "list_get", StateKind::List)?;
        let Data::List(map) = data else {
            unreachable!("kind checked by locate")
        };
        match map.get(composite) {
            Some(framed) => ListItems::parse(framed),
            None => Ok(ListItems::default()),
        }
    }

    fn clear(&mut self, state: StateId, key: &[u8], namespace: &[u8]) -> Result<()> {
        self.check_key(key)?;
        let st = self
            .states
            .get_mut(state.index())
            .ok_or(StateError::UnknownState(state.raw()))?;
        composite_key(&mut self.scratch, key, namespace);
        let composite = self.scratch.as_slice();
        match &mut st.data {
            Data::Value(map) => {
                map.remove(composite);
            }
            Data::List(map) => {
                map.remove(composite);
            }
            Data::Map(map) => {
                map.remove(composite);
            }
        }
        Ok(())
    }

    fn for_each_key(&mut self, state: StateId, visit: &mut PairVisitor<'_>) -> Result<()> {
        let st = self
            .states
            .get(state.index())
            .ok_or(StateError::UnknownState(state.raw()))?;
        let mut each = |composite: &[u8]| -> Result<()> {
            let (key, namespace) = split_composite(composite)?;
            visit(key, namespace)
        };
        match &st.data {
            Data::Value(map) => map.keys().try_for_each(|c| each(c.as_slice())),
            Data::List(map) => map.keys().try_for_each(|c| each(c.as_slice())),
            Data::Map(map) => map.keys().try_for_each(|c| each(c.as_slice())),
        }
    }

    fn register_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        self.check_key(key)?;
        self.timers.register(domain, time, key, namespace);
        Ok(())
    }

    fn register_new_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        self.check_key(key)?;
        self.timers.register_new(domain, time, key, namespace);
        Ok(())
    }

    fn delete_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        self.check_key(key)?;
        self.timers.delete(domain, time, key, namespace);
        Ok(())
    }

    fn next_timer_time(&self, domain: TimeDomain) -> Option<i64> {
        self.timers.next_time(domain)
    }

    fn drain_timers(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        out: &mut Vec<Timer>,
    ) -> Result<usize> {
        self.timers.drain(domain, up_to, out)
    }

    fn drain_timers_into(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        out: &mut DueTimers,
    ) -> Result<usize> {
        self.timers.drain_into(domain, up_to, out)
    }

    fn snapshot(&mut self) -> Result<Box<dyn PendingSnapshot>> {
        // The consistent view is a clone of the tables: keys and small values sit inline in the
        // slots, so cloning is mostly a table copy, about half the cost of encoding (measured with
        // 1M counters); encoding by key group happens in `write_to`, off the processing thread.
        Ok(Box::new(MemorySnapshot {
            max_parallelism: self.max_parallelism,
            range: self.range,
            states: self.states.clone(),
            timers: self.timers.clone(),
        }))
    }

    fn restore_record(&mut self, _key_group: u16, record: SnapshotRecord<'_>) -> Result<()> {
        match record {
            SnapshotRecord::Value {
                state,
                key,
                namespace,
                value,
            } => self.value_put(state, key, namespace, value),
            SnapshotRecord::MapEntry {
                state,
                key,
                namespace,
                user_key,
                value,
            } => self.map_put(state, key, namespace, user_key, value),
            SnapshotRecord::List {
                state,
                key,
                namespace,
                items,
            } => {
                let (data, composite, _) =
                    self.locate(state, key, namespace, "restore list", StateKind::List)?;
                let Data::List(map) = data else {
                    unreachable!("kind checked by locate")
                };
                map.entry(InlineKey::new(composite))
                    .or_default()
                    .extend_from_slice(items.framed());
                Ok(())
            }
            SnapshotRecord::Timer {
                domain,
                time,
                key,
                namespace,
            } => self.register_timer(domain, time, key, namespace),
        }
    }
}

/// A memory backend's state as of `snapshot()`, encoded and written by `write_to`.
struct MemorySnapshot {
    max_parallelism: u16,
    range: KeyGroupRange,
    states: Vec<State>,
    timers: TimerQueue,
}

impl PendingSnapshot for MemorySnapshot {
    fn write_to(self: Box<Self>, out: &mut dyn Write) -> Result<SnapshotSummary> {
        let encoded = self.encode()?;
        Box::new(encoded).write_to(out)
    }
}

impl MemorySnapshot {
    /// Sorts every entry into the section of its key group.
    fn encode(&self) -> Result<EncodedSnapshot> {
        let max_p = self.max_parallelism;
        let range = self.range;
        let mut sections: Vec<SectionWriter> =
            (0..range.len()).map(|_| SectionWriter::new()).collect();
        let section = |key: &[u8]| -> Result<usize> {
            let key_group = key_group_of(key, max_p);
            if range.contains(key_group) {
                Ok(usize::from(key_group - range.start))
            } else {
                Err(StateError::KeyGroupOutOfRange { key_group, range })
            }
        };
        for (index, st) in self.states.iter().enumerate() {
            let index = index as u32;
            match &st.data {
                Data::Value(map) => {
                    for (composite, value) in map {
                        let (key, ns) = split_composite(composite.as_slice())?;
                        sections[section(key)?].value(index, key, ns, value.as_slice());
                    }
                }
                Data::List(map) => {
                    for (composite, framed) in map {
                        let (key, ns) = split_composite(composite.as_slice())?;
                        sections[section(key)?].list(index, key, ns, framed);
                    }
                }
                Data::Map(map) => {
                    for (composite, entries) in map {
                        let (key, ns) = split_composite(composite.as_slice())?;
                        let at = section(key)?;
                        for (user_key, value) in entries {
                            sections[at].map_entry(index, key, ns, user_key, value);
                        }
                    }
                }
            }
        }
        self.timers.for_each(&mut |domain, time, key, ns| {
            sections[section(key)?].timer(domain, time, key, ns);
            Ok(())
        })?;
        Ok(EncodedSnapshot {
            max_parallelism: max_p,
            range,
            states: self
                .states
                .iter()
                .map(|s| (s.name.clone(), s.kind))
                .collect(),
            sections: sections
                .into_iter()
                .enumerate()
                .filter(|(_, s)| !s.is_empty())
                .map(|(i, s)| (range.start + i as u16, s))
                .collect(),
        })
    }
}

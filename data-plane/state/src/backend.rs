//! The keyed state trait every backend implements, and the types of its API.

use std::fmt;

use crate::encoding::ListItems;
use crate::error::Result;
use crate::keygroup::KeyGroupRange;
use crate::snapshot::{self, PendingSnapshot, ReadSeek, RestoreSummary, SnapshotRecord};

/// A callback over pairs of byte strings: `(user_key, value)` for [`KeyedStateBackend::map_for_each`],
/// `(key, namespace)` for [`KeyedStateBackend::for_each_key`]. An `Err` stops the iteration and is
/// returned.
pub type PairVisitor<'a> = dyn FnMut(&[u8], &[u8]) -> Result<()> + 'a;

/// The namespace of state that has none (Flink's `VoidNamespace`).
pub const NO_NAMESPACE: &[u8] = &[];

/// What a registered state holds per `(key, namespace)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StateKind {
    /// One byte string.
    Value,
    /// A sorted map of byte strings to byte strings.
    Map,
    /// An append-only list of byte strings.
    List,
}

impl StateKind {
    pub(crate) fn tag(self) -> u8 {
        match self {
            StateKind::Value => 1,
            StateKind::Map => 2,
            StateKind::List => 3,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(StateKind::Value),
            2 => Some(StateKind::Map),
            3 => Some(StateKind::List),
            _ => None,
        }
    }
}

impl fmt::Display for StateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StateKind::Value => "value",
            StateKind::Map => "map",
            StateKind::List => "list",
        })
    }
}

/// Handle of a registered state, valid for the backend that returned it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StateId(u32);

impl StateId {
    /// For backend implementations: the id of the `index`-th registered state.
    pub fn from_index(index: usize) -> Self {
        // A backend holds far fewer than 2^32 states (each is a name in the operator's code).
        Self(u32::try_from(index).unwrap_or(u32::MAX))
    }

    pub fn index(self) -> usize {
        self.0 as usize
    }

    pub(crate) fn raw(self) -> u32 {
        self.0
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TimeDomain {
    EventTime,
    ProcessingTime,
}

impl TimeDomain {
    pub(crate) fn tag(self) -> u8 {
        match self {
            TimeDomain::EventTime => 0,
            TimeDomain::ProcessingTime => 1,
        }
    }

    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            0 => Some(TimeDomain::EventTime),
            1 => Some(TimeDomain::ProcessingTime),
            _ => None,
        }
    }
}

/// A due timer, removed from the backend by [`KeyedStateBackend::drain_timers`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timer {
    pub domain: TimeDomain,
    /// Milliseconds (event time or processing time, per `domain`).
    pub time: i64,
    pub key: Vec<u8>,
    pub namespace: Vec<u8>,
}

/// Due timers drained by [`KeyedStateBackend::drain_timers_into`]: the keys and namespaces back to
/// back in one buffer, so that firing many timers (a window of every key) allocates nothing per timer.
#[derive(Clone, Debug, Default)]
pub struct DueTimers {
    bytes: Vec<u8>,
    /// `(time, end of the key in bytes, end of the namespace in bytes)`.
    timers: Vec<(i64, usize, usize)>,
}

impl DueTimers {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.timers.clear();
    }

    pub fn len(&self) -> usize {
        self.timers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    pub fn push(&mut self, time: i64, key: &[u8], namespace: &[u8]) {
        self.bytes.extend_from_slice(key);
        let key_end = self.bytes.len();
        self.bytes.extend_from_slice(namespace);
        self.timers.push((time, key_end, self.bytes.len()));
    }

    /// `(time, key, namespace)` of the `i`-th timer.
    pub fn get(&self, i: usize) -> (i64, &[u8], &[u8]) {
        let (time, key_end, ns_end) = self.timers[i];
        let start = match i {
            0 => 0,
            _ => self.timers[i - 1].2,
        };
        (
            time,
            &self.bytes[start..key_end],
            &self.bytes[key_end..ns_end],
        )
    }
}

/// Keyed state of one operator subtask: value, map and list state per `(key, namespace)`, and timers.
///
/// * A backend owns the key groups [`key_group_range`](Self::key_group_range) of `max_parallelism`; every
///   keyed call fails with [`StateError::KeyGroupOutOfRange`](crate::StateError::KeyGroupOutOfRange) for a
///   key whose [`key_group_of`](crate::key_group_of) is elsewhere.
/// * Keys, namespaces and values are byte strings; `key` must be the canonical encoding the hash exchange
///   hashed. Use [`NO_NAMESPACE`] for state without a namespace; window operators use the window.
/// * Methods take `&mut self` so that reads can return borrowed bytes (from the memory backend's map, or
///   from a buffer the RocksDB backend reuses) without allocating. The trait is dyn-compatible: the
///   runtime holds a `Box<dyn KeyedStateBackend>` chosen from configuration.
/// * One backend per operator subtask; state names are unique within it.
pub trait KeyedStateBackend: Send {
    /// `"memory"` or `"rocksdb"`.
    fn backend_name(&self) -> &'static str;

    fn max_parallelism(&self) -> u16;

    fn key_group_range(&self) -> KeyGroupRange;

    /// Registers state `name` of `kind`, or returns the existing id when it is registered (by an earlier
    /// call or by [`restore`](Self::restore)) with the same kind.
    fn register(&mut self, name: &str, kind: StateKind) -> Result<StateId>;

    /// `(name, kind)` of every registered state, in id order.
    fn states(&self) -> Vec<(String, StateKind)>;

    // ---- value state ----

    fn value_get(&mut self, state: StateId, key: &[u8], namespace: &[u8]) -> Result<Option<&[u8]>>;

    fn value_put(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        value: &[u8],
    ) -> Result<()>;

    /// Read-modify-write with one lookup. `update(bytes, present)` gets the current value (`present`
    /// true) or an empty buffer (`present` false), edits `bytes` in place, and returns `true` to store
    /// them or `false` to delete the entry. The memory backend hands out its stored buffer: updating a
    /// fixed-size value (a counter) neither allocates nor copies.
    fn value_update(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        update: &mut dyn FnMut(&mut Vec<u8>, bool) -> bool,
    ) -> Result<()>;

    // ---- map state ----

    fn map_get(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
    ) -> Result<Option<&[u8]>>;

    fn map_put(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
        value: &[u8],
    ) -> Result<()>;

    fn map_remove(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
    ) -> Result<()>;

    /// Calls `visit(user_key, value)` for every entry, in ascending byte order of `user_key`.
    fn map_for_each(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        visit: &mut PairVisitor<'_>,
    ) -> Result<()>;

    // ---- list state ----

    fn list_append(
        &mut self,
        state: StateId,
        key: &[u8],
        namespace: &[u8],
        item: &[u8],
    ) -> Result<()>;

    /// The items in append order (empty when there are none).
    fn list_get(&mut self, state: StateId, key: &[u8], namespace: &[u8]) -> Result<ListItems<'_>>;

    // ---- any kind ----

    /// Removes the state of `(key, namespace)`: the value, every map entry, or the whole list.
    fn clear(&mut self, state: StateId, key: &[u8], namespace: &[u8]) -> Result<()>;

    /// Calls `visit(key, namespace)` once for every `(key, namespace)` that has state in `state`, in
    /// no particular order. `visit` must not expect to see writes it makes meanwhile (it cannot: the
    /// backend is borrowed).
    fn for_each_key(&mut self, state: StateId, visit: &mut PairVisitor<'_>) -> Result<()>;

    // ---- timers ----

    /// Registers a timer; registering the same `(domain, time, key, namespace)` again is a no-op.
    fn register_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()>;

    /// Registers a timer the caller knows is not registered yet (it was created together with the
    /// state it fires for): a backend may skip the duplicate check. Should it be registered after
    /// all, it still fires once.
    fn register_new_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()> {
        self.register_timer(domain, time, key, namespace)
    }

    /// Deletes a timer if it is registered.
    fn delete_timer(
        &mut self,
        domain: TimeDomain,
        time: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> Result<()>;

    /// The time of the earliest timer of `domain`.
    fn next_timer_time(&self, domain: TimeDomain) -> Option<i64>;

    /// Removes every timer of `domain` with `time <= up_to` and appends them to `out` ordered by time
    /// (then by key and namespace bytes, so firing order is deterministic). Returns how many it appended.
    /// Timers registered while firing these (at `time <= up_to`) are returned by the next call: loop
    /// until it returns 0.
    fn drain_timers(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        out: &mut Vec<Timer>,
    ) -> Result<usize>;

    /// [`drain_timers`](Self::drain_timers) of `domain` into `out` (appended), in the same order.
    fn drain_timers_into(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        out: &mut DueTimers,
    ) -> Result<usize> {
        let mut timers = Vec::new();
        let n = self.drain_timers(domain, up_to, &mut timers)?;
        for t in &timers {
            out.push(t.time, &t.key, &t.namespace);
        }
        Ok(n)
    }

    // ---- snapshot and restore ----

    /// Takes a consistent snapshot of all state and timers. This is the synchronous part, run between
    /// records; the returned job writes the canonical bytes (see [`crate::snapshot`]) and can run on
    /// another thread while processing goes on.
    fn snapshot(&mut self) -> Result<Box<dyn PendingSnapshot>>;

    /// For [`restore`](Self::restore): writes one decoded snapshot record. `state` is already registered
    /// with the record's kind and `key_group` is inside this backend's range.
    fn restore_record(&mut self, key_group: u16, record: SnapshotRecord<'_>) -> Result<()>;

    /// Restores this backend's key groups from any set of snapshot files (written by either backend, at
    /// any parallelism with the same `max_parallelism`), skipping the sections of other key groups.
    /// States found in the files are registered. Call it on a new, empty backend.
    fn restore(&mut self, sources: &mut [&mut dyn ReadSeek]) -> Result<RestoreSummary> {
        snapshot::restore_into(self, sources)
    }
}

//! Timers of both backends, kept on the heap (like Flink's `HEAP` timer service): ordered by time for
//! "fire everything ≤ t", deduplicated per `(domain, time, key, namespace)`.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap};

use crate::backend::{DueTimers, TimeDomain, Timer};
use crate::encoding::{composite_key, split_composite};
use crate::error::Result;
use crate::inline::InlineKey;

/// `(domain, time, key, namespace)` of each timer.
pub type TimerVisitor<'a> = dyn FnMut(TimeDomain, i64, &[u8], &[u8]) -> Result<()> + 'a;

/// The timers of one time. Composites are inline (no pointer to chase when a probe compares keys).
#[derive(Clone, Default)]
struct Bucket {
    /// Timers registered with a lookup (a map to `()` for the entry API: one hash, one probe).
    set: HashMap<InlineKey, (), foldhash::fast::RandomState>,
    /// Timers the caller promised were new ([`TimerQueue::register_new`]): appended without a
    /// probe, which in a table of 100k timers is a cache miss. Should the promise be broken, the
    /// duplicate is dropped when the bucket is drained or visited; only `len` would count it.
    appended: Vec<InlineKey>,
}

impl Bucket {
    fn len(&self) -> usize {
        self.set.len() + self.appended.len()
    }

    fn is_empty(&self) -> bool {
        self.set.is_empty() && self.appended.is_empty()
    }

    /// Every composite once, sorted.
    fn into_sorted(self) -> Vec<InlineKey> {
        let mut all: Vec<InlineKey> = self.set.into_keys().chain(self.appended).collect();
        all.sort_unstable_by(InlineKey::cmp_bytes);
        all.dedup_by(|a, b| a.cmp_bytes(b).is_eq());
        all
    }
}

/// Two time-ordered queues (event time, processing time). Timers at the same time share a bucket keyed
/// by the `(key, namespace)` composite, so re-registering a timer (window operators do it per record)
/// is one tree lookup and one hash probe, without allocating.
#[derive(Clone, Default)]
pub struct TimerQueue {
    queues: [BTreeMap<i64, Bucket>; 2],
    scratch: Vec<u8>,
}

impl TimerQueue {
    pub fn new() -> Self {
        Self::default()
    }

    fn queue(&mut self, domain: TimeDomain) -> &mut BTreeMap<i64, Bucket> {
        &mut self.queues[usize::from(domain.tag())]
    }

    /// Returns whether the timer was new.
    pub fn register(
        &mut self,
        domain: TimeDomain,
        time: i64,
        key: &[u8],
        namespace: &[u8],
    ) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        composite_key(&mut scratch, key, namespace);
        let bucket = self.queue(domain).entry(time).or_default();
        let new = match bucket.set.entry(InlineKey::new(&scratch)) {
            Entry::Occupied(_) => false,
            Entry::Vacant(slot) => {
                slot.insert(());
                true
            }
        };
        self.scratch = scratch;
        new
    }

    /// Registers a timer the caller knows is not registered (see [`Bucket::appended`]).
    pub fn register_new(&mut self, domain: TimeDomain, time: i64, key: &[u8], namespace: &[u8]) {
        let mut scratch = std::mem::take(&mut self.scratch);
        composite_key(&mut scratch, key, namespace);
        let bucket = self.queue(domain).entry(time).or_default();
        bucket.appended.push(InlineKey::new(&scratch));
        self.scratch = scratch;
    }

    /// Returns whether the timer existed.
    pub fn delete(&mut self, domain: TimeDomain, time: i64, key: &[u8], namespace: &[u8]) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        composite_key(&mut scratch, key, namespace);
        let queue = self.queue(domain);
        let mut existed = false;
        if let Some(bucket) = queue.get_mut(&time) {
            existed = bucket.set.remove(scratch.as_slice()).is_some();
            let appended = bucket.appended.len();
            bucket
                .appended
                .retain(|c| c.as_slice() != scratch.as_slice());
            existed |= bucket.appended.len() != appended;
            if bucket.is_empty() {
                queue.remove(&time);
            }
        }
        self.scratch = scratch;
        existed
    }

    pub fn next_time(&self, domain: TimeDomain) -> Option<i64> {
        self.queues[usize::from(domain.tag())]
            .first_key_value()
            .map(|(&t, _)| t)
    }

    /// Removes the timers with `time <= up_to`, appending them to `out` by time, then by composite bytes.
    pub fn drain(&mut self, domain: TimeDomain, up_to: i64, out: &mut Vec<Timer>) -> Result<usize> {
        self.drain_with(domain, up_to, |time, key, namespace| {
            out.push(Timer {
                domain,
                time,
                key: key.to_vec(),
                namespace: namespace.to_vec(),
            })
        })
    }

    /// [`drain`](Self::drain) into one buffer (see [`DueTimers`]).
    pub fn drain_into(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        out: &mut DueTimers,
    ) -> Result<usize> {
        self.drain_with(domain, up_to, |time, key, namespace| {
            out.push(time, key, namespace)
        })
    }

    /// Removes the due timers in order, handing each (time, key, namespace) to `f`.
    fn drain_with(
        &mut self,
        domain: TimeDomain,
        up_to: i64,
        mut f: impl FnMut(i64, &[u8], &[u8]),
    ) -> Result<usize> {
        let queue = self.queue(domain);
        let mut n = 0;
        while let Some(entry) = queue.first_entry() {
            if *entry.key() > up_to {
                break;
            }
            let (time, bucket) = entry.remove_entry();
            for composite in bucket.into_sorted() {
                let (key, namespace) = split_composite(composite.as_slice())?;
                f(time, key, namespace);
                n += 1;
            }
        }
        Ok(n)
    }

    pub fn len(&self) -> usize {
        self.queues
            .iter()
            .flat_map(|q| q.values())
            .map(Bucket::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(BTreeMap::is_empty)
    }

    /// Calls `visit(domain, time, key, namespace)` for every timer (for snapshots).
    pub fn for_each(&self, visit: &mut TimerVisitor<'_>) -> Result<()> {
        for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
            for (&time, bucket) in &self.queues[usize::from(domain.tag())] {
                let mut composites: Vec<&[u8]> = bucket
                    .set
                    .keys()
                    .chain(&bucket.appended)
                    .map(InlineKey::as_slice)
                    .collect();
                if !bucket.appended.is_empty() {
                    composites.sort_unstable();
                    composites.dedup();
                }
                for composite in composites {
                    let (key, namespace) = split_composite(composite)?;
                    visit(domain, time, key, namespace)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drains_in_time_order_and_deduplicates() {
        let mut q = TimerQueue::new();
        assert!(q.register(TimeDomain::EventTime, 20, b"b", b""));
        assert!(q.register(TimeDomain::EventTime, 10, b"a", b"w1"));
        assert!(!q.register(TimeDomain::EventTime, 10, b"a", b"w1"));
        assert!(q.register(TimeDomain::EventTime, 10, b"a", b"w0"));
        assert!(q.register(TimeDomain::ProcessingTime, 5, b"p", b""));
        assert_eq!(q.len(), 4);
        assert_eq!(q.next_time(TimeDomain::EventTime), Some(10));
        let mut out = Vec::new();
        assert_eq!(q.drain(TimeDomain::EventTime, 15, &mut out).unwrap(), 2);
        let got: Vec<_> = out.iter().map(|t| (t.time, t.namespace.clone())).collect();
        assert_eq!(got, vec![(10, b"w0".to_vec()), (10, b"w1".to_vec())]);
        assert!(q.delete(TimeDomain::EventTime, 20, b"b", b""));
        assert!(!q.delete(TimeDomain::EventTime, 20, b"b", b""));
        assert_eq!(q.next_time(TimeDomain::EventTime), None);
        assert_eq!(q.next_time(TimeDomain::ProcessingTime), Some(5));
    }

    #[test]
    fn draining_into_one_buffer_gives_what_drain_gives() {
        let mut a = TimerQueue::new();
        for (time, key, ns) in [
            (30, &b"k2"[..], &b"w"[..]),
            (10, b"k1", b"w1"),
            (10, b"", b"w0"),
            (20, b"k10", b""),
            (40, b"late", b"w"),
        ] {
            a.register_new(TimeDomain::EventTime, time, key, ns);
        }
        a.register(TimeDomain::EventTime, 10, b"k0", b"w1");
        a.register_new(TimeDomain::EventTime, 10, b"k1", b"w1");
        let mut b = a.clone();
        let mut expected = Vec::new();
        assert_eq!(
            a.drain(TimeDomain::EventTime, 30, &mut expected).unwrap(),
            5
        );
        let mut due = DueTimers::default();
        due.push(1, b"already", b"there");
        assert_eq!(
            b.drain_into(TimeDomain::EventTime, 30, &mut due).unwrap(),
            5
        );
        assert_eq!(due.len(), 6);
        assert_eq!(due.get(0), (1, &b"already"[..], &b"there"[..]));
        let got: Vec<Timer> = (1..due.len())
            .map(|i| {
                let (time, key, namespace) = due.get(i);
                Timer {
                    domain: TimeDomain::EventTime,
                    time,
                    key: key.to_vec(),
                    namespace: namespace.to_vec(),
                }
            })
            .collect();
        assert_eq!(got, expected);
        assert_eq!(b.next_time(TimeDomain::EventTime), Some(40));
    }

    #[test]
    fn timers_registered_as_new_fire_once_even_if_they_were_not() {
        let mut q = TimerQueue::new();
        q.register_new(TimeDomain::EventTime, 10, b"b", b"w");
        q.register_new(TimeDomain::EventTime, 10, b"a", b"w");
        assert!(q.register(TimeDomain::EventTime, 10, b"c", b"w"));
        // Broken promises: already there, from either path.
        q.register_new(TimeDomain::EventTime, 10, b"a", b"w");
        q.register_new(TimeDomain::EventTime, 10, b"c", b"w");
        let mut seen = Vec::new();
        q.for_each(&mut |_, time, key, ns| {
            seen.push((time, key.to_vec(), ns.to_vec()));
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(seen.len(), 3);
        assert!(q.delete(TimeDomain::EventTime, 10, b"b", b"w"));
        let mut out = Vec::new();
        assert_eq!(q.drain(TimeDomain::EventTime, 10, &mut out).unwrap(), 2);
        let keys: Vec<_> = out.iter().map(|t| t.key.clone()).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"c".to_vec()]);
        assert!(q.is_empty());
    }
}

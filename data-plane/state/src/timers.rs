//! Timers of both backends, kept on the heap (like Flink's `HEAP` timer service): ordered by time for
//! "fire everything ≤ t", deduplicated per `(domain, time, key, namespace)`.

use std::collections::{BTreeMap, HashSet};

use crate::backend::{TimeDomain, Timer};
use crate::encoding::{composite_key, split_composite};
use crate::error::Result;

/// `(domain, time, key, namespace)` of each timer.
pub type TimerVisitor<'a> = dyn FnMut(TimeDomain, i64, &[u8], &[u8]) -> Result<()> + 'a;

type Bucket = HashSet<Box<[u8]>, foldhash::fast::RandomState>;

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
        let new = !bucket.contains(scratch.as_slice());
        if new {
            bucket.insert(scratch.as_slice().into());
        }
        self.scratch = scratch;
        new
    }

    /// Returns whether the timer existed.
    pub fn delete(&mut self, domain: TimeDomain, time: i64, key: &[u8], namespace: &[u8]) -> bool {
        let mut scratch = std::mem::take(&mut self.scratch);
        composite_key(&mut scratch, key, namespace);
        let queue = self.queue(domain);
        let mut existed = false;
        if let Some(bucket) = queue.get_mut(&time) {
            existed = bucket.remove(scratch.as_slice());
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
        let queue = self.queue(domain);
        let before = out.len();
        while let Some(entry) = queue.first_entry() {
            if *entry.key() > up_to {
                break;
            }
            let (time, bucket) = entry.remove_entry();
            let mut composites: Vec<Box<[u8]>> = bucket.into_iter().collect();
            composites.sort_unstable();
            for composite in composites {
                let (key, namespace) = split_composite(&composite)?;
                out.push(Timer {
                    domain,
                    time,
                    key: key.to_vec(),
                    namespace: namespace.to_vec(),
                });
            }
        }
        Ok(out.len() - before)
    }

    pub fn len(&self) -> usize {
        self.queues
            .iter()
            .flat_map(|q| q.values())
            .map(HashSet::len)
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.queues.iter().all(BTreeMap::is_empty)
    }

    /// Calls `visit(domain, time, key, namespace)` for every timer (for snapshots).
    pub fn for_each(&self, visit: &mut TimerVisitor<'_>) -> Result<()> {
        for domain in [TimeDomain::EventTime, TimeDomain::ProcessingTime] {
            for (&time, bucket) in &self.queues[usize::from(domain.tag())] {
                for composite in bucket {
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
}

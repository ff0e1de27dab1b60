//! Watermarks at a source subtask: one per split (Kafka partition, file),
//! the subtask's watermark being the minimum over splits that are neither
//! finished nor idle (no data for the idle timeout), as Flink's
//! `WatermarksWithIdleness` over per-split generators.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::{Duration, Instant};

use arrow_array::{Array, RecordBatch};
use sluice_sql::Expr;

use crate::error::Result;
use crate::eval::{EvalContext, evaluate_to_array, timestamps_ms};

struct Split {
    max: Option<i64>,
    last_data: Instant,
    finished: bool,
}

pub struct WatermarkGen {
    expr: Expr,
    splits: Vec<Split>,
    idle_timeout: Option<Duration>,
    emitted: i64,
}

impl WatermarkGen {
    pub fn new(expr: Expr, splits: usize, idle_timeout: Option<Duration>) -> Self {
        let now = Instant::now();
        WatermarkGen {
            expr,
            splits: (0..splits)
                .map(|_| Split {
                    max: None,
                    last_data: now,
                    finished: false,
                })
                .collect(),
            idle_timeout,
            emitted: i64::MIN,
        }
    }

    /// After a restore: never emit below the watermark the job had reached.
    pub fn set_floor(&mut self, watermark: i64) {
        self.emitted = self.emitted.max(watermark);
    }

    pub fn observe(&mut self, split: usize, batch: &RecordBatch) -> Result<()> {
        if split >= self.splits.len() {
            self.splits.resize_with(split + 1, || Split {
                max: None,
                last_data: Instant::now(),
                finished: false,
            });
        }
        let v = evaluate_to_array(&self.expr, batch, &EvalContext::default())?;
        let ts = timestamps_ms(&v)?;
        let m = if ts.null_count() == 0 {
            ts.values().iter().copied().max()
        } else {
            ts.iter().flatten().max()
        };
        let s = &mut self.splits[split];
        s.last_data = Instant::now();
        if let Some(m) = m {
            s.max = Some(s.max.map_or(m, |x| x.max(m)));
        }
        Ok(())
    }

    pub fn finish_split(&mut self, split: usize) {
        if let Some(s) = self.splits.get_mut(split) {
            s.finished = true;
        }
    }

    /// The watermark to emit now, if it advanced.
    pub fn advance(&mut self) -> Option<i64> {
        if self.splits.is_empty() {
            // A reader without splits (more subtasks than Kafka partitions) never reads
            // anything: like Flink's idle source readers it must hold nobody back, so
            // its event time goes to the end at once while the subtask stays for checkpoints.
            return (self.emitted < i64::MAX).then(|| {
                self.emitted = i64::MAX;
                i64::MAX
            });
        }
        let now = Instant::now();
        let mut min: Option<i64> = None;
        for s in &self.splits {
            if s.finished {
                continue;
            }
            let idle = self
                .idle_timeout
                .map(|t| now.duration_since(s.last_data) >= t)
                .unwrap_or(false);
            if idle {
                continue;
            }
            match s.max {
                // An active split without data yet holds the watermark back.
                None => return None,
                Some(m) => min = Some(min.map_or(m, |x: i64| x.min(m))),
            }
        }
        let w = min?;
        if w > self.emitted {
            self.emitted = w;
            Some(w)
        } else {
            None
        }
    }

    /// The watermark this subtask holds its alignment group back with: `i64::MAX` when every split is
    /// finished or idle (as idleness lets the others' watermarks pass, it must not pause them either),
    /// `i64::MIN` before the first watermark.
    pub fn alignment_watermark(&self) -> i64 {
        let now = Instant::now();
        let active = self.splits.iter().any(|s| {
            !s.finished
                && self
                    .idle_timeout
                    .is_none_or(|t| now.duration_since(s.last_data) < t)
        });
        if active { self.emitted } else { i64::MAX }
    }
}

/// Watermark alignment of the subtasks of one source vertex (Flink's `scan.watermark.alignment.*`): a
/// subtask whose watermark runs more than a maximum drift ahead of the slowest one stops reading until
/// the slowest catches up. Every operator downstream takes the minimum watermark of its inputs, so
/// what the fast subtask reads meanwhile can only wait in state (windows that cannot fire yet): with
/// two files 5,000 s of event time apart, W2 at p=2 held 1.5 GB of windows that way. Pausing only
/// changes when rows are read, not which windows they fall in or when those fire.
///
/// One set of groups per job attempt in one process: members of another process (cluster task
/// managers) are not seen, which only makes the alignment partial.
#[derive(Clone, Default)]
pub struct AlignmentGroups(Arc<Mutex<HashMap<String, Arc<AlignmentGroup>>>>);

#[derive(Default)]
struct AlignmentGroup {
    /// A member that is gone (its subtask ended or failed) drops out on its own.
    members: Mutex<Vec<Weak<AtomicI64>>>,
}

impl std::fmt::Debug for AlignmentGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AlignmentGroups")
    }
}

impl AlignmentGroups {
    pub fn join(&self, group: &str, max_drift: Duration) -> AlignmentMember {
        let group = self
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(group.to_owned())
            .or_default()
            .clone();
        let own = Arc::new(AtomicI64::new(i64::MIN));
        group
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(&own));
        AlignmentMember {
            group,
            own,
            max_drift_ms: i64::try_from(max_drift.as_millis()).unwrap_or(i64::MAX),
        }
    }
}

pub struct AlignmentMember {
    group: Arc<AlignmentGroup>,
    own: Arc<AtomicI64>,
    max_drift_ms: i64,
}

impl AlignmentMember {
    /// See [`WatermarkGen::alignment_watermark`].
    pub fn publish(&self, watermark: i64) {
        self.own.store(watermark, Ordering::Relaxed);
    }

    /// Whether a subtask at `watermark` is too far ahead of the slowest member to read on. Members
    /// without a watermark yet hold nobody back: one that never gets data must not stall the others.
    /// The slowest member itself is never ahead, so the group always makes progress.
    pub fn ahead(&self, watermark: i64) -> bool {
        if watermark == i64::MIN {
            return false;
        }
        let mut slowest = i64::MAX;
        self.group
            .members
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|m| match m.upgrade() {
                Some(m) => {
                    let w = m.load(Ordering::Relaxed);
                    if w != i64::MIN {
                        slowest = slowest.min(w);
                    }
                    true
                }
                None => false,
            });
        watermark > slowest.saturating_add(self.max_drift_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subtask_pauses_only_while_it_is_too_far_ahead_of_the_slowest() {
        let groups = AlignmentGroups::default();
        let drift = Duration::from_secs(60);
        let (a, b, c) = (
            groups.join("p0-v0", drift),
            groups.join("p0-v0", drift),
            groups.join("p0-v0", drift),
        );
        let other = groups.join("p1-v0", drift);
        // Nobody has a watermark yet: nobody is held back (a member that never gets data must not
        // stall the others).
        a.publish(5_000_000);
        assert!(!a.ahead(5_000_000));
        b.publish(1_000);
        c.publish(30_000);
        assert!(a.ahead(5_000_000));
        assert!(!a.ahead(61_000), "within the drift of the slowest");
        assert!(a.ahead(61_001));
        assert!(!b.ahead(1_000), "the slowest always reads on");
        assert!(!other.ahead(5_000_000), "another source is another group");
        // A finished (or idle) member lets the others pass; so does one that is gone.
        b.publish(i64::MAX);
        assert!(a.ahead(5_000_000));
        assert!(!a.ahead(90_000));
        drop(c);
        assert!(!a.ahead(5_000_000));
    }

    #[test]
    fn finished_and_idle_splits_do_not_hold_the_group_back() {
        let expr = Expr::Column {
            index: 0,
            name: "ts".into(),
            ty: sluice_sql::types::timestamp(),
        };
        let mut g = WatermarkGen::new(expr.clone(), 2, None);
        assert_eq!(g.alignment_watermark(), i64::MIN);
        g.finish_split(0);
        g.finish_split(1);
        assert_eq!(g.alignment_watermark(), i64::MAX);
        let g = WatermarkGen::new(expr.clone(), 1, Some(Duration::ZERO));
        assert_eq!(g.alignment_watermark(), i64::MAX, "idle at once");
    }

    #[test]
    fn a_reader_without_splits_lets_event_time_pass_once() {
        let expr = Expr::Column {
            index: 0,
            name: "ts".into(),
            ty: sluice_sql::types::timestamp(),
        };
        let mut g = WatermarkGen::new(expr, 0, None);
        assert_eq!(g.advance(), Some(i64::MAX));
        assert_eq!(g.advance(), None);
        assert_eq!(g.alignment_watermark(), i64::MAX);
    }
}

//! Watermarks at a source subtask: one per split (Kafka partition, file),
//! the subtask's watermark being the minimum over splits that are neither
//! finished nor idle (no data for the idle timeout), as Flink's
//! `WatermarksWithIdleness` over per-split generators.

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
            splits: (0..splits.max(1))
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
}

//! Operators and chains. Operators of one chain call each other directly
//! through [`Collector`]s: no channel, no copy, between them.

use arrow_array::RecordBatch;
use sluice_state::PendingSnapshot;

use crate::error::Result;

/// Where an operator sends its output.
pub trait Collector {
    fn collect(&mut self, batch: RecordBatch) -> Result<()>;
    fn watermark(&mut self, watermark: i64) -> Result<()>;
}

pub trait Operator: Send {
    fn name(&self) -> String;

    fn process(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()>;

    /// Called when the input's watermark advances; fires event-time timers, then forwards it.
    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        out.watermark(watermark)
    }

    /// Called about every 100 ms of wall time with the current processing time.
    fn on_processing_time(&mut self, _now_ms: i64, _out: &mut dyn Collector) -> Result<()> {
        Ok(())
    }

    /// End of input: the max watermark has been delivered already.
    fn finish(&mut self, _out: &mut dyn Collector) -> Result<()> {
        Ok(())
    }

    /// Synchronous part of a checkpoint of this operator's keyed state (none for stateless operators).
    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<Box<dyn PendingSnapshot>>> {
        Ok(Vec::new())
    }
}

/// Operators of one task, called in order.
#[derive(Default)]
pub struct Chain {
    pub ops: Vec<Box<dyn Operator>>,
}

struct Link<'a> {
    ops: &'a mut [Box<dyn Operator>],
    tail: &'a mut dyn Collector,
}

impl Collector for Link<'_> {
    fn collect(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        match self.ops.split_first_mut() {
            None => self.tail.collect(batch),
            Some((head, rest)) => head.process(
                batch,
                &mut Link {
                    ops: rest,
                    tail: &mut *self.tail,
                },
            ),
        }
    }

    fn watermark(&mut self, watermark: i64) -> Result<()> {
        match self.ops.split_first_mut() {
            None => self.tail.watermark(watermark),
            Some((head, rest)) => head.on_watermark(
                watermark,
                &mut Link {
                    ops: rest,
                    tail: &mut *self.tail,
                },
            ),
        }
    }
}

impl Chain {
    pub fn new(ops: Vec<Box<dyn Operator>>) -> Self {
        Chain { ops }
    }

    pub fn process(&mut self, batch: RecordBatch, tail: &mut dyn Collector) -> Result<()> {
        Link {
            ops: &mut self.ops,
            tail,
        }
        .collect(batch)
    }

    pub fn watermark(&mut self, watermark: i64, tail: &mut dyn Collector) -> Result<()> {
        Link {
            ops: &mut self.ops,
            tail,
        }
        .watermark(watermark)
    }

    pub fn processing_time(&mut self, now_ms: i64, tail: &mut dyn Collector) -> Result<()> {
        for i in 0..self.ops.len() {
            let (head, rest) = self.ops[i..]
                .split_first_mut()
                .ok_or_else(|| crate::error::RuntimeError::Task("empty chain".into()))?;
            head.on_processing_time(
                now_ms,
                &mut Link {
                    ops: rest,
                    tail: &mut *tail,
                },
            )?;
        }
        Ok(())
    }

    /// Finishes each operator in order, so what one emits at the end reaches the next before it finishes.
    pub fn finish(&mut self, tail: &mut dyn Collector) -> Result<()> {
        for i in 0..self.ops.len() {
            let (head, rest) = self.ops[i..]
                .split_first_mut()
                .ok_or_else(|| crate::error::RuntimeError::Task("empty chain".into()))?;
            head.finish(&mut Link {
                ops: rest,
                tail: &mut *tail,
            })?;
        }
        Ok(())
    }

    pub fn snapshot(&mut self, checkpoint_id: u64) -> Result<Vec<Box<dyn PendingSnapshot>>> {
        let mut out = Vec::new();
        for op in &mut self.ops {
            out.extend(op.snapshot(checkpoint_id)?);
        }
        Ok(out)
    }

    pub fn names(&self) -> Vec<String> {
        self.ops.iter().map(|o| o.name()).collect()
    }
}

/// Collects everything into memory: the tail of golden tests and of `explain`-less runs.
#[derive(Default, Debug)]
pub struct VecCollector {
    pub batches: Vec<RecordBatch>,
    pub watermarks: Vec<i64>,
}

impl Collector for VecCollector {
    fn collect(&mut self, batch: RecordBatch) -> Result<()> {
        self.batches.push(batch);
        Ok(())
    }

    fn watermark(&mut self, watermark: i64) -> Result<()> {
        self.watermarks.push(watermark);
        Ok(())
    }
}

//! Operators and chains. Operators of one chain call each other directly
//! through [`Collector`]s: no channel, no copy, between them.

use arrow_array::RecordBatch;
use sluice_state::{PendingSnapshot, ReadSeek};

use crate::error::Result;

/// Where an operator sends its output.
pub trait Collector {
    fn collect(&mut self, batch: RecordBatch) -> Result<()>;
    fn watermark(&mut self, watermark: i64) -> Result<()>;
}

pub trait Operator: Send {
    fn name(&self) -> String;

    fn process(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()>;

    /// A batch of input `input` of a two-input operator (a join: 0 left, 1
    /// right), called on the first operator of a chain only. One-input
    /// operators take input 0.
    fn process_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut dyn Collector,
    ) -> Result<()> {
        if input == 0 {
            return self.process(batch, out);
        }
        Err(crate::error::RuntimeError::Task(format!(
            "{} has one input but got a batch for input {input}",
            self.name()
        )))
    }

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

    /// Whether the operator has keyed state (and so a snapshot file per checkpoint).
    fn is_stateful(&self) -> bool {
        false
    }

    /// Synchronous part of a checkpoint of this operator's keyed state, taken
    /// between records; the returned job writes the canonical file on another
    /// thread. `None` for stateless operators.
    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Box<dyn PendingSnapshot>>> {
        Ok(None)
    }

    /// Before the first record: restores the key groups this subtask owns from
    /// the snapshot files of every old subtask of this operator (any
    /// parallelism, any backend), and the watermark the operator had seen, so
    /// rows late before the snapshot stay late after it.
    fn restore(&mut self, _files: &mut [&mut dyn ReadSeek], _watermark: i64) -> Result<()> {
        Ok(())
    }
}

/// Operators of one task, called in order, each with its stable uid (the key
/// of its state in checkpoints).
#[derive(Default)]
pub struct Chain {
    pub ops: Vec<Box<dyn Operator>>,
    pub uids: Vec<String>,
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
    /// A chain whose operators are named `op0`, `op1`, … (tests; the task layer uses [`Chain::with_uids`]).
    pub fn new(ops: Vec<Box<dyn Operator>>) -> Self {
        let uids = (0..ops.len()).map(|i| format!("op{i}")).collect();
        Chain { ops, uids }
    }

    pub fn with_uids(ops: Vec<Box<dyn Operator>>, uids: Vec<String>) -> Self {
        Chain { ops, uids }
    }

    /// Removes and returns the first operator (and its uid).
    pub fn take_first(&mut self) -> Option<(String, Box<dyn Operator>)> {
        if self.ops.is_empty() {
            return None;
        }
        Some((self.uids.remove(0), self.ops.remove(0)))
    }

    pub fn process(&mut self, batch: RecordBatch, tail: &mut dyn Collector) -> Result<()> {
        Link {
            ops: &mut self.ops,
            tail,
        }
        .collect(batch)
    }

    /// A batch of input `input` of the chain's first operator (a two-input
    /// vertex's; input 0 is the same as [`Chain::process`]).
    pub fn process_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        tail: &mut dyn Collector,
    ) -> Result<()> {
        if input == 0 {
            return self.process(batch, tail);
        }
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (head, rest) = self.ops.split_first_mut().ok_or_else(|| {
            crate::error::RuntimeError::Task(format!(
                "a batch for input {input} of a chain without operators"
            ))
        })?;
        head.process_input(input, batch, &mut Link { ops: rest, tail })
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

    /// Snapshots of the stateful operators, by uid.
    pub fn snapshot(
        &mut self,
        checkpoint_id: u64,
    ) -> Result<Vec<(String, Box<dyn PendingSnapshot>)>> {
        let mut out = Vec::new();
        for (op, uid) in self.ops.iter_mut().zip(&self.uids) {
            if let Some(s) = op.snapshot(checkpoint_id)? {
                out.push((uid.clone(), s));
            }
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

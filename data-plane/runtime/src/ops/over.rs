//! `agg(…) OVER (PARTITION BY k ORDER BY t ROWS|RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)`.
//!
//! Event time follows Flink: a row is late (counted, dropped) when its
//! timestamp is at or behind the watermark; other rows wait until the
//! watermark passes them and are then emitted in timestamp order (ties in
//! arrival order), each with the aggregate over its key's rows so far.
//! Waiting rows stay in their Arrow batches (no per-row copy); the running
//! accumulators live in keyed state. Processing time emits on arrival.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_select::interleave::interleave_record_batch;
use sluice_sql::{AggCall, TimeKind};
use sluice_state::{KeyedStateBackend, NO_NAMESPACE, PendingSnapshot, StateId, StateKind};

use crate::accum::{AggLayout, ArgCol};
use crate::error::{Context, Result};
use crate::eval::timestamps_ms;
use crate::keys::{BatchKeys, KeyEncoder};
use crate::operator::{Collector, Operator};
use crate::ops::LateCounter;

/// Rows are emitted in batches of at most this many.
const OUT_BATCH: usize = 16 * 1024;

struct Buffered {
    batch: RecordBatch,
    keys: BatchKeys,
    args: Vec<ArgCol>,
    remaining: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Pending {
    ts: i64,
    seq: u64,
    slot: u32,
    row: u32,
}

pub struct OverOp {
    keys: KeyEncoder,
    time: usize,
    kind: TimeKind,
    range: bool,
    layout: AggLayout,
    backend: Box<dyn KeyedStateBackend>,
    acc: StateId,
    schema: SchemaRef,
    slots: Vec<Option<Buffered>>,
    free: Vec<u32>,
    /// Rows waiting for the watermark.
    pending: Vec<Pending>,
    /// Smallest timestamp in `pending` (i64::MAX when empty): a watermark below it releases nothing.
    pending_min: i64,
    seq: u64,
    watermark: i64,
    late: LateCounter,
}

impl OverOp {
    #[allow(clippy::too_many_arguments)] // one per planner field of the stage
    pub fn new(
        input: SchemaRef,
        keys: Vec<usize>,
        time: usize,
        kind: TimeKind,
        range: bool,
        aggs: &[AggCall],
        mut backend: Box<dyn KeyedStateBackend>,
        late: LateCounter,
    ) -> Result<Self> {
        let types: Vec<DataType> = input
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let layout = AggLayout::new(aggs, &types)?;
        let acc = backend
            .register("over-acc", StateKind::Value)
            .ctx(|| "OverAggregate state".into())?;
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (i, a) in aggs.iter().enumerate() {
            fields.push(Field::new(format!("$agg{i}"), a.ty.clone(), true));
        }
        Ok(OverOp {
            keys: KeyEncoder::new(keys, &types)?,
            time,
            kind,
            range,
            layout,
            backend,
            acc,
            schema: Arc::new(Schema::new(fields)),
            slots: Vec::new(),
            free: Vec::new(),
            pending: Vec::new(),
            pending_min: i64::MAX,
            seq: 0,
            watermark: i64::MIN,
            late,
        })
    }

    fn emit_in_order(&mut self, order: &[(u32, u32)], out: &mut dyn Collector) -> Result<()> {
        for chunk in order.chunks(OUT_BATCH) {
            let mut res = self.layout.output();
            if self.range {
                // Rows with the same key and timestamp see the same result: update all of a
                // timestamp's rows first, then read each key's accumulator.
                let mut i = 0;
                let ts_of = |s: &Self, (slot, row): (u32, u32)| -> i64 {
                    s.slots[slot as usize]
                        .as_ref()
                        .map(|b| {
                            timestamps_ms(b.batch.column(s.time))
                                .map(|t| t.value(row as usize))
                                .unwrap_or(0)
                        })
                        .unwrap_or(0)
                };
                while i < chunk.len() {
                    let t = ts_of(self, chunk[i]);
                    let mut j = i;
                    while j < chunk.len() && ts_of(self, chunk[j]) == t {
                        j += 1;
                    }
                    for &(slot, row) in &chunk[i..j] {
                        let b = self.slots[slot as usize].as_ref().ok_or_else(|| {
                            crate::error::RuntimeError::Task("over: missing buffered batch".into())
                        })?;
                        let layout = &self.layout;
                        self.backend
                            .value_update(
                                self.acc,
                                b.keys.key(row as usize),
                                NO_NAMESPACE,
                                &mut |buf, present| {
                                    layout.update(buf, present, &b.args, row as usize, None);
                                    true
                                },
                            )
                            .ctx(|| "OverAggregate state".into())?;
                    }
                    for &(slot, row) in &chunk[i..j] {
                        let b = self.slots[slot as usize].as_ref().ok_or_else(|| {
                            crate::error::RuntimeError::Task("over: missing buffered batch".into())
                        })?;
                        let v = self
                            .backend
                            .value_get(self.acc, b.keys.key(row as usize), NO_NAMESPACE)
                            .ctx(|| "OverAggregate state".into())?;
                        if let Some(v) = v {
                            self.layout.emit(v, &mut res);
                        }
                    }
                    i = j;
                }
            } else {
                for &(slot, row) in chunk {
                    let b = self.slots[slot as usize].as_ref().ok_or_else(|| {
                        crate::error::RuntimeError::Task("over: missing buffered batch".into())
                    })?;
                    let layout = &self.layout;
                    let res_ref = &mut res;
                    self.backend
                        .value_update(
                            self.acc,
                            b.keys.key(row as usize),
                            NO_NAMESPACE,
                            &mut |buf, present| {
                                layout.update(buf, present, &b.args, row as usize, None);
                                layout.emit(buf, res_ref);
                                true
                            },
                        )
                        .ctx(|| "OverAggregate state".into())?;
                }
            }
            // Gather the rows from their batches in emission order.
            let mut used: Vec<u32> = chunk.iter().map(|(s, _)| *s).collect();
            used.sort_unstable();
            used.dedup();
            let batches: Vec<&RecordBatch> = used
                .iter()
                .filter_map(|s| self.slots[*s as usize].as_ref().map(|b| &b.batch))
                .collect();
            let idx: Vec<(usize, usize)> = chunk
                .iter()
                .map(|(s, r)| (used.binary_search(s).unwrap_or(0), *r as usize))
                .collect();
            let rows =
                interleave_record_batch(&batches, &idx).ctx(|| "OverAggregate output".into())?;
            let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
            cols.extend(self.layout.finish(res)?);
            let outb = RecordBatch::try_new(self.schema.clone(), cols)
                .ctx(|| "OverAggregate output".into())?;
            out.collect(outb)?;
        }
        for &(slot, _) in order {
            let s = slot as usize;
            let done = match self.slots[s].as_mut() {
                Some(b) => {
                    b.remaining -= 1;
                    b.remaining == 0
                }
                None => false,
            };
            if done {
                self.slots[s] = None;
                self.free.push(slot);
            }
        }
        Ok(())
    }
}

impl Operator for OverOp {
    fn name(&self) -> String {
        format!(
            "OverAggregate({})",
            if self.range { "RANGE" } else { "ROWS" }
        )
    }

    fn process(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()> {
        let keys = self.keys.encode(&batch)?;
        let args = self.layout.args(&batch)?;
        let n = batch.num_rows();
        if self.kind == TimeKind::Processing {
            // Rows leave in arrival order: the batch itself plus the aggregate columns.
            let mut res = self.layout.output();
            for r in 0..n {
                let layout = &self.layout;
                let res_ref = &mut res;
                let args_ref = &args;
                self.backend
                    .value_update(self.acc, keys.key(r), NO_NAMESPACE, &mut |buf, present| {
                        layout.update(buf, present, args_ref, r, None);
                        layout.emit(buf, res_ref);
                        true
                    })
                    .ctx(|| "OverAggregate state".into())?;
            }
            let mut cols: Vec<ArrayRef> = batch.columns().to_vec();
            cols.extend(self.layout.finish(res)?);
            let outb = RecordBatch::try_new(self.schema.clone(), cols)
                .ctx(|| "OverAggregate output".into())?;
            return out.collect(outb);
        }
        let ts = timestamps_ms(batch.column(self.time))?;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        let mut kept = 0;
        let mut late = 0;
        for r in 0..n {
            if ts.is_null(r) {
                late += 1;
                continue;
            }
            let t = ts.value(r);
            if t <= self.watermark {
                late += 1;
                continue;
            }
            self.seq += 1;
            self.pending.push(Pending {
                ts: t,
                seq: self.seq,
                slot,
                row: r as u32,
            });
            self.pending_min = self.pending_min.min(t);
            kept += 1;
        }
        if late > 0 {
            self.late.fetch_add(late, Ordering::Relaxed);
        }
        if kept > 0 {
            self.slots[slot as usize] = Some(Buffered {
                batch,
                keys,
                args,
                remaining: kept,
            });
        } else {
            self.free.push(slot);
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        if self.pending_min <= watermark {
            let mut ready: Vec<Pending> = Vec::new();
            let mut min = i64::MAX;
            self.pending.retain(|p| {
                if p.ts <= watermark {
                    ready.push(*p);
                    false
                } else {
                    min = min.min(p.ts);
                    true
                }
            });
            self.pending_min = min;
            ready.sort_unstable();
            let order: Vec<(u32, u32)> = ready.iter().map(|p| (p.slot, p.row)).collect();
            self.emit_in_order(&order, out)?;
        }
        out.watermark(watermark)
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Vec<Box<dyn PendingSnapshot>>> {
        Ok(vec![
            self.backend
                .snapshot()
                .ctx(|| "OverAggregate snapshot".into())?,
        ])
    }
}

use arrow_array::Array;

//! `agg(…) OVER (PARTITION BY k ORDER BY t ROWS|RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)`.
//!
//! Event time follows Flink: a row is late (counted, dropped) when its
//! timestamp is at or behind the watermark; other rows wait until the
//! watermark passes them and are then emitted in timestamp order (ties in
//! arrival order), each with the aggregate over its key's rows so far.
//! Waiting rows stay in their Arrow batches (no per-row copy); the running
//! accumulators live in keyed state. Processing time emits on arrival.
//!
//! Checkpoints: at a snapshot the waiting rows are written into the keyed list
//! state `over-buffer` (per key: `[ts i64 BE][seq u64 BE][row in arrow-row
//! form]`), the backend is snapshotted, and the entries are cleared again. So
//! they are part of the key-group sections (rescaling moves them with their
//! key) while the per-record path stays copy-free; the cost is paid per
//! checkpoint, in proportion to the rows waiting.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow_array::{ArrayRef, RecordBatch};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_select::interleave::interleave_record_batch;
use sluice_sql::{AggCall, TimeKind};
use sluice_state::{
    KeyedStateBackend, NO_NAMESPACE, PendingSnapshot, ReadSeek, StateId, StateKind,
};

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
    /// Waiting rows, only between a snapshot's write and its clear (and after a restore).
    buffer: StateId,
    input: SchemaRef,
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
        let buffer = backend
            .register("over-buffer", StateKind::List)
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
            buffer,
            input,
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

    fn is_stateful(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Box<dyn PendingSnapshot>>> {
        let written = self.write_pending_to_state()?;
        let snap = self
            .backend
            .snapshot()
            .ctx(|| "OverAggregate snapshot".into())?;
        for key in written {
            self.backend
                .clear(self.buffer, &key, NO_NAMESPACE)
                .ctx(|| "OverAggregate snapshot".into())?;
        }
        Ok(Some(snap))
    }

    fn restore(&mut self, files: &mut [&mut dyn ReadSeek], watermark: i64) -> Result<()> {
        self.backend
            .restore(files)
            .ctx(|| "OverAggregate restore".into())?;
        self.watermark = self.watermark.max(watermark);
        self.read_pending_from_state()
    }
}

impl OverOp {
    fn row_converter(&self) -> Result<RowConverter> {
        RowConverter::new(
            self.input
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .ctx(|| "OverAggregate buffered rows".into())
    }

    /// Appends every waiting row to `over-buffer`; returns the keys written.
    fn write_pending_to_state(&mut self) -> Result<Vec<Vec<u8>>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let converter = self.row_converter()?;
        let mut by_slot: Vec<Vec<Pending>> = vec![Vec::new(); self.slots.len()];
        for p in &self.pending {
            by_slot[p.slot as usize].push(*p);
        }
        let mut keys = std::collections::HashSet::new();
        let mut item = Vec::new();
        for (slot, waiting) in by_slot.iter().enumerate() {
            if waiting.is_empty() {
                continue;
            }
            let b = self.slots[slot].as_ref().ok_or_else(|| {
                crate::error::RuntimeError::Task("over: missing buffered batch".into())
            })?;
            let rows = converter
                .convert_columns(b.batch.columns())
                .ctx(|| "OverAggregate buffered rows".into())?;
            for p in waiting {
                item.clear();
                item.extend_from_slice(&p.ts.to_be_bytes());
                item.extend_from_slice(&p.seq.to_be_bytes());
                item.extend_from_slice(rows.row(p.row as usize).data());
                let key = b.keys.key(p.row as usize);
                self.backend
                    .list_append(self.buffer, key, NO_NAMESPACE, &item)
                    .ctx(|| "OverAggregate snapshot".into())?;
                if !keys.contains(key) {
                    keys.insert(key.to_vec());
                }
            }
        }
        Ok(keys.into_iter().collect())
    }

    /// After a restore: turns `over-buffer` back into waiting rows (one batch) and clears it.
    fn read_pending_from_state(&mut self) -> Result<()> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        self.backend
            .for_each_key(self.buffer, &mut |k, _| {
                keys.push(k.to_vec());
                Ok(())
            })
            .ctx(|| "OverAggregate restore".into())?;
        if keys.is_empty() {
            return Ok(());
        }
        let mut waiting: Vec<(i64, u64, Vec<u8>)> = Vec::new();
        for key in &keys {
            let items = self
                .backend
                .list_get(self.buffer, key, NO_NAMESPACE)
                .ctx(|| "OverAggregate restore".into())?;
            for it in items.iter() {
                if it.len() < 16 {
                    return Err(crate::error::RuntimeError::Task(
                        "over: a buffered row in the snapshot is truncated".into(),
                    ));
                }
                let ts = i64::from_be_bytes(it[0..8].try_into().unwrap_or([0; 8]));
                let seq = u64::from_be_bytes(it[8..16].try_into().unwrap_or([0; 8]));
                waiting.push((ts, seq, it[16..].to_vec()));
            }
        }
        for key in &keys {
            self.backend
                .clear(self.buffer, key, NO_NAMESPACE)
                .ctx(|| "OverAggregate restore".into())?;
        }
        // Ties keep their arrival order: seq is per old subtask, and a key's rows all come from one.
        waiting.sort_by_key(|(ts, seq, _)| (*ts, *seq));
        let converter = self.row_converter()?;
        let parser = converter.parser();
        let cols = converter
            .convert_rows(waiting.iter().map(|(_, _, r)| parser.parse(r)))
            .ctx(|| "OverAggregate restore".into())?;
        let batch = RecordBatch::try_new(self.input.clone(), cols)
            .ctx(|| "OverAggregate restore".into())?;
        let keys = self.keys.encode(&batch)?;
        let args = self.layout.args(&batch)?;
        let slot = match self.free.pop() {
            Some(s) => s,
            None => {
                self.slots.push(None);
                (self.slots.len() - 1) as u32
            }
        };
        for (row, (ts, _, _)) in waiting.iter().enumerate() {
            self.seq += 1;
            self.pending.push(Pending {
                ts: *ts,
                seq: self.seq,
                slot,
                row: row as u32,
            });
            self.pending_min = self.pending_min.min(*ts);
        }
        self.slots[slot as usize] = Some(Buffered {
            batch,
            keys,
            args,
            remaining: waiting.len(),
        });
        Ok(())
    }
}

use arrow_array::Array;

//! Deduplication (`ROW_NUMBER() OVER (PARTITION BY k ORDER BY t) … WHERE rn = 1`),
//! keyed by the partition keys, with one value per key in the keyed state
//! backend `dedup` (so it is snapshotted, restored and rescaled with its key
//! group like the other keyed operators):
//!
//! * keep first, processing time: value `SEEN`; a key's first row is emitted
//!   on arrival, later ones dropped. Append-only.
//! * keep first, event time: value `CANDIDATE ts row` until the watermark
//!   passes `ts` (an event-time timer), then the row is emitted and the value
//!   becomes `SEEN`. Until then an earlier row replaces the candidate, so the
//!   row kept is the earliest by event time whatever the arrival order, and the
//!   output stays append-only (Flink emits at once and retracts instead). Rows
//!   at or behind the watermark are late: counted and dropped, as in the other
//!   event-time operators.
//! * keep last: value `ROW ts row`; each row whose time is not older than the
//!   stored one replaces it and is emitted as `+I` (new key) or `-U old`,
//!   `+U new`, as Flink's deduplication with update-before. Processing time
//!   keeps the last arrival; event time the latest timestamp (ties: the last
//!   arrival), so the final table does not depend on arrival order.
//!
//! Rows are stored in arrow-row form, converted a batch at a time.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow_array::{Array, ArrayRef, BooleanArray, Int8Array, Int64Array, RecordBatch};
use arrow_row::{RowConverter, Rows, SortField};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use arrow_select::filter::filter_record_batch;
use arrow_select::interleave::interleave_record_batch;
use sluice_sql::TimeKind;
use sluice_state::{
    KeyedStateBackend, NO_NAMESPACE, PendingSnapshot, ReadSeek, StateId, StateKind, TimeDomain,
    Timer,
};

use crate::error::{Context, Result, RuntimeError};
use crate::eval::timestamps_ms;
use crate::keys::KeyEncoder;
use crate::message::{ROW_KIND_COLUMN, RowKind};
use crate::operator::{Collector, Operator};
use crate::ops::LateCounter;

const SEEN: u8 = 0;
const CANDIDATE: u8 = 1;
const ROW: u8 = 2;
/// Tag byte and timestamp before the row bytes.
const HEADER: usize = 9;

/// Rows are emitted in batches of at most this many.
const OUT_BATCH: usize = 16 * 1024;

fn header_ts(v: &[u8]) -> i64 {
    v.get(1..HEADER)
        .and_then(|b| b.try_into().ok())
        .map(i64::from_be_bytes)
        .unwrap_or(i64::MIN)
}

fn write_entry(buf: &mut Vec<u8>, tag: u8, ts: i64, row: &[u8]) {
    buf.clear();
    buf.push(tag);
    buf.extend_from_slice(&ts.to_be_bytes());
    buf.extend_from_slice(row);
}

pub struct DedupOp {
    keys: KeyEncoder,
    time: usize,
    kind: TimeKind,
    keep_last: bool,
    backend: Box<dyn KeyedStateBackend>,
    state: StateId,
    rows: RowConverter,
    input: SchemaRef,
    /// Keep-last output: the input columns and `$op`.
    changelog: SchemaRef,
    watermark: i64,
    late: LateCounter,
    timers: Vec<Timer>,
}

impl DedupOp {
    pub fn new(
        input: SchemaRef,
        keys: Vec<usize>,
        time: usize,
        kind: TimeKind,
        keep_last: bool,
        mut backend: Box<dyn KeyedStateBackend>,
        late: LateCounter,
    ) -> Result<Self> {
        let types: Vec<DataType> = input
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        let state = backend
            .register("dedup", StateKind::Value)
            .ctx(|| "Deduplicate state".into())?;
        let rows = RowConverter::new(types.iter().cloned().map(SortField::new).collect())
            .ctx(|| "Deduplicate rows".into())?;
        let mut fields: Vec<Field> = input.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(ROW_KIND_COLUMN, DataType::Int8, false));
        Ok(DedupOp {
            keys: KeyEncoder::new(keys, &types)?,
            time,
            kind,
            keep_last,
            backend,
            state,
            rows,
            input,
            changelog: Arc::new(Schema::new(fields)),
            watermark: i64::MIN,
            late,
            timers: Vec::new(),
        })
    }

    fn event_times(&self, batch: &RecordBatch) -> Result<Option<Int64Array>> {
        match self.kind {
            TimeKind::Event => Ok(Some(timestamps_ms(batch.column(self.time))?)),
            TimeKind::Processing => Ok(None),
        }
    }

    fn decode(&self, stored: &[Vec<u8>], schema: SchemaRef) -> Result<RecordBatch> {
        let parser = self.rows.parser();
        let cols = self
            .rows
            .convert_rows(stored.iter().map(|r| parser.parse(r)))
            .ctx(|| "Deduplicate stored rows".into())?;
        RecordBatch::try_new(schema, cols).ctx(|| "Deduplicate stored rows".into())
    }

    fn first_on_arrival(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()> {
        let keys = self.keys.encode(&batch)?;
        let mut keep = Vec::with_capacity(batch.num_rows());
        for r in 0..batch.num_rows() {
            let mut first = false;
            self.backend
                .value_update(
                    self.state,
                    keys.key(r),
                    NO_NAMESPACE,
                    &mut |buf, present| {
                        if !present {
                            buf.clear();
                            buf.push(SEEN);
                            first = true;
                        }
                        true
                    },
                )
                .ctx(|| "Deduplicate state".into())?;
            keep.push(first);
        }
        let kept = filter_record_batch(&batch, &BooleanArray::from(keep))
            .ctx(|| "Deduplicate output".into())?;
        out.collect(kept)
    }

    fn first_by_event_time(&mut self, batch: RecordBatch) -> Result<()> {
        let keys = self.keys.encode(&batch)?;
        let ts = self.event_times(&batch)?.ok_or_else(|| {
            RuntimeError::Task("Deduplicate: event time without a time column".into())
        })?;
        let mut rows: Option<Rows> = None;
        let mut late = 0;
        for r in 0..batch.num_rows() {
            if ts.is_null(r) || ts.value(r) <= self.watermark {
                late += 1;
                continue;
            }
            let t = ts.value(r);
            if rows.is_none() {
                rows = Some(
                    self.rows
                        .convert_columns(batch.columns())
                        .ctx(|| "Deduplicate rows".into())?,
                );
            }
            let row = rows
                .as_ref()
                .map(|x| x.row(r))
                .ok_or_else(|| RuntimeError::Task("Deduplicate: rows not converted".into()))?;
            let mut replaced: Option<Option<i64>> = None;
            self.backend
                .value_update(
                    self.state,
                    keys.key(r),
                    NO_NAMESPACE,
                    &mut |buf, present| {
                        if !present {
                            write_entry(buf, CANDIDATE, t, row.data());
                            replaced = Some(None);
                        } else if buf.first() == Some(&CANDIDATE) && t < header_ts(buf) {
                            let old = header_ts(buf);
                            write_entry(buf, CANDIDATE, t, row.data());
                            replaced = Some(Some(old));
                        }
                        true
                    },
                )
                .ctx(|| "Deduplicate state".into())?;
            if let Some(old) = replaced {
                if let Some(old) = old {
                    self.backend
                        .delete_timer(TimeDomain::EventTime, old, keys.key(r), NO_NAMESPACE)
                        .ctx(|| "Deduplicate timer".into())?;
                }
                self.backend
                    .register_timer(TimeDomain::EventTime, t, keys.key(r), NO_NAMESPACE)
                    .ctx(|| "Deduplicate timer".into())?;
            }
        }
        if late > 0 {
            self.late.fetch_add(late, Ordering::Relaxed);
        }
        Ok(())
    }

    fn last(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()> {
        let keys = self.keys.encode(&batch)?;
        let ts = self.event_times(&batch)?;
        let rows = self
            .rows
            .convert_columns(batch.columns())
            .ctx(|| "Deduplicate rows".into())?;
        // Output rows as (source, row): source 0 is this batch, 1 the retracted stored rows.
        let mut order: Vec<(usize, usize)> = Vec::with_capacity(batch.num_rows() * 2);
        let mut kinds: Vec<i8> = Vec::with_capacity(batch.num_rows() * 2);
        let mut before: Vec<Vec<u8>> = Vec::new();
        let mut late = 0;
        for r in 0..batch.num_rows() {
            let t = match &ts {
                Some(ts) if ts.is_null(r) => {
                    late += 1;
                    continue;
                }
                Some(ts) => ts.value(r),
                None => 0,
            };
            let row = rows.row(r);
            self.backend
                .value_update(
                    self.state,
                    keys.key(r),
                    NO_NAMESPACE,
                    &mut |buf, present| {
                        if present {
                            if t < header_ts(buf) {
                                return true;
                            }
                            before.push(buf[HEADER.min(buf.len())..].to_vec());
                            order.push((1, before.len() - 1));
                            kinds.push(RowKind::UpdateBefore as i8);
                            order.push((0, r));
                            kinds.push(RowKind::UpdateAfter as i8);
                        } else {
                            order.push((0, r));
                            kinds.push(RowKind::Insert as i8);
                        }
                        write_entry(buf, ROW, t, row.data());
                        true
                    },
                )
                .ctx(|| "Deduplicate state".into())?;
        }
        if late > 0 {
            self.late.fetch_add(late, Ordering::Relaxed);
        }
        if order.is_empty() {
            return Ok(());
        }
        let retracted = self.decode(&before, batch.schema())?;
        let rows = interleave_record_batch(&[&batch, &retracted], &order)
            .ctx(|| "Deduplicate output".into())?;
        let mut cols: Vec<ArrayRef> = rows.columns().to_vec();
        cols.push(Arc::new(Int8Array::from(kinds)));
        let b = RecordBatch::try_new(self.changelog.clone(), cols)
            .ctx(|| "Deduplicate output".into())?;
        out.collect(b)
    }

    /// Emits the candidates whose time the watermark has passed, in time order.
    fn fire(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        loop {
            let mut timers = std::mem::take(&mut self.timers);
            timers.clear();
            let n = self
                .backend
                .drain_timers(TimeDomain::EventTime, watermark, &mut timers)
                .ctx(|| "Deduplicate timers".into())?;
            if n == 0 {
                self.timers = timers;
                return Ok(());
            }
            let mut emit: Vec<Vec<u8>> = Vec::new();
            for t in &timers {
                let Some(v) = self
                    .backend
                    .value_get(self.state, &t.key, NO_NAMESPACE)
                    .ctx(|| "Deduplicate state".into())?
                else {
                    continue;
                };
                if v.first() != Some(&CANDIDATE) || header_ts(v) != t.time {
                    continue;
                }
                emit.push(v[HEADER..].to_vec());
                self.backend
                    .value_put(self.state, &t.key, NO_NAMESPACE, &[SEEN])
                    .ctx(|| "Deduplicate state".into())?;
            }
            self.timers = timers;
            for chunk in emit.chunks(OUT_BATCH) {
                let b = self.decode(chunk, self.input.clone())?;
                out.collect(b)?;
            }
        }
    }
}

impl Operator for DedupOp {
    fn name(&self) -> String {
        format!(
            "Deduplicate(keep {}, {} time)",
            if self.keep_last { "last" } else { "first" },
            match self.kind {
                TimeKind::Event => "event",
                TimeKind::Processing => "processing",
            }
        )
    }

    fn process(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()> {
        match (self.keep_last, self.kind) {
            (true, _) => self.last(batch, out),
            (false, TimeKind::Processing) => self.first_on_arrival(batch, out),
            (false, TimeKind::Event) => self.first_by_event_time(batch),
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        if !self.keep_last && self.kind == TimeKind::Event {
            self.fire(watermark, out)?;
        }
        out.watermark(watermark)
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Box<dyn PendingSnapshot>>> {
        Ok(Some(
            self.backend
                .snapshot()
                .ctx(|| "Deduplicate snapshot".into())?,
        ))
    }

    fn restore(&mut self, files: &mut [&mut dyn ReadSeek], watermark: i64) -> Result<()> {
        self.backend
            .restore(files)
            .ctx(|| "Deduplicate restore".into())?;
        self.watermark = self.watermark.max(watermark);
        Ok(())
    }
}

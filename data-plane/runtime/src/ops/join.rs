//! Event-time interval join (Flink's `IntervalJoin` / `RowTimeIntervalJoin`):
//! a row of one input joins the rows of the other input with the same key
//! whose times satisfy `right.t + lower <= left.t <= right.t + upper`.
//!
//! State, in the keyed state backend under the join key (so it is
//! snapshotted, restored and rescaled by key group like the other keyed
//! operators): per input a map `left` / `right` from `time ++ row` (time as
//! 8 order-preserving bytes, row in arrow-row form) to a count of identical
//! rows and a `matched` flag. A row arriving on one input is joined with the
//! other input's stored rows, then stored itself while rows of the other
//! input can still match it. Each stored row has an event-time timer at the
//! watermark from which no row of the other input can match it any more
//! (left: `t - lower`, right: `t + upper`); when the watermark reaches it, the
//! row is dropped — and, for the padded input(s) of a LEFT/RIGHT/FULL OUTER
//! join, emitted with NULLs for the other input if it never matched (before
//! the watermark that released it goes downstream, so it is not late there).
//! An outer row that cannot be stored (its interval already passed, or a NULL
//! key) and matched nothing is padded at once.
//!
//! The watermark is the minimum over both inputs' channels (the gate's). Rows
//! at or behind it are late: counted and dropped (Flink still joins them
//! with what it has cached; dropping keeps every output row ahead of the
//! output watermark). Output rows are the left columns then the right ones,
//! append-only, emitted as soon as both rows are there; both time columns
//! stay time attributes, so the output watermark is held back by
//! `max(-lower, upper)`, as Flink's `getMaxOutputDelay`. A NULL key or time
//! never matches.

use std::sync::atomic::Ordering;

use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, UInt32Array, new_null_array};
use arrow_row::{RowConverter, SortField};
use arrow_schema::{DataType, SchemaRef};
use arrow_select::take::take;
use sluice_sql::JoinKind;
use sluice_state::{
    KeyedStateBackend, NO_NAMESPACE, PendingSnapshot, ReadSeek, StateId, StateKind, TimeDomain,
    Timer,
};

use crate::error::{Context, Result, RuntimeError};
use crate::eval::timestamps_ms;
use crate::keys::KeyEncoder;
use crate::message::MAX_WATERMARK;
use crate::operator::{Collector, Operator};
use crate::ops::LateCounter;

/// Joined rows are emitted in batches of at most this many.
const OUT_BATCH: usize = 16 * 1024;

const LEFT: usize = 0;
const RIGHT: usize = 1;

/// Time in 8 bytes whose byte order is the numeric order.
fn time_bytes(t: i64) -> [u8; 8] {
    ((t as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time of a stored row; `None` for a key too short to be one of ours.
fn time_of(user_key: &[u8]) -> Option<i64> {
    let b: [u8; 8] = user_key.get(..8)?.try_into().ok()?;
    Some((u64::from_be_bytes(b) ^ (1 << 63)) as i64)
}

fn corrupt() -> RuntimeError {
    RuntimeError::Task("IntervalJoin: a stored row has no time (corrupt state)".into())
}

/// How many identical rows an entry stands for.
fn count_of(v: &[u8]) -> u64 {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .unwrap_or(1)
}

/// Whether the entry's rows have joined a row of the other input (outer joins pad the others).
fn matched_of(v: &[u8]) -> bool {
    v.get(8) == Some(&1)
}

fn entry(count: u64, matched: bool) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[..8].copy_from_slice(&count.to_be_bytes());
    v[8] = u8::from(matched);
    v
}

/// One input of the join.
struct Input {
    keys: KeyEncoder,
    key_columns: Vec<usize>,
    time: usize,
    rows: RowConverter,
    schema: SchemaRef,
    state: StateId,
}

pub struct IntervalJoinOp {
    kind: JoinKind,
    inputs: [Input; 2],
    lower: i64,
    upper: i64,
    backend: Box<dyn KeyedStateBackend>,
    output: SchemaRef,
    watermark: i64,
    out_watermark: i64,
    late: LateCounter,
    timers: Vec<Timer>,
}

/// What one probe found: the stored entry's user key (time ++ row), how many
/// rows it stands for, and whether they had matched before.
type Matches = Vec<(Vec<u8>, u64, bool)>;

impl IntervalJoinOp {
    /// `left` and `right` are the two inputs' schemas, `output` the joined one.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        kind: JoinKind,
        left: SchemaRef,
        right: SchemaRef,
        output: SchemaRef,
        left_keys: Vec<usize>,
        right_keys: Vec<usize>,
        left_time: usize,
        right_time: usize,
        lower_ms: i64,
        upper_ms: i64,
        mut backend: Box<dyn KeyedStateBackend>,
        late: LateCounter,
    ) -> Result<Self> {
        if left_keys.len() != right_keys.len() || left_keys.is_empty() {
            return Err(RuntimeError::Plan(format!(
                "IntervalJoin needs as many left as right keys (at least one), got {} and {}",
                left_keys.len(),
                right_keys.len()
            )));
        }
        let mut input = |schema: SchemaRef, keys: Vec<usize>, time: usize, name: &str| {
            let types: Vec<DataType> = schema
                .fields()
                .iter()
                .map(|f| f.data_type().clone())
                .collect();
            if keys.iter().chain([&time]).any(|&c| c >= types.len()) {
                return Err(RuntimeError::Plan(format!(
                    "IntervalJoin {name} input: key or time column out of its {} columns",
                    types.len()
                )));
            }
            Ok(Input {
                keys: KeyEncoder::new(keys.clone(), &types)?,
                key_columns: keys,
                time,
                rows: RowConverter::new(types.into_iter().map(SortField::new).collect())
                    .ctx(|| format!("IntervalJoin {name} rows"))?,
                schema,
                state: backend
                    .register(name, StateKind::Map)
                    .ctx(|| format!("IntervalJoin {name} state"))?,
            })
        };
        let inputs = [
            input(left, left_keys, left_time, "left")?,
            input(right, right_keys, right_time, "right")?,
        ];
        Ok(IntervalJoinOp {
            kind,
            inputs,
            lower: lower_ms,
            upper: upper_ms,
            backend,
            output,
            watermark: i64::MIN,
            out_watermark: i64::MIN,
            late,
            timers: Vec::new(),
        })
    }

    /// From this watermark on, no row of the other input can match a row of
    /// `side` at time `t`: it is dropped.
    fn expiry(&self, side: usize, t: i64) -> i64 {
        if side == LEFT {
            t.saturating_sub(self.lower)
        } else {
            t.saturating_add(self.upper)
        }
    }

    /// Rows stored for both inputs (an observable of state cleanup).
    pub fn stored_rows(&mut self) -> Result<u64> {
        let mut n = 0;
        for side in [LEFT, RIGHT] {
            let state = self.inputs[side].state;
            let mut keys: Vec<Vec<u8>> = Vec::new();
            self.backend
                .for_each_key(state, &mut |k, _| {
                    keys.push(k.to_vec());
                    Ok(())
                })
                .ctx(|| "IntervalJoin state".into())?;
            for k in keys {
                self.backend
                    .map_for_each(state, &k, NO_NAMESPACE, &mut |_, v| {
                        n += count_of(v);
                        Ok(())
                    })
                    .ctx(|| "IntervalJoin state".into())?;
            }
        }
        Ok(n)
    }

    fn process_side(
        &mut self,
        side: usize,
        batch: RecordBatch,
        out: &mut dyn Collector,
    ) -> Result<()> {
        let other = 1 - side;
        let input = &self.inputs[side];
        let keys = input.keys.encode(&batch)?;
        let ts: Int64Array = timestamps_ms(batch.column(input.time))?;
        let rows = input
            .rows
            .convert_columns(batch.columns())
            .ctx(|| "IntervalJoin rows".into())?;
        let key_cols: Vec<ArrayRef> = input
            .key_columns
            .iter()
            .map(|&c| batch.column(c).clone())
            .collect();
        let (state, other_state) = (input.state, self.inputs[other].state);
        // Pairs (row of this batch, index into `stored`).
        let mut pairs: Vec<(u32, u32)> = Vec::new();
        let mut stored: Vec<Vec<u8>> = Vec::new();
        let mut late = 0u64;
        let mut user_key = Vec::new();
        // Rows of this batch emitted at once with NULLs for the other input.
        let mut padded: Vec<u32> = Vec::new();
        for r in 0..batch.num_rows() {
            if ts.is_null(r) || ts.value(r) <= self.watermark {
                late += 1;
                continue;
            }
            if key_cols.iter().any(|c| c.is_null(r)) {
                // NULL equals nothing: no match now or later.
                if self.kind.pads(side) {
                    padded.push(r as u32);
                }
                continue;
            }
            let t = ts.value(r);
            let key = keys.key(r);
            let mut found: Matches = Vec::new();
            let mut bad = false;
            self.backend
                .map_for_each(other_state, key, NO_NAMESPACE, &mut |uk, v| {
                    match time_of(uk) {
                        Some(ot) if self_matches(side, t, ot, self.lower, self.upper) => {
                            found.push((uk.to_vec(), count_of(v), matched_of(v)))
                        }
                        Some(_) => {}
                        None => bad = true,
                    }
                    Ok(())
                })
                .ctx(|| "IntervalJoin state".into())?;
            if bad {
                return Err(corrupt());
            }
            let matched = !found.is_empty();
            for (uk, count, was_matched) in found {
                if !was_matched && self.kind.pads(other) {
                    self.backend
                        .map_put(other_state, key, NO_NAMESPACE, &uk, &entry(count, true))
                        .ctx(|| "IntervalJoin state".into())?;
                }
                let i = stored.len() as u32;
                stored.push(uk[8..].to_vec());
                for _ in 0..count {
                    pairs.push((r as u32, i));
                }
            }
            let expiry = self.expiry(side, t);
            if expiry <= self.watermark {
                // No row of the other input can match it any more.
                if !matched && self.kind.pads(side) {
                    padded.push(r as u32);
                }
            } else {
                user_key.clear();
                user_key.extend_from_slice(&time_bytes(t));
                user_key.extend_from_slice(rows.row(r).data());
                let (n, m) = self
                    .backend
                    .map_get(state, key, NO_NAMESPACE, &user_key)
                    .ctx(|| "IntervalJoin state".into())?
                    .map(|v| (count_of(v), matched_of(v)))
                    .unwrap_or((0, false));
                // Identical rows have the same partners: one flag serves them all.
                self.backend
                    .map_put(
                        state,
                        key,
                        NO_NAMESPACE,
                        &user_key,
                        &entry(n + 1, m || matched),
                    )
                    .ctx(|| "IntervalJoin state".into())?;
                self.backend
                    .register_timer(TimeDomain::EventTime, expiry, key, &[side as u8])
                    .ctx(|| "IntervalJoin timer".into())?;
            }
        }
        if late > 0 {
            self.late.fetch_add(late, Ordering::Relaxed);
        }
        if !padded.is_empty() {
            let idx = UInt32Array::from(padded);
            let mut cols = Vec::with_capacity(batch.num_columns());
            for c in batch.columns() {
                cols.push(take(c, &idx, None).ctx(|| "IntervalJoin output".into())?);
            }
            let b = self.pad(side, cols, idx.len())?;
            out.collect(b)?;
        }
        if pairs.is_empty() {
            return Ok(());
        }
        let other_input = &self.inputs[other];
        let parser = other_input.rows.parser();
        let stored_cols = other_input
            .rows
            .convert_rows(stored.iter().map(|r| parser.parse(r)))
            .ctx(|| "IntervalJoin stored rows".into())?;
        for chunk in pairs.chunks(OUT_BATCH) {
            let here = UInt32Array::from(chunk.iter().map(|p| p.0).collect::<Vec<_>>());
            let there = UInt32Array::from(chunk.iter().map(|p| p.1).collect::<Vec<_>>());
            let mut this_cols = Vec::with_capacity(batch.num_columns());
            for c in batch.columns() {
                this_cols.push(take(c, &here, None).ctx(|| "IntervalJoin output".into())?);
            }
            let mut other_cols = Vec::with_capacity(stored_cols.len());
            for c in &stored_cols {
                other_cols.push(take(c, &there, None).ctx(|| "IntervalJoin output".into())?);
            }
            let cols: Vec<ArrayRef> = if side == LEFT {
                this_cols.into_iter().chain(other_cols).collect()
            } else {
                other_cols.into_iter().chain(this_cols).collect()
            };
            let b = RecordBatch::try_new(self.output.clone(), cols)
                .ctx(|| "IntervalJoin output".into())?;
            out.collect(b)?;
        }
        Ok(())
    }

    /// Rows of input `side` (its columns) with NULLs for the other input.
    fn pad(&self, side: usize, cols: Vec<ArrayRef>, n: usize) -> Result<RecordBatch> {
        let nulls: Vec<ArrayRef> = self.inputs[1 - side]
            .schema
            .fields()
            .iter()
            .map(|f| new_null_array(f.data_type(), n))
            .collect();
        let cols: Vec<ArrayRef> = if side == LEFT {
            cols.into_iter().chain(nulls).collect()
        } else {
            nulls.into_iter().chain(cols).collect()
        };
        RecordBatch::try_new(self.output.clone(), cols).ctx(|| "IntervalJoin padded output".into())
    }

    /// Drops the stored rows no future row can match; an outer join emits
    /// those of a padded input that never matched, with NULLs.
    fn expire(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        // Unmatched rows to pad, by input.
        let mut unmatched: [Vec<Vec<u8>>; 2] = [Vec::new(), Vec::new()];
        loop {
            let mut timers = std::mem::take(&mut self.timers);
            timers.clear();
            let n = self
                .backend
                .drain_timers(TimeDomain::EventTime, watermark, &mut timers)
                .ctx(|| "IntervalJoin timers".into())?;
            if n == 0 {
                self.timers = timers;
                break;
            }
            for t in &timers {
                let side = match t.namespace.as_slice() {
                    [0] => LEFT,
                    [1] => RIGHT,
                    other => {
                        return Err(RuntimeError::Task(format!(
                            "IntervalJoin: timer with unknown input {other:?}"
                        )));
                    }
                };
                let state = self.inputs[side].state;
                let pads = self.kind.pads(side);
                let mut gone: Vec<Vec<u8>> = Vec::new();
                let mut bad = false;
                let (lower, upper) = (self.lower, self.upper);
                let lost = &mut unmatched[side];
                self.backend
                    .map_for_each(state, &t.key, NO_NAMESPACE, &mut |uk, v| {
                        let Some(at) = time_of(uk) else {
                            bad = true;
                            return Ok(());
                        };
                        let expiry = if side == LEFT {
                            at.saturating_sub(lower)
                        } else {
                            at.saturating_add(upper)
                        };
                        if expiry <= watermark {
                            gone.push(uk.to_vec());
                            if pads && !matched_of(v) {
                                for _ in 0..count_of(v) {
                                    lost.push(uk[8..].to_vec());
                                }
                            }
                        }
                        Ok(())
                    })
                    .ctx(|| "IntervalJoin state".into())?;
                if bad {
                    return Err(corrupt());
                }
                for uk in gone {
                    self.backend
                        .map_remove(state, &t.key, NO_NAMESPACE, &uk)
                        .ctx(|| "IntervalJoin state".into())?;
                }
            }
            self.timers = timers;
        }
        for side in [LEFT, RIGHT] {
            for chunk in unmatched[side].chunks(OUT_BATCH) {
                let input = &self.inputs[side];
                let parser = input.rows.parser();
                let cols = input
                    .rows
                    .convert_rows(chunk.iter().map(|r| parser.parse(r)))
                    .ctx(|| "IntervalJoin stored rows".into())?;
                let b = self.pad(side, cols, chunk.len())?;
                out.collect(b)?;
            }
        }
        Ok(())
    }
}

fn self_matches(side: usize, t: i64, other_t: i64, lower: i64, upper: i64) -> bool {
    let (l, r) = if side == LEFT {
        (t, other_t)
    } else {
        (other_t, t)
    };
    r.saturating_add(lower) <= l && l <= r.saturating_add(upper)
}

impl Operator for IntervalJoinOp {
    fn name(&self) -> String {
        format!(
            "IntervalJoin({}, right.t + {} ms <= left.t <= right.t + {} ms)",
            self.kind.name(),
            self.lower,
            self.upper
        )
    }

    fn process(&mut self, batch: RecordBatch, out: &mut dyn Collector) -> Result<()> {
        self.process_side(LEFT, batch, out)
    }

    fn process_input(
        &mut self,
        input: usize,
        batch: RecordBatch,
        out: &mut dyn Collector,
    ) -> Result<()> {
        match input {
            LEFT | RIGHT => self.process_side(input, batch, out),
            other => Err(RuntimeError::Task(format!(
                "IntervalJoin has two inputs, got a batch for input {other}"
            ))),
        }
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        self.expire(watermark, out)?;
        let held = if watermark == MAX_WATERMARK {
            MAX_WATERMARK
        } else {
            watermark.saturating_sub(self.lower.saturating_neg().max(self.upper).max(0))
        };
        if held > self.out_watermark {
            self.out_watermark = held;
            out.watermark(held)?;
        }
        Ok(())
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Box<dyn PendingSnapshot>>> {
        Ok(Some(
            self.backend
                .snapshot()
                .ctx(|| "IntervalJoin snapshot".into())?,
        ))
    }

    fn restore(&mut self, files: &mut [&mut dyn ReadSeek], watermark: i64) -> Result<()> {
        self.backend
            .restore(files)
            .ctx(|| "IntervalJoin restore".into())?;
        self.watermark = self.watermark.max(watermark);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMillisecondArray};
    use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};
    use sluice_state::{KeyedStateBackend, key_group_range};

    use super::{IntervalJoinOp, LEFT, RIGHT};
    use crate::operator::{Operator, VecCollector};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
        ]))
    }

    fn rows(rows: &[(&str, i64)]) -> RecordBatch {
        let k: ArrayRef = Arc::new(StringArray::from(
            rows.iter().map(|r| r.0).collect::<Vec<_>>(),
        ));
        let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(
            rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        ));
        RecordBatch::try_new(schema(), vec![k, ts]).expect("batch")
    }

    fn join(backend: Box<dyn KeyedStateBackend>) -> IntervalJoinOp {
        let out = Arc::new(Schema::new(
            schema()
                .fields()
                .iter()
                .chain(schema().fields().iter())
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>(),
        ));
        // right.t - 1000 <= left.t <= right.t + 500
        IntervalJoinOp::new(
            sluice_sql::JoinKind::Inner,
            schema(),
            schema(),
            out,
            vec![0],
            vec![0],
            1,
            1,
            -1000,
            500,
            backend,
            Arc::new(AtomicU64::new(0)),
        )
        .expect("join")
    }

    /// Stored rows go when the watermark passes their bound: left rows at
    /// `t + 1000`, right rows at `t + 500`; state is empty at the end.
    fn state_is_cleaned_up(backend: Box<dyn KeyedStateBackend>) {
        let mut op = join(backend);
        let mut out = VecCollector::default();
        op.process_input(
            LEFT,
            rows(&[("a", 1_000), ("b", 1_000), ("a", 1_000)]),
            &mut out,
        )
        .expect("left");
        op.process_input(RIGHT, rows(&[("a", 1_200), ("c", 3_000)]), &mut out)
            .expect("right");
        assert_eq!(out.batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert_eq!(op.stored_rows().expect("size"), 5);
        // Right (a, 1200) is kept until 1700, the left rows until 2000.
        op.on_watermark(1_699, &mut out).expect("watermark");
        assert_eq!(op.stored_rows().expect("size"), 5);
        op.on_watermark(1_700, &mut out).expect("watermark");
        assert_eq!(op.stored_rows().expect("size"), 4);
        op.on_watermark(2_000, &mut out).expect("watermark");
        assert_eq!(op.stored_rows().expect("size"), 1);
        // (a, 2100) is kept until 2600.
        op.process_input(RIGHT, rows(&[("a", 2_100)]), &mut out)
            .expect("right");
        op.on_watermark(2_700, &mut out).expect("watermark");
        assert_eq!(op.stored_rows().expect("size"), 1);
        op.on_watermark(3_500, &mut out).expect("watermark");
        assert_eq!(op.stored_rows().expect("size"), 0);
        // Output watermark: held back by max(1000, 500).
        assert_eq!(out.watermarks, [699, 700, 1_000, 1_700, 2_500]);
    }

    #[test]
    fn memory_state_is_cleaned_up_by_the_watermark() {
        let range = key_group_range(128, 1, 0).expect("range");
        state_is_cleaned_up(Box::new(
            sluice_state::MemoryBackend::new(128, range).expect("memory backend"),
        ));
    }

    #[test]
    fn rocksdb_state_is_cleaned_up_by_the_watermark() {
        let dir = tempfile::tempdir().expect("tempdir");
        let range = key_group_range(128, 1, 0).expect("range");
        state_is_cleaned_up(Box::new(
            sluice_state_rocksdb::RocksDbBackend::open_temp(
                Some(dir.path()),
                128,
                range,
                sluice_state_rocksdb::RocksDbConfig::default(),
            )
            .expect("rocksdb backend"),
        ));
    }
}

//! Event-time window aggregation for the `TUMBLE`, `HOP` and `SESSION` TVFs
//! grouped by `window_start, window_end, keys…`.
//!
//! Accumulators live in keyed state with the window as namespace and an
//! event-time timer at the window's last millisecond; a row whose every window
//! is already closed by the watermark is late (counted, dropped), as Flink's.
//! Sessions of a key are kept as one value (a list of `[start, end) + acc`)
//! and merged when a row bridges them.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use arrow_array::{ArrayRef, RecordBatch, TimestampMillisecondArray};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use sluice_sql::{AggCall, WindowKind};
use sluice_state::{
    DueTimers, KeyedStateBackend, NO_NAMESPACE, PendingSnapshot, ReadSeek, StateId, StateKind,
    TimeDomain,
};

use crate::accum::{AggLayout, AggOutput};
use crate::error::{Context, Result};
use crate::eval::timestamps_ms;
use crate::keys::KeyEncoder;
use crate::operator::{Collector, Operator};
use crate::ops::LateCounter;

pub struct WindowOp {
    keys: KeyEncoder,
    time: usize,
    window: WindowKind,
    layout: AggLayout,
    backend: Box<dyn KeyedStateBackend>,
    acc: StateId,
    /// COUNT(DISTINCT) values seen, per (key, window, aggregate).
    seen: StateId,
    sessions: StateId,
    schema: SchemaRef,
    watermark: i64,
    late: LateCounter,
    /// Kept across firings with their capacity: a firing drains a window of every key.
    due: DueTimers,
    arg_cols: Vec<Option<usize>>,
}

fn ns(end: i64) -> [u8; 8] {
    end.to_be_bytes()
}

/// Sessions of one key: `[start i64][end i64][acc len u32][acc]…`.
fn decode_sessions(b: &[u8]) -> Vec<(i64, i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut p = 0;
    while p + 20 <= b.len() {
        let s = i64::from_le_bytes(b[p..p + 8].try_into().unwrap_or([0; 8]));
        let e = i64::from_le_bytes(b[p + 8..p + 16].try_into().unwrap_or([0; 8]));
        let l = u32::from_le_bytes(b[p + 16..p + 20].try_into().unwrap_or([0; 4])) as usize;
        out.push((s, e, b[p + 20..p + 20 + l].to_vec()));
        p += 20 + l;
    }
    out
}

fn encode_sessions(s: &[(i64, i64, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (a, b, acc) in s {
        out.extend_from_slice(&a.to_le_bytes());
        out.extend_from_slice(&b.to_le_bytes());
        out.extend_from_slice(&(acc.len() as u32).to_le_bytes());
        out.extend_from_slice(acc);
    }
    out
}

impl WindowOp {
    pub fn new(
        input: SchemaRef,
        keys: Vec<usize>,
        time: usize,
        window: WindowKind,
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
            .register("window-acc", StateKind::Value)
            .ctx(|| "WindowAggregate state".into())?;
        let seen = backend
            .register("window-distinct", StateKind::Map)
            .ctx(|| "WindowAggregate state".into())?;
        let sessions = backend
            .register("window-sessions", StateKind::Value)
            .ctx(|| "WindowAggregate state".into())?;
        let mut fields: Vec<Field> = keys.iter().map(|&k| input.field(k).clone()).collect();
        fields.push(Field::new(
            "window_start",
            sluice_sql::types::timestamp(),
            false,
        ));
        fields.push(Field::new(
            "window_end",
            sluice_sql::types::timestamp(),
            false,
        ));
        for (i, a) in aggs.iter().enumerate() {
            fields.push(Field::new(format!("$agg{i}"), a.ty.clone(), true));
        }
        Ok(WindowOp {
            keys: KeyEncoder::new(keys, &types)?,
            time,
            window,
            layout,
            backend,
            acc,
            seen,
            sessions,
            schema: Arc::new(Schema::new(fields)),
            watermark: i64::MIN,
            late,
            due: DueTimers::default(),
            arg_cols: aggs.iter().map(|a| a.arg).collect(),
        })
    }

    /// Ends of the windows a timestamp belongs to.
    fn window_ends(&self, ts: i64, out: &mut Vec<i64>) {
        out.clear();
        match self.window {
            WindowKind::Tumble { size_ms } => out.push(ts - ts.rem_euclid(size_ms) + size_ms),
            WindowKind::Hop { size_ms, slide_ms } => {
                let last_start = ts - ts.rem_euclid(slide_ms);
                let mut start = last_start;
                while start > ts - size_ms {
                    out.push(start + size_ms);
                    start -= slide_ms;
                }
            }
            WindowKind::Session { .. } => {}
        }
    }

    fn size_ms(&self) -> i64 {
        match self.window {
            WindowKind::Tumble { size_ms } | WindowKind::Hop { size_ms, .. } => size_ms,
            WindowKind::Session { gap_ms } => gap_ms,
        }
    }

    /// For COUNT(DISTINCT …): which aggregates see an already-counted value in this row.
    fn distinct_skips(
        &mut self,
        key: &[u8],
        namespace: &[u8],
        args: &[crate::accum::ArgCol],
        batch: &RecordBatch,
        row: usize,
        calls: &[Option<usize>],
    ) -> Result<Option<Vec<bool>>> {
        if !self.layout.distinct.iter().any(|d| *d) {
            return Ok(None);
        }
        let _ = args;
        let mut skip = vec![false; self.layout.len()];
        for (i, d) in self.layout.distinct.clone().iter().enumerate() {
            if !d {
                continue;
            }
            let Some(col) = calls[i] else { continue };
            let a = batch.column(col);
            if a.is_null(row) {
                continue;
            }
            let v = arrow_cast::display::array_value_to_string(a, row)
                .ctx(|| "COUNT DISTINCT value".into())?;
            let mut ns2 = namespace.to_vec();
            ns2.push(i as u8);
            let present = self
                .backend
                .map_get(self.seen, key, &ns2, v.as_bytes())
                .ctx(|| "WindowAggregate state".into())?
                .is_some();
            if present {
                skip[i] = true;
            } else {
                self.backend
                    .map_put(self.seen, key, &ns2, v.as_bytes(), &[])
                    .ctx(|| "WindowAggregate state".into())?;
            }
        }
        Ok(Some(skip))
    }

    /// `rows` are (the timer in `due` whose key it is, window start, window end, accumulator bytes
    /// in `accs`).
    fn emit_rows(
        &mut self,
        rows: &[(usize, i64, i64, std::ops::Range<usize>)],
        due: &DueTimers,
        accs: &[u8],
        out: &mut dyn Collector,
    ) -> Result<()> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut res: AggOutput = self.layout.output();
        let mut starts = Vec::with_capacity(rows.len());
        let mut ends = Vec::with_capacity(rows.len());
        for (_, s, e, acc) in rows {
            self.layout.emit(&accs[acc.clone()], &mut res);
            starts.push(*s);
            ends.push(*e);
        }
        let keys: Vec<&[u8]> = rows.iter().map(|(t, ..)| due.get(*t).1).collect();
        let mut cols: Vec<ArrayRef> = self.keys.decode(&keys)?;
        cols.push(Arc::new(TimestampMillisecondArray::from(starts)));
        cols.push(Arc::new(TimestampMillisecondArray::from(ends)));
        cols.extend(self.layout.finish(res)?);
        let b = RecordBatch::try_new(self.schema.clone(), cols)
            .ctx(|| "WindowAggregate output".into())?;
        out.collect(b)
    }
}

impl Operator for WindowOp {
    fn name(&self) -> String {
        format!("WindowAggregate({:?})", self.window)
    }

    fn process(&mut self, batch: RecordBatch, _out: &mut dyn Collector) -> Result<()> {
        let keys = self.keys.encode(&batch)?;
        let args = self.layout.args(&batch)?;
        let ts = timestamps_ms(batch.column(self.time))?;
        let arg_cols = self.arg_cols.clone();
        let mut ends = Vec::new();
        let mut late = 0u64;
        for r in 0..batch.num_rows() {
            if ts.is_null(r) {
                late += 1;
                continue;
            }
            let t = ts.value(r);
            let key = keys.key(r);
            if let WindowKind::Session { gap_ms } = self.window {
                if t + gap_ms - 1 <= self.watermark {
                    late += 1;
                    continue;
                }
                self.add_to_session(key, t, gap_ms, &args, r)?;
                continue;
            }
            self.window_ends(t, &mut ends);
            let mut any = false;
            for &end in &ends {
                if end - 1 <= self.watermark {
                    continue;
                }
                any = true;
                let n = ns(end);
                let skip = self.distinct_skips(key, &n, &args, &batch, r, &arg_cols)?;
                let layout = &self.layout;
                let mut fresh = false;
                self.backend
                    .value_update(self.acc, key, &n, &mut |buf, present| {
                        fresh = !present;
                        layout.update(buf, present, &args, r, skip.as_deref());
                        true
                    })
                    .ctx(|| "WindowAggregate state".into())?;
                if fresh {
                    // A window's timer lives exactly as long as its accumulator: new with it.
                    self.backend
                        .register_new_timer(TimeDomain::EventTime, end - 1, key, &n)
                        .ctx(|| "WindowAggregate timer".into())?;
                }
            }
            if !any {
                late += 1;
            }
        }
        if late > 0 {
            self.late.fetch_add(late, Ordering::Relaxed);
        }
        Ok(())
    }

    fn on_watermark(&mut self, watermark: i64, out: &mut dyn Collector) -> Result<()> {
        if watermark <= self.watermark {
            return Ok(());
        }
        self.watermark = watermark;
        let size = self.size_ms();
        let mut due = std::mem::take(&mut self.due);
        let fired = self.fire(watermark, size, &mut due, out);
        self.due = due;
        fired?;
        out.watermark(watermark)
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn snapshot(&mut self, _checkpoint_id: u64) -> Result<Option<Box<dyn PendingSnapshot>>> {
        Ok(Some(
            self.backend
                .snapshot()
                .ctx(|| "WindowAggregate snapshot".into())?,
        ))
    }

    fn restore(&mut self, files: &mut [&mut dyn ReadSeek], watermark: i64) -> Result<()> {
        self.backend
            .restore(files)
            .ctx(|| "WindowAggregate restore".into())?;
        self.watermark = self.watermark.max(watermark);
        Ok(())
    }
}

impl WindowOp {
    /// Fires every window whose timer is at or before `watermark`, until none is left.
    fn fire(
        &mut self,
        watermark: i64,
        size: i64,
        due: &mut DueTimers,
        out: &mut dyn Collector,
    ) -> Result<()> {
        loop {
            due.clear();
            let n = self
                .backend
                .drain_timers_into(TimeDomain::EventTime, watermark, due)
                .ctx(|| "WindowAggregate timers".into())?;
            if n == 0 {
                return Ok(());
            }
            let mut rows = Vec::with_capacity(n);
            // Accumulators of the fired windows back to back: no allocation per window.
            let mut accs = Vec::new();
            for i in 0..n {
                let (time, key, namespace) = due.get(i);
                if let WindowKind::Session { .. } = self.window {
                    let Some(cur) = self
                        .backend
                        .value_get(self.sessions, key, NO_NAMESPACE)
                        .ctx(|| "WindowAggregate state".into())?
                    else {
                        continue;
                    };
                    let mut sessions = decode_sessions(cur);
                    if let Some(pos) = sessions.iter().position(|(_, e, _)| e - 1 == time) {
                        let (s, e, acc) = sessions.remove(pos);
                        let at = accs.len();
                        accs.extend_from_slice(&acc);
                        rows.push((i, s, e, at..accs.len()));
                        if sessions.is_empty() {
                            self.backend
                                .clear(self.sessions, key, NO_NAMESPACE)
                                .ctx(|| "WindowAggregate state".into())?;
                        } else {
                            self.backend
                                .value_put(
                                    self.sessions,
                                    key,
                                    NO_NAMESPACE,
                                    &encode_sessions(&sessions),
                                )
                                .ctx(|| "WindowAggregate state".into())?;
                        }
                    }
                    continue;
                }
                let end = time + 1;
                // Read and delete the accumulator in one state access.
                let at = accs.len();
                let mut present = false;
                self.backend
                    .value_update(self.acc, key, namespace, &mut |buf, found| {
                        present = found;
                        accs.extend_from_slice(buf);
                        false
                    })
                    .ctx(|| "WindowAggregate state".into())?;
                if present {
                    if self.layout.distinct.iter().any(|d| *d) {
                        for d in 0..self.layout.len() {
                            let mut ns2 = namespace.to_vec();
                            ns2.push(d as u8);
                            self.backend
                                .clear(self.seen, key, &ns2)
                                .ctx(|| "WindowAggregate state".into())?;
                        }
                    }
                    rows.push((i, end - size, end, at..accs.len()));
                }
            }
            // The rows' keys stay in `due` until they are emitted.
            self.emit_rows(&rows, due, &accs, out)?;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_to_session(
        &mut self,
        key: &[u8],
        t: i64,
        gap_ms: i64,
        args: &[crate::accum::ArgCol],
        r: usize,
    ) -> Result<()> {
        let current = self
            .backend
            .value_get(self.sessions, key, NO_NAMESPACE)
            .ctx(|| "WindowAggregate state".into())?;
        let sessions = current.map(decode_sessions).unwrap_or_default();
        let (mut start, mut end) = (t, t + gap_ms);
        let mut acc = Vec::new();
        self.layout.update(&mut acc, false, args, r, None);
        let mut kept = Vec::with_capacity(sessions.len() + 1);
        let mut merged = Vec::new();
        for (s, e, a) in sessions {
            // Flink merges windows that overlap or touch.
            if s <= end && start <= e {
                merged.push((s, e, a));
            } else {
                kept.push((s, e, a));
            }
        }
        let mut old_ends = Vec::new();
        for (s, e, a) in merged {
            start = start.min(s);
            end = end.max(e);
            self.layout.merge(&mut acc, &a);
            old_ends.push(e);
        }
        for e in old_ends {
            if e != end {
                self.backend
                    .delete_timer(TimeDomain::EventTime, e - 1, key, NO_NAMESPACE)
                    .ctx(|| "WindowAggregate timer".into())?;
            }
        }
        self.backend
            .register_timer(TimeDomain::EventTime, end - 1, key, NO_NAMESPACE)
            .ctx(|| "WindowAggregate timer".into())?;
        kept.push((start, end, acc));
        self.backend
            .value_put(self.sessions, key, NO_NAMESPACE, &encode_sessions(&kept))
            .ctx(|| "WindowAggregate state".into())?;
        Ok(())
    }
}

use arrow_array::Array;

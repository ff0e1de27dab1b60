//! Aggregate accumulators stored as bytes in keyed state.
//!
//! Layout: a fixed part with one slot per aggregate (numeric slots are a
//! present flag and 8 bytes; AVG adds an 8-byte count), updated in place so a
//! counter update neither allocates nor copies; string MIN/MAX values follow
//! in a variable tail as `[present u8][len u32][bytes]` per string aggregate.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_cast::cast::cast;
use arrow_schema::DataType;
use sluice_sql::{AggCall, AggFunc};

use crate::error::{Context, Result, RuntimeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Int,
    Float,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    CountStar,
    /// COUNT(x) and COUNT(DISTINCT x) (the operator decides whether a value is new).
    Count,
    Sum(Num),
    Avg(Num),
    Min(Num),
    Max(Num),
    MinStr,
    MaxStr,
}

/// Argument columns of one batch, widened to i64 / f64 / strings.
pub enum ArgCol {
    None,
    Int(Int64Array),
    Float(Float64Array),
    Str(StringArray),
}

impl ArgCol {
    fn is_null(&self, row: usize) -> bool {
        match self {
            ArgCol::None => false,
            ArgCol::Int(a) => a.is_null(row),
            ArgCol::Float(a) => a.is_null(row),
            ArgCol::Str(a) => a.is_null(row),
        }
    }
}

pub struct AggLayout {
    slots: Vec<(Slot, Option<usize>, usize)>,
    out_types: Vec<DataType>,
    fixed_len: usize,
    string_slots: usize,
    pub distinct: Vec<bool>,
}

fn num_of(t: &DataType) -> Num {
    if matches!(t, DataType::Float32 | DataType::Float64) {
        Num::Float
    } else {
        Num::Int
    }
}

impl AggLayout {
    pub fn new(calls: &[AggCall], input_types: &[DataType]) -> Result<Self> {
        let mut slots = Vec::new();
        let mut off = 0;
        let mut string_slots = 0;
        for c in calls {
            let arg_ty = c
                .arg
                .map(|i| {
                    input_types.get(i).cloned().ok_or_else(|| {
                        RuntimeError::Plan(format!("aggregate argument #{i} out of range"))
                    })
                })
                .transpose()?;
            let slot = match (c.func, &arg_ty) {
                (AggFunc::Count, None) => Slot::CountStar,
                (AggFunc::Count, Some(_)) => Slot::Count,
                (AggFunc::Sum, Some(t)) => Slot::Sum(num_of(t)),
                (AggFunc::Avg, Some(t)) => Slot::Avg(num_of(t)),
                (AggFunc::Min, Some(DataType::Utf8)) => Slot::MinStr,
                (AggFunc::Max, Some(DataType::Utf8)) => Slot::MaxStr,
                (AggFunc::Min, Some(t)) => Slot::Min(num_of(t)),
                (AggFunc::Max, Some(t)) => Slot::Max(num_of(t)),
                (f, None) => return Err(RuntimeError::Plan(format!("{f:?} needs an argument"))),
            };
            let size = match slot {
                Slot::CountStar | Slot::Count => 8,
                Slot::Avg(_) => 17,
                Slot::MinStr | Slot::MaxStr => {
                    string_slots += 1;
                    0
                }
                _ => 9,
            };
            slots.push((slot, c.arg, off));
            off += size;
        }
        Ok(AggLayout {
            slots,
            out_types: calls.iter().map(|c| c.ty.clone()).collect(),
            fixed_len: off,
            string_slots,
            distinct: calls.iter().map(|c| c.distinct).collect(),
        })
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Argument columns of a batch, one per aggregate.
    pub fn args(&self, batch: &RecordBatch) -> Result<Vec<ArgCol>> {
        self.slots
            .iter()
            .map(|(slot, arg, _)| {
                let Some(i) = arg else {
                    return Ok(ArgCol::None);
                };
                let a = batch.column(*i);
                Ok(match slot {
                    Slot::MinStr | Slot::MaxStr => ArgCol::Str(a.as_string::<i32>().clone()),
                    Slot::Count => ArgCol::Int(Int64Array::from(
                        (0..a.len())
                            .map(|r| if a.is_null(r) { None } else { Some(0) })
                            .collect::<Vec<_>>(),
                    )),
                    Slot::Sum(Num::Float)
                    | Slot::Avg(Num::Float)
                    | Slot::Min(Num::Float)
                    | Slot::Max(Num::Float) => ArgCol::Float(
                        cast(a, &DataType::Float64)
                            .ctx(|| "aggregate argument".into())?
                            .as_primitive::<Float64Type>()
                            .clone(),
                    ),
                    _ => {
                        let w = match a.data_type() {
                            DataType::Timestamp(_, _) => cast(
                                &cast(a, &DataType::Int64).ctx(|| "aggregate argument".into())?,
                                &DataType::Int64,
                            ),
                            _ => cast(a, &DataType::Int64),
                        }
                        .ctx(|| "aggregate argument".into())?;
                        ArgCol::Int(w.as_primitive::<Int64Type>().clone())
                    }
                })
            })
            .collect()
    }

    fn init(&self, buf: &mut Vec<u8>) {
        buf.clear();
        buf.resize(self.fixed_len, 0);
        for _ in 0..self.string_slots {
            buf.extend_from_slice(&[0, 0, 0, 0, 0]);
        }
    }

    /// Adds row `row` to the accumulator in `buf` (initialising it when `present` is false).
    /// `skip[i]` leaves aggregate i unchanged (a COUNT DISTINCT value already seen).
    pub fn update(
        &self,
        buf: &mut Vec<u8>,
        present: bool,
        args: &[ArgCol],
        row: usize,
        skip: Option<&[bool]>,
    ) {
        if !present || buf.len() < self.fixed_len {
            self.init(buf);
        }
        let mut string_index = 0;
        for (i, (slot, _, off)) in self.slots.iter().enumerate() {
            let off = *off;
            if matches!(slot, Slot::MinStr | Slot::MaxStr) {
                let si = string_index;
                string_index += 1;
                if let ArgCol::Str(s) = &args[i]
                    && !s.is_null(row)
                {
                    let v = s.value(row);
                    let better = match self.string_at(buf, si) {
                        None => true,
                        Some(c) if *slot == Slot::MinStr => v < c.as_str(),
                        Some(c) => v > c.as_str(),
                    };
                    if better {
                        self.set_string(buf, si, v);
                    }
                }
                continue;
            }
            if skip.map(|s| s[i]).unwrap_or(false) || args[i].is_null(row) {
                continue;
            }
            match (slot, &args[i]) {
                (Slot::CountStar, _) | (Slot::Count, _) => add_i64(buf, off, 1),
                (Slot::Sum(Num::Int), ArgCol::Int(a)) => {
                    buf[off] = 1;
                    add_i64(buf, off + 1, a.value(row));
                }
                (Slot::Sum(Num::Float), ArgCol::Float(a)) => {
                    buf[off] = 1;
                    add_f64(buf, off + 1, a.value(row));
                }
                (Slot::Avg(Num::Int), ArgCol::Int(a)) => {
                    buf[off] = 1;
                    add_i64(buf, off + 1, a.value(row));
                    add_i64(buf, off + 9, 1);
                }
                (Slot::Avg(Num::Float), ArgCol::Float(a)) => {
                    buf[off] = 1;
                    add_f64(buf, off + 1, a.value(row));
                    add_i64(buf, off + 9, 1);
                }
                (Slot::Min(Num::Int) | Slot::Max(Num::Int), ArgCol::Int(a)) => {
                    let v = a.value(row);
                    let cur = get_i64(buf, off + 1);
                    let take = buf[off] == 0
                        || if matches!(slot, Slot::Min(_)) {
                            v < cur
                        } else {
                            v > cur
                        };
                    if take {
                        buf[off] = 1;
                        set_i64(buf, off + 1, v);
                    }
                }
                (Slot::Min(Num::Float) | Slot::Max(Num::Float), ArgCol::Float(a)) => {
                    let v = a.value(row);
                    let cur = f64::from_bits(get_i64(buf, off + 1) as u64);
                    let take = buf[off] == 0
                        || if matches!(slot, Slot::Min(_)) {
                            v < cur
                        } else {
                            v > cur
                        };
                    if take {
                        buf[off] = 1;
                        set_i64(buf, off + 1, v.to_bits() as i64);
                    }
                }
                _ => {}
            }
        }
    }

    /// Merges accumulator `other` into `buf` (session windows).
    pub fn merge(&self, buf: &mut Vec<u8>, other: &[u8]) {
        let mut string_index = 0;
        for (slot, _, off) in &self.slots {
            let off = *off;
            match slot {
                Slot::CountStar | Slot::Count => add_i64(buf, off, get_i64(other, off)),
                Slot::Sum(n) | Slot::Avg(n) if other[off] == 1 => {
                    buf[off] = 1;
                    match n {
                        Num::Int => add_i64(buf, off + 1, get_i64(other, off + 1)),
                        Num::Float => {
                            add_f64(buf, off + 1, f64::from_bits(get_i64(other, off + 1) as u64))
                        }
                    }
                    if matches!(slot, Slot::Avg(_)) {
                        add_i64(buf, off + 9, get_i64(other, off + 9));
                    }
                }
                Slot::Min(n) | Slot::Max(n) if other[off] == 1 => {
                    let ov = get_i64(other, off + 1);
                    let cv = get_i64(buf, off + 1);
                    let less = match n {
                        Num::Int => ov < cv,
                        Num::Float => f64::from_bits(ov as u64) < f64::from_bits(cv as u64),
                    };
                    let take = buf[off] == 0
                        || if matches!(slot, Slot::Min(_)) {
                            less
                        } else {
                            !less && ov != cv
                        };
                    if take {
                        buf[off] = 1;
                        set_i64(buf, off + 1, ov);
                    }
                }
                Slot::MinStr | Slot::MaxStr => {
                    let si = string_index;
                    string_index += 1;
                    if let Some(o) = self.string_at(other, si) {
                        let better = match self.string_at(buf, si) {
                            None => true,
                            Some(c) => {
                                if *slot == Slot::MinStr {
                                    o < c
                                } else {
                                    o > c
                                }
                            }
                        };
                        if better {
                            self.set_string(buf, si, &o);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    fn string_pos(&self, buf: &[u8], si: usize) -> usize {
        let mut p = self.fixed_len;
        for _ in 0..si {
            let len = u32::from_le_bytes([buf[p + 1], buf[p + 2], buf[p + 3], buf[p + 4]]) as usize;
            p += 5 + len;
        }
        p
    }

    fn string_at(&self, buf: &[u8], si: usize) -> Option<String> {
        let p = self.string_pos(buf, si);
        if buf[p] == 0 {
            return None;
        }
        let len = u32::from_le_bytes([buf[p + 1], buf[p + 2], buf[p + 3], buf[p + 4]]) as usize;
        Some(String::from_utf8_lossy(&buf[p + 5..p + 5 + len]).into_owned())
    }

    fn set_string(&self, buf: &mut Vec<u8>, si: usize, v: &str) {
        let p = self.string_pos(buf, si);
        let old_len = u32::from_le_bytes([buf[p + 1], buf[p + 2], buf[p + 3], buf[p + 4]]) as usize;
        let mut repl = Vec::with_capacity(5 + v.len());
        repl.push(1);
        repl.extend_from_slice(&(v.len() as u32).to_le_bytes());
        repl.extend_from_slice(v.as_bytes());
        buf.splice(p..p + 5 + old_len, repl);
    }

    /// Appends the current results of `buf` to the output builders.
    pub fn emit(&self, buf: &[u8], out: &mut AggOutput) {
        let mut string_index = 0;
        for (i, (slot, _, off)) in self.slots.iter().enumerate() {
            let off = *off;
            match slot {
                Slot::CountStar | Slot::Count => out.ints[i].push(Some(get_i64(buf, off))),
                Slot::Sum(Num::Int) | Slot::Min(Num::Int) | Slot::Max(Num::Int) => {
                    out.ints[i].push((buf[off] == 1).then(|| get_i64(buf, off + 1)))
                }
                Slot::Sum(Num::Float) | Slot::Min(Num::Float) | Slot::Max(Num::Float) => out.floats
                    [i]
                    .push((buf[off] == 1).then(|| f64::from_bits(get_i64(buf, off + 1) as u64))),
                Slot::Avg(n) => {
                    let count = get_i64(buf, off + 9);
                    if buf[off] == 0 || count == 0 {
                        out.ints[i].push(None);
                        out.floats[i].push(None);
                    } else {
                        match n {
                            // Flink's AVG of integers is an integer (truncating).
                            Num::Int => out.ints[i].push(Some(get_i64(buf, off + 1) / count)),
                            Num::Float => out.floats[i].push(Some(
                                f64::from_bits(get_i64(buf, off + 1) as u64) / count as f64,
                            )),
                        }
                    }
                }
                Slot::MinStr | Slot::MaxStr => {
                    out.strings[i].push(self.string_at(buf, string_index));
                    string_index += 1;
                }
            }
        }
        out.rows += 1;
    }

    pub fn output(&self) -> AggOutput {
        let n = self.slots.len();
        AggOutput {
            ints: vec![Vec::new(); n],
            floats: vec![Vec::new(); n],
            strings: vec![Vec::new(); n],
            rows: 0,
        }
    }

    /// The collected results as arrays of the aggregates' SQL types.
    pub fn finish(&self, out: AggOutput) -> Result<Vec<ArrayRef>> {
        let AggOutput {
            ints,
            floats,
            strings,
            ..
        } = out;
        let mut cols = Vec::with_capacity(self.slots.len());
        for (i, ((slot, _, _), ty)) in self.slots.iter().zip(&self.out_types).enumerate() {
            let raw: ArrayRef = match slot {
                Slot::MinStr | Slot::MaxStr => Arc::new(StringArray::from(strings[i].clone())),
                Slot::Sum(Num::Float)
                | Slot::Min(Num::Float)
                | Slot::Max(Num::Float)
                | Slot::Avg(Num::Float) => Arc::new(Float64Array::from(floats[i].clone())),
                _ => Arc::new(Int64Array::from(ints[i].clone())),
            };
            let col = if raw.data_type() == ty {
                raw
            } else if let DataType::Timestamp(_, _) = ty {
                let ms = raw
                    .as_primitive::<Int64Type>()
                    .reinterpret_cast::<arrow_array::types::TimestampMillisecondType>();
                cast(&ms, ty).ctx(|| "aggregate result".into())?
            } else {
                cast(&raw, ty).ctx(|| "aggregate result".into())?
            };
            cols.push(col);
        }
        Ok(cols)
    }
}

/// Results collected per aggregate while emitting rows.
pub struct AggOutput {
    ints: Vec<Vec<Option<i64>>>,
    floats: Vec<Vec<Option<f64>>>,
    strings: Vec<Vec<Option<String>>>,
    pub rows: usize,
}

fn get_i64(buf: &[u8], off: usize) -> i64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&buf[off..off + 8]);
    i64::from_le_bytes(b)
}

fn set_i64(buf: &mut [u8], off: usize, v: i64) {
    buf[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

fn add_i64(buf: &mut [u8], off: usize, v: i64) {
    let cur = get_i64(buf, off);
    set_i64(buf, off, cur.wrapping_add(v));
}

fn add_f64(buf: &mut [u8], off: usize, v: f64) {
    let cur = f64::from_bits(get_i64(buf, off) as u64);
    set_i64(buf, off, (cur + v).to_bits() as i64);
}

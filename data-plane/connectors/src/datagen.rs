//! `'connector' = 'datagen'`: Flink's options — `rows-per-second` (default
//! 10000), `number-of-rows` (unbounded when absent), and per field
//! `fields.<col>.kind` (`random` | `sequence`), `min`/`max` (random numbers),
//! `start`/`end` (sequences), `length` (random strings, default 100) and
//! `max-past` (random timestamps in `(now - max-past, now]`). Columns are
//! generated directly as Arrow arrays; rows are split evenly over subtasks.
//!
//! A bounded generator numbers its rows `0..n` (`n` = `number-of-rows` or the
//! shortest sequence); row `i` of a sequence field is `start + i`. Each
//! subtask owns ranges of row numbers and its position is what it has not
//! emitted yet: `{"datagen":{"ranges":[[from,to),…]}}`. On restore the ranges
//! of all old subtasks are concatenated in order and cut evenly over the new
//! parallelism, so no row is lost or repeated across a rescale. An unbounded
//! generator (random values only) has nothing to resume: its position is
//! `{"datagen":{"emitted":n}}`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::{
    ArrayRef, BooleanArray, Float32Array, Float64Array, Int8Array, Int16Array, Int32Array,
    Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::DataType;
use sluice_runtime::connector::{PollStatus, SourceContext, SourceOutput, SourceReader};
use sluice_runtime::{Result, RuntimeError};

const BATCH: usize = 8192;

#[derive(Debug, Clone)]
enum Gen {
    RandomInt {
        min: i64,
        max: i64,
    },
    RandomFloat {
        min: f64,
        max: f64,
    },
    RandomStr {
        length: usize,
    },
    RandomBool,
    RandomTs {
        max_past_ms: i64,
    },
    /// Row `i` is `start + i`.
    Sequence {
        start: i64,
    },
}

/// splitmix64: small, fast and good enough for test data.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [min, max].
    fn range(&mut self, min: i64, max: i64) -> i64 {
        let span = (max as i128 - min as i128 + 1) as u128;
        if span == 0 {
            return min;
        }
        // Lemire's multiply-shift keeps this fast without a modulo.
        let x = ((self.next() as u128 * span) >> 64) as i64;
        min.wrapping_add(x)
    }
}

pub struct DatagenReader {
    ctx: SourceContext,
    gens: Vec<Gen>,
    /// Row numbers still to emit, in order (bounded generators only).
    ranges: Option<VecDeque<(u64, u64)>>,
    rows_per_second: u64,
    rng: Rng,
    started: Instant,
    emitted: u64,
}

fn bad(ctx: &SourceContext, msg: String) -> RuntimeError {
    RuntimeError::Connector {
        connector: "datagen".into(),
        table: ctx.table.name.clone(),
        message: msg,
    }
}

fn parse_i64(ctx: &SourceContext, key: &str, v: &str) -> Result<i64> {
    v.trim()
        .parse()
        .map_err(|_| bad(ctx, format!("option '{key}': '{v}' is not an integer")))
}

pub fn create(ctx: &SourceContext) -> Result<Box<dyn SourceReader>> {
    let opt = |k: &str| ctx.table.option(k).map(str::to_string);
    let total: Option<u64> = opt("number-of-rows")
        .map(|v| parse_i64(ctx, "number-of-rows", &v).map(|x| x.max(0) as u64))
        .transpose()?;
    let rows_per_second = opt("rows-per-second")
        .map(|v| parse_i64(ctx, "rows-per-second", &v))
        .transpose()?
        .unwrap_or(10_000)
        .max(1) as u64;
    let p = ctx.parallelism as u64;
    let mut gens = Vec::new();
    let mut seq_rows: Option<u64> = None;
    for f in ctx.schema.fields() {
        let key = |p: &str| format!("fields.{}.{p}", f.name());
        let kind = opt(&key("kind")).unwrap_or_else(|| "random".into());
        let g = if kind == "sequence" {
            let start = parse_i64(
                ctx,
                &key("start"),
                &opt(&key("start")).ok_or_else(|| {
                    bad(
                        ctx,
                        format!("sequence field '{}' needs '{}'", f.name(), key("start")),
                    )
                })?,
            )?;
            let end = parse_i64(
                ctx,
                &key("end"),
                &opt(&key("end")).ok_or_else(|| {
                    bad(
                        ctx,
                        format!("sequence field '{}' needs '{}'", f.name(), key("end")),
                    )
                })?,
            )?;
            let n = (end - start + 1).max(0) as u64;
            seq_rows = Some(seq_rows.map_or(n, |s: u64| s.min(n)));
            Gen::Sequence { start }
        } else {
            match f.data_type() {
                DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => {
                    let (lo, hi) = match f.data_type() {
                        DataType::Int8 => (i8::MIN as i64, i8::MAX as i64),
                        DataType::Int16 => (i16::MIN as i64, i16::MAX as i64),
                        DataType::Int32 => (i32::MIN as i64, i32::MAX as i64),
                        _ => (i64::MIN, i64::MAX),
                    };
                    let min = opt(&key("min"))
                        .map(|v| parse_i64(ctx, &key("min"), &v))
                        .transpose()?
                        .unwrap_or(lo);
                    let max = opt(&key("max"))
                        .map(|v| parse_i64(ctx, &key("max"), &v))
                        .transpose()?
                        .unwrap_or(hi);
                    if min > max {
                        return Err(bad(
                            ctx,
                            format!("field '{}': min {min} is above max {max}", f.name()),
                        ));
                    }
                    Gen::RandomInt { min, max }
                }
                DataType::Float32 | DataType::Float64 => {
                    let pf = |k: String, d: f64| -> Result<f64> {
                        opt(&k)
                            .map(|v| {
                                v.trim().parse::<f64>().map_err(|_| {
                                    bad(ctx, format!("option '{k}': '{v}' is not a number"))
                                })
                            })
                            .transpose()
                            .map(|x| x.unwrap_or(d))
                    };
                    Gen::RandomFloat {
                        min: pf(key("min"), 0.0)?,
                        max: pf(key("max"), 1.0)?,
                    }
                }
                DataType::Utf8 => {
                    let length = opt(&key("length"))
                        .map(|v| parse_i64(ctx, &key("length"), &v))
                        .transpose()?
                        .unwrap_or(100)
                        .max(0) as usize;
                    Gen::RandomStr { length }
                }
                DataType::Boolean => Gen::RandomBool,
                DataType::Timestamp(_, _) => {
                    let mp = opt(&key("max-past"))
                        .map(|v| {
                            sluice_sql::parse_duration_ms(&v).ok_or_else(|| {
                                bad(
                                    ctx,
                                    format!(
                                        "option '{}': '{v}' is not a duration",
                                        key("max-past")
                                    ),
                                )
                            })
                        })
                        .transpose()?
                        .unwrap_or(0);
                    Gen::RandomTs {
                        max_past_ms: mp as i64,
                    }
                }
                other => {
                    return Err(bad(
                        ctx,
                        format!("cannot generate column '{}' of type {other}", f.name()),
                    ));
                }
            }
        };
        gens.push(g);
    }
    let rows = match (total, seq_rows) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let ranges = match rows {
        None => None,
        Some(n) if ctx.restore.is_empty() => Some(cut(&[(0, n)], ctx.subtask, ctx.parallelism)),
        Some(_) => Some(cut(&restored_ranges(ctx)?, ctx.subtask, ctx.parallelism)),
    };
    Ok(Box::new(DatagenReader {
        ctx: ctx.clone(),
        gens,
        ranges,
        rows_per_second: rows_per_second.div_ceil(p).max(1),
        rng: Rng(0x5EED_0000 + ctx.subtask as u64),
        started: Instant::now(),
        emitted: 0,
    }))
}

/// Subtask `subtask`'s even share of the rows of `ranges` taken in order.
fn cut(ranges: &[(u64, u64)], subtask: usize, parallelism: usize) -> VecDeque<(u64, u64)> {
    let total: u64 = ranges.iter().map(|(a, b)| b - a).sum();
    let p = parallelism.max(1) as u128;
    let share = |j: u128| (total as u128 * j / p) as u64;
    let (lo, hi) = (share(subtask as u128), share(subtask as u128 + 1));
    let mut out = VecDeque::new();
    let mut at = 0u64;
    for &(a, b) in ranges {
        let len = b - a;
        let (from, to) = (lo.max(at), hi.min(at + len));
        if from < to {
            out.push_back((a + from - at, a + to - at));
        }
        at += len;
    }
    out
}

/// The not-yet-emitted ranges of all subtasks of the restored snapshot, sorted.
fn restored_ranges(ctx: &SourceContext) -> Result<Vec<(u64, u64)>> {
    let mut all = Vec::new();
    for pos in &ctx.restore {
        let v: serde_json::Value = serde_json::from_slice(pos)
            .map_err(|e| bad(ctx, format!("restored position is not JSON: {e}")))?;
        let Some(r) = v.pointer("/datagen/ranges").and_then(|r| r.as_array()) else {
            return Err(bad(
                ctx,
                format!(
                    "restored position {v} has no datagen ranges (was the job bounded before?)"
                ),
            ));
        };
        for x in r {
            match (
                x.get(0).and_then(|a| a.as_u64()),
                x.get(1).and_then(|b| b.as_u64()),
            ) {
                (Some(a), Some(b)) if a <= b => all.push((a, b)),
                _ => return Err(bad(ctx, format!("bad range {x} in restored position"))),
            }
        }
    }
    all.sort_unstable();
    Ok(all)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl DatagenReader {
    /// Column `i` for rows `first..first + n`.
    fn column(&mut self, i: usize, first: u64, n: usize, ty: &DataType) -> ArrayRef {
        let rng = &mut self.rng;
        match &mut self.gens[i] {
            Gen::Sequence { start } => {
                let from = *start + first as i64;
                let v: Vec<i64> = (from..from + n as i64).collect();
                int_array(ty, v)
            }
            Gen::RandomInt { min, max } => {
                let (lo, hi) = (*min, *max);
                match ty {
                    DataType::Int32 => Arc::new(Int32Array::from_iter_values(
                        (0..n).map(|_| rng.range(lo, hi) as i32),
                    )),
                    _ => int_array(ty, (0..n).map(|_| rng.range(lo, hi)).collect()),
                }
            }
            Gen::RandomFloat { min, max } => {
                let (lo, hi) = (*min, *max);
                let v = (0..n)
                    .map(|_| lo + (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo));
                match ty {
                    DataType::Float32 => {
                        Arc::new(Float32Array::from_iter_values(v.map(|x| x as f32)))
                    }
                    _ => Arc::new(Float64Array::from_iter_values(v)),
                }
            }
            Gen::RandomStr { length } => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                let len = *length;
                Arc::new(StringArray::from_iter_values((0..n).map(|_| {
                    (0..len)
                        .map(|_| HEX[(rng.next() & 15) as usize] as char)
                        .collect::<String>()
                })))
            }
            Gen::RandomBool => Arc::new(BooleanArray::from_iter(
                (0..n).map(|_| Some(rng.next() & 1 == 1)),
            )),
            Gen::RandomTs { max_past_ms } => {
                let now = now_ms();
                let mp = *max_past_ms;
                let a = TimestampMillisecondArray::from_iter_values((0..n).map(|_| {
                    if mp > 0 {
                        now - rng.range(0, mp - 1)
                    } else {
                        now
                    }
                }));
                match ty {
                    DataType::Timestamp(_, tz) => Arc::new(a.with_timezone_opt(tz.clone())),
                    _ => Arc::new(a),
                }
            }
        }
    }
}

fn int_array(ty: &DataType, v: Vec<i64>) -> ArrayRef {
    match ty {
        DataType::Int8 => Arc::new(Int8Array::from_iter_values(v.into_iter().map(|x| x as i8))),
        DataType::Int16 => Arc::new(Int16Array::from_iter_values(
            v.into_iter().map(|x| x as i16),
        )),
        DataType::Int32 => Arc::new(Int32Array::from_iter_values(
            v.into_iter().map(|x| x as i32),
        )),
        _ => Arc::new(Int64Array::from(v)),
    }
}

impl SourceReader for DatagenReader {
    fn splits(&self) -> usize {
        1
    }

    fn poll(&mut self, out: &mut SourceOutput) -> Result<PollStatus> {
        if self.ranges.as_ref().is_some_and(|r| r.is_empty()) {
            return Ok(PollStatus::Finished);
        }
        // Throttle to rows-per-second: wait until the next batch is due.
        let due = Duration::from_secs_f64(self.emitted as f64 / self.rows_per_second as f64);
        let elapsed = self.started.elapsed();
        if due > elapsed {
            std::thread::sleep((due - elapsed).min(Duration::from_millis(100)));
            if due > self.started.elapsed() {
                return Ok(PollStatus::Idle);
            }
        }
        let per_batch = (self.rows_per_second as usize / 10).clamp(1, BATCH);
        // A batch never spans two ranges: its sequence values are contiguous.
        let (first, n) = match self.ranges.as_ref().and_then(|r| r.front()) {
            Some(&(a, b)) => (a, ((b - a) as usize).min(per_batch)),
            None => (self.emitted, per_batch),
        };
        let schema = self.ctx.schema.clone();
        let cols: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| self.column(i, first, n, f.data_type()))
            .collect();
        let batch = RecordBatch::try_new(schema, cols)
            .map_err(|e| bad(&self.ctx, format!("building a batch: {e}")))?;
        out.batches.push((0, batch));
        self.emitted += n as u64;
        if let Some(r) = self.ranges.as_mut() {
            if let Some(front) = r.front_mut() {
                front.0 += n as u64;
                if front.0 >= front.1 {
                    r.pop_front();
                }
            }
            if r.is_empty() {
                return Ok(PollStatus::Finished);
            }
        }
        Ok(PollStatus::Active)
    }

    fn position(&self) -> Vec<u8> {
        let v = match &self.ranges {
            Some(r) => {
                serde_json::json!({"datagen": {"ranges": r.iter().map(|&(a, b)| [a, b]).collect::<Vec<_>>()}})
            }
            None => serde_json::json!({"datagen": {"emitted": self.emitted}}),
        };
        v.to_string().into_bytes()
    }
}

//! Evaluation of bound SQL expressions over a record batch, with Arrow kernels
//! where one exists and a tight loop over the values where not.

use std::sync::Arc;

use arrow_arith::boolean::{and_kleene, is_not_null, is_null, not, or_kleene};
use arrow_arith::numeric;
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Datum, DurationMillisecondArray, Float64Array, Int32Array,
    Int64Array, RecordBatch, Scalar, StringArray, TimestampMillisecondArray, new_null_array,
};
use arrow_cast::cast::{CastOptions, cast_with_options};
use arrow_ord::cmp;
use arrow_schema::{ArrowError, DataType};
use arrow_select::filter::prep_null_mask_filter;
use arrow_select::zip::zip;
use sluice_sql::{BinaryOp, Expr, Func, Literal};

use crate::error::{Context, Result};

/// What an expression may read besides the row: the operator's watermark and the wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct EvalContext {
    /// `None` before the first watermark.
    pub watermark: Option<i64>,
    pub now_ms: i64,
}

/// A column or a constant; constants stay one value long so kernels can use their scalar paths.
#[derive(Debug, Clone)]
pub enum Value {
    Array(ArrayRef),
    Scalar(ArrayRef),
}

impl Value {
    pub fn into_array(self, len: usize) -> Result<ArrayRef> {
        match self {
            Value::Array(a) => Ok(a),
            Value::Scalar(s) => {
                if len == 1 {
                    return Ok(s);
                }
                let idx = arrow_array::UInt32Array::from(vec![0u32; len]);
                arrow_select::take::take(s.as_ref(), &idx, None)
                    .ctx(|| "expanding a constant".into())
            }
        }
    }

    fn datum(&self) -> Box<dyn Datum + '_> {
        match self {
            Value::Array(a) => Box::new(a.as_ref() as &dyn Array),
            Value::Scalar(s) => Box::new(Scalar::new(s.clone())),
        }
    }
}

// `&dyn Array` is a Datum through arrow's blanket impl for `T: Array`, boxed above for uniformity.
fn literal_array(l: &Literal) -> ArrayRef {
    match l {
        Literal::Null => new_null_array(&DataType::Null, 1),
        Literal::Bool(b) => Arc::new(BooleanArray::from(vec![*b])),
        Literal::Int32(v) => Arc::new(Int32Array::from(vec![*v])),
        Literal::Int64(v) => Arc::new(Int64Array::from(vec![*v])),
        Literal::Float64(v) => Arc::new(Float64Array::from(vec![*v])),
        Literal::Utf8(s) => Arc::new(StringArray::from(vec![s.as_str()])),
        Literal::Timestamp(v) => Arc::new(TimestampMillisecondArray::from(vec![*v])),
        Literal::Interval(v) => Arc::new(DurationMillisecondArray::from(vec![*v])),
    }
}

pub fn evaluate_to_array(e: &Expr, batch: &RecordBatch, ctx: &EvalContext) -> Result<ArrayRef> {
    evaluate(e, batch, ctx)?.into_array(batch.num_rows())
}

fn bool_array(v: Value, len: usize) -> Result<BooleanArray> {
    let a = v.into_array(len)?;
    a.as_boolean_opt().cloned().ok_or_else(|| {
        crate::error::RuntimeError::Plan(format!("expected a BOOLEAN, got {}", a.data_type()))
    })
}

pub fn evaluate(e: &Expr, batch: &RecordBatch, ctx: &EvalContext) -> Result<Value> {
    let n = batch.num_rows();
    Ok(match e {
        Expr::Column { index, .. } => Value::Array(batch.column(*index).clone()),
        Expr::Literal(l) => Value::Scalar(literal_array(l)),
        Expr::Binary {
            op, left, right, ..
        } => {
            let l = evaluate(left, batch, ctx)?;
            let r = evaluate(right, batch, ctx)?;
            binary(*op, l, r, n).ctx(|| format!("evaluating {e}"))?
        }
        Expr::Not(x) => {
            let b = bool_array(evaluate(x, batch, ctx)?, n)?;
            Value::Array(Arc::new(not(&b).ctx(|| format!("evaluating {e}"))?))
        }
        Expr::Negate(x) => {
            let v = evaluate(x, batch, ctx)?.into_array(n)?;
            Value::Array(numeric::neg(v.as_ref()).ctx(|| format!("evaluating {e}"))?)
        }
        Expr::IsNull { expr, negated } => {
            let v = evaluate(expr, batch, ctx)?.into_array(n)?;
            let r = if *negated {
                is_not_null(v.as_ref())
            } else {
                is_null(v.as_ref())
            };
            Value::Array(Arc::new(r.ctx(|| format!("evaluating {e}"))?))
        }
        Expr::Like {
            expr,
            pattern,
            negated,
        } => {
            let v = evaluate(expr, batch, ctx)?;
            let p = Scalar::new(StringArray::from(vec![pattern.as_str()]));
            let d = v.datum();
            let r = if *negated {
                arrow_string::like::nlike(d.as_ref(), &p)
            } else {
                arrow_string::like::like(d.as_ref(), &p)
            };
            Value::Array(Arc::new(r.ctx(|| format!("evaluating {e}"))?))
        }
        Expr::InList {
            expr,
            list,
            negated,
        } => {
            let v = evaluate(expr, batch, ctx)?;
            let mut acc: Option<BooleanArray> = None;
            for item in list {
                let iv = evaluate(item, batch, ctx)?;
                let eq = cmp::eq(v.datum().as_ref(), iv.datum().as_ref())
                    .ctx(|| format!("evaluating {e}"))?;
                let eq = if eq.len() == n {
                    eq
                } else {
                    bool_array(Value::Scalar(Arc::new(eq)), n)?
                };
                acc = Some(match acc {
                    None => eq,
                    Some(a) => or_kleene(&a, &eq).ctx(|| format!("evaluating {e}"))?,
                });
            }
            let r = acc.unwrap_or_else(|| BooleanArray::from(vec![false; n]));
            let r = if *negated {
                not(&r).ctx(|| format!("evaluating {e}"))?
            } else {
                r
            };
            Value::Array(Arc::new(r))
        }
        Expr::Case {
            branches,
            otherwise,
            ty,
        } => {
            let mut result = match otherwise {
                Some(o) => evaluate(o, batch, ctx)?.into_array(n)?,
                None => new_null_array(ty, n),
            };
            for (cond, then) in branches.iter().rev() {
                let c = bool_array(evaluate(cond, batch, ctx)?, n)?;
                let c = if c.null_count() > 0 {
                    prep_null_mask_filter(&c)
                } else {
                    c
                };
                let t = evaluate(then, batch, ctx)?;
                let td = t.datum();
                result =
                    zip(&c, td.as_ref(), &result.as_ref()).ctx(|| format!("evaluating {e}"))?;
            }
            Value::Array(result)
        }
        Expr::Cast { expr, ty, safe } => {
            let v = evaluate(expr, batch, ctx)?;
            let opts = CastOptions {
                safe: *safe,
                ..Default::default()
            };
            match v {
                Value::Scalar(s) => Value::Scalar(
                    cast_with_options(s.as_ref(), ty, &opts).ctx(|| format!("evaluating {e}"))?,
                ),
                Value::Array(a) => Value::Array(
                    cast_with_options(a.as_ref(), ty, &opts).ctx(|| format!("evaluating {e}"))?,
                ),
            }
        }
        Expr::Call { func, args, ty } => {
            call(*func, args, ty, batch, ctx).ctx(|| format!("evaluating {e}"))?
        }
    })
}

fn binary(op: BinaryOp, l: Value, r: Value, n: usize) -> Result<Value, ArrowError> {
    let both_scalar = matches!((&l, &r), (Value::Scalar(_), Value::Scalar(_)));
    let wrap = |a: ArrayRef| {
        if both_scalar {
            Value::Scalar(a)
        } else {
            Value::Array(a)
        }
    };
    let (ld, rd) = (l.datum(), r.datum());
    let (ld, rd) = (ld.as_ref(), rd.as_ref());
    Ok(match op {
        BinaryOp::Plus => wrap(numeric::add(ld, rd)?),
        BinaryOp::Minus => wrap(numeric::sub(ld, rd)?),
        BinaryOp::Multiply => wrap(numeric::mul(ld, rd)?),
        BinaryOp::Divide => wrap(numeric::div(ld, rd)?),
        BinaryOp::Modulo => wrap(numeric::rem(ld, rd)?),
        BinaryOp::Eq => wrap(Arc::new(cmp::eq(ld, rd)?)),
        BinaryOp::NotEq => wrap(Arc::new(cmp::neq(ld, rd)?)),
        BinaryOp::Lt => wrap(Arc::new(cmp::lt(ld, rd)?)),
        BinaryOp::LtEq => wrap(Arc::new(cmp::lt_eq(ld, rd)?)),
        BinaryOp::Gt => wrap(Arc::new(cmp::gt(ld, rd)?)),
        BinaryOp::GtEq => wrap(Arc::new(cmp::gt_eq(ld, rd)?)),
        BinaryOp::And | BinaryOp::Or => {
            let len = if both_scalar { 1 } else { n };
            let la = bool_of(l.clone(), len)?;
            let ra = bool_of(r.clone(), len)?;
            let out = if op == BinaryOp::And {
                and_kleene(&la, &ra)?
            } else {
                or_kleene(&la, &ra)?
            };
            wrap(Arc::new(out))
        }
    })
}

fn bool_of(v: Value, len: usize) -> Result<BooleanArray, ArrowError> {
    let a = v
        .into_array(len)
        .map_err(|e| ArrowError::ComputeError(e.to_string()))?;
    a.as_boolean_opt()
        .cloned()
        .ok_or_else(|| ArrowError::ComputeError(format!("expected BOOLEAN, got {}", a.data_type())))
}

fn strings(v: &ArrayRef) -> Result<&StringArray, ArrowError> {
    v.as_string_opt::<i32>()
        .ok_or_else(|| ArrowError::ComputeError(format!("expected STRING, got {}", v.data_type())))
}

fn map_strings(
    a: &ArrayRef,
    mut f: impl FnMut(&str) -> Option<String>,
) -> Result<ArrayRef, ArrowError> {
    let s = strings(a)?;
    Ok(Arc::new(
        s.iter()
            .map(|o| o.and_then(&mut f))
            .collect::<StringArray>(),
    ))
}

fn call(
    func: Func,
    args: &[Expr],
    ty: &DataType,
    batch: &RecordBatch,
    ctx: &EvalContext,
) -> Result<Value, ArrowError> {
    let n = batch.num_rows();
    let eval = |i: usize| -> Result<ArrayRef, ArrowError> {
        evaluate(&args[i], batch, ctx)
            .and_then(|v| v.into_array(n))
            .map_err(|e| ArrowError::ComputeError(e.to_string()))
    };
    let lit_str = |i: usize| -> Option<String> {
        match &args[i] {
            Expr::Literal(Literal::Utf8(s)) => Some(s.clone()),
            _ => None,
        }
    };
    Ok(Value::Array(match func {
        Func::Upper => map_strings(&eval(0)?, |s| Some(s.to_uppercase()))?,
        Func::Lower => map_strings(&eval(0)?, |s| Some(s.to_lowercase()))?,
        Func::Trim => map_strings(&eval(0)?, |s| Some(s.trim_matches(' ').to_string()))?,
        Func::CharLength => {
            let a = eval(0)?;
            let s = strings(&a)?;
            Arc::new(
                s.iter()
                    .map(|o| o.map(|x| x.chars().count() as i32))
                    .collect::<Int32Array>(),
            )
        }
        Func::Concat => {
            let mut acc = eval(0)?;
            for i in 1..args.len() {
                let next = eval(i)?;
                acc = Arc::new(arrow_string::concat_elements::concat_elements_utf8(
                    strings(&acc)?,
                    strings(&next)?,
                )?);
            }
            acc
        }
        Func::Substring => {
            let s = eval(0)?;
            let start = eval(1)?;
            let start = start.as_primitive::<Int64Type>();
            let len = if args.len() > 2 { Some(eval(2)?) } else { None };
            let len = len.as_ref().map(|l| l.as_primitive::<Int64Type>().clone());
            let s = strings(&s)?;
            let out: StringArray = (0..n)
                .map(|i| {
                    if s.is_null(i)
                        || start.is_null(i)
                        || len.as_ref().map(|l| l.is_null(i)).unwrap_or(false)
                    {
                        return None;
                    }
                    Some(substring(
                        s.value(i),
                        start.value(i),
                        len.as_ref().map(|l| l.value(i)),
                    ))
                })
                .collect();
            Arc::new(out)
        }
        Func::RegexpExtract => {
            let pattern = lit_str(1).ok_or_else(|| {
                ArrowError::ComputeError("REGEXP_EXTRACT needs a literal pattern".into())
            })?;
            let re = regex::Regex::new(&pattern).map_err(|e| {
                ArrowError::ComputeError(format!("bad regular expression '{pattern}': {e}"))
            })?;
            let group = if args.len() > 2 { Some(eval(2)?) } else { None };
            let group = group
                .as_ref()
                .map(|g| g.as_primitive::<Int64Type>().clone());
            let s = eval(0)?;
            let s = strings(&s)?;
            let out: StringArray = (0..n)
                .map(|i| {
                    if s.is_null(i) {
                        return None;
                    }
                    let g = group.as_ref().map(|g| g.value(i)).unwrap_or(0);
                    let caps = re.captures(s.value(i))?;
                    usize::try_from(g)
                        .ok()
                        .and_then(|g| caps.get(g))
                        .map(|m| m.as_str().to_string())
                })
                .collect();
            Arc::new(out)
        }
        Func::Coalesce => {
            let mut result = eval(args.len() - 1)?;
            for i in (0..args.len() - 1).rev() {
                let a = eval(i)?;
                let mask = is_not_null(a.as_ref())?;
                result = zip(&mask, &a.as_ref(), &result.as_ref())?;
            }
            result
        }
        Func::ToTimestampLtz => {
            let v = eval(0)?;
            let v = v.as_primitive::<Int64Type>();
            let seconds = matches!(args.get(1), Some(Expr::Literal(Literal::Int32(0))));
            let ms: TimestampMillisecondArray = if seconds {
                v.unary(|x| x.saturating_mul(1000))
            } else {
                v.reinterpret_cast::<TimestampMillisecondType>()
            };
            Arc::new(ms.with_timezone_opt(timezone(ty)))
        }
        Func::DateFormat => {
            let fmt = lit_str(1).ok_or_else(|| {
                ArrowError::ComputeError("DATE_FORMAT needs a literal format".into())
            })?;
            let t = eval(0)?;
            let t = t.as_primitive::<TimestampMillisecondType>();
            Arc::new(
                t.iter()
                    .map(|o| o.map(|ms| format_timestamp(ms, &fmt)))
                    .collect::<StringArray>(),
            )
        }
        Func::CurrentWatermark => {
            let a: TimestampMillisecondArray = vec![ctx.watermark; 1].into_iter().collect();
            return Ok(Value::Scalar(Arc::new(a.with_timezone_opt(timezone(ty)))));
        }
        Func::Proctime => {
            let a = TimestampMillisecondArray::from(vec![ctx.now_ms]);
            return Ok(Value::Scalar(Arc::new(a.with_timezone_opt(timezone(ty)))));
        }
        Func::JsonValue => json_value(args, ty, &eval)?,
        Func::Abs => {
            let a = eval(0)?;
            let zero = cast_with_options(
                &Int32Array::from(vec![0]),
                a.data_type(),
                &CastOptions::default(),
            )?;
            let negative = cmp::lt(&a.as_ref(), &Scalar::new(zero))?;
            let neg = numeric::neg_wrapping(a.as_ref())?;
            zip(&negative, &neg.as_ref(), &a.as_ref())?
        }
    }))
}

fn timezone(ty: &DataType) -> Option<Arc<str>> {
    match ty {
        DataType::Timestamp(_, tz) => tz.clone(),
        _ => None,
    }
}

/// Flink's SUBSTRING: 1-based `start` counted in characters; a start of 0 acts as 1.
fn substring(s: &str, start: i64, len: Option<i64>) -> String {
    let chars = s.chars().count() as i64;
    let from = if start > 0 {
        start - 1
    } else if start < 0 {
        (chars + start).max(0)
    } else {
        0
    };
    let take = len.unwrap_or(i64::MAX).max(0);
    s.chars()
        .skip(usize::try_from(from).unwrap_or(0))
        .take(usize::try_from(take).unwrap_or(usize::MAX))
        .collect()
}

/// (year, month, day) of days since 1970-01-01 (H. Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Formats epoch milliseconds (UTC) with a Java `SimpleDateFormat`-style
/// pattern: `yyyy MM dd HH mm ss SSS`, quoted literals and other characters as is.
pub fn format_timestamp(ms: i64, pattern: &str) -> String {
    let days = ms.div_euclid(86_400_000);
    let rem = ms.rem_euclid(86_400_000);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    let mut out = String::with_capacity(pattern.len() + 4);
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let mut run = 1;
        while i + run < chars.len() && chars[i + run] == c {
            run += 1;
        }
        match c {
            'y' if run == 2 => out.push_str(&format!("{:02}", y.rem_euclid(100))),
            'y' => out.push_str(&format!("{y:04}")),
            'M' => out.push_str(&format!("{mo:0run$}")),
            'd' => out.push_str(&format!("{d:0run$}")),
            'H' => out.push_str(&format!("{h:0run$}")),
            'm' => out.push_str(&format!("{mi:0run$}")),
            's' => out.push_str(&format!("{s:0run$}")),
            'S' => out.push_str(&format!("{milli:03}")),
            '\'' => {
                let end = chars[i + 1..]
                    .iter()
                    .position(|&x| x == '\'')
                    .map(|p| i + 1 + p)
                    .unwrap_or(chars.len());
                out.extend(&chars[i + 1..end]);
                i = end + 1;
                continue;
            }
            _ => {
                for _ in 0..run {
                    out.push(c);
                }
            }
        }
        i += run;
    }
    out
}

/// Epoch milliseconds of a timestamp column, whatever its declared time zone.
pub fn timestamps_ms(a: &ArrayRef) -> Result<Int64Array> {
    match a.data_type() {
        DataType::Timestamp(arrow_schema::TimeUnit::Millisecond, _) => Ok(a
            .as_primitive::<TimestampMillisecondType>()
            .reinterpret_cast::<Int64Type>()),
        DataType::Int64 => Ok(a.as_primitive::<Int64Type>().clone()),
        other => Err(crate::error::RuntimeError::Plan(format!(
            "expected a millisecond timestamp column, got {other}"
        ))),
    }
}

/// A scalar found by `JSON_VALUE`, converted to the function's result type.
enum JsonScalar {
    Str(String),
    Bool(bool),
    Int(i64),
    Float(f64),
}

/// Converts a JSON scalar to `ty` (Flink's `RETURNING` type); `Err` is an
/// `ON ERROR` case.
fn json_scalar(v: &serde_json::Value, ty: &DataType) -> std::result::Result<JsonScalar, String> {
    use serde_json::Value as J;
    let bad = || format!("cannot convert {v} to {ty}");
    Ok(match ty {
        DataType::Utf8 => JsonScalar::Str(match v {
            J::String(s) => s.clone(),
            other => other.to_string(),
        }),
        DataType::Boolean => JsonScalar::Bool(match v {
            J::Bool(b) => *b,
            J::String(s) if s.eq_ignore_ascii_case("true") => true,
            J::String(s) if s.eq_ignore_ascii_case("false") => false,
            _ => return Err(bad()),
        }),
        DataType::Int32 | DataType::Int64 => {
            let i = match v {
                J::Number(n) => n.as_i64().or_else(|| {
                    n.as_f64()
                        .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                        .map(|f| f as i64)
                }),
                J::String(s) => s.trim().parse::<i64>().ok(),
                _ => None,
            }
            .ok_or_else(bad)?;
            if *ty == DataType::Int32 && i32::try_from(i).is_err() {
                return Err(bad());
            }
            JsonScalar::Int(i)
        }
        DataType::Float32 | DataType::Float64 => JsonScalar::Float(
            match v {
                J::Number(n) => n.as_f64(),
                J::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            }
            .ok_or_else(bad)?,
        ),
        _ => return Err(format!("JSON_VALUE cannot return {ty}")),
    })
}

type ParsedColumn = std::rc::Rc<Vec<std::result::Result<serde_json::Value, String>>>;

thread_local! {
    /// The last column `JSON_VALUE` parsed, kept (with the array, so its
    /// buffers cannot be reused meanwhile) so that several `JSON_VALUE` calls
    /// over the same column of a batch parse each row once.
    static LAST_PARSED: std::cell::RefCell<Option<(ArrayRef, ParsedColumn)>> =
        const { std::cell::RefCell::new(None) };
}

/// Every row of `column` parsed as JSON (`Err` for malformed text; NULL rows parse as JSON null).
fn parsed_json(column: &ArrayRef, input: &StringArray) -> ParsedColumn {
    if let Some(hit) = LAST_PARSED.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(a, _)| Arc::ptr_eq(a, column))
            .map(|(_, p)| p.clone())
    }) {
        return hit;
    }
    let parsed: ParsedColumn = std::rc::Rc::new(
        input
            .iter()
            .map(|s| match s {
                Some(s) => serde_json::from_str(s).map_err(|e| e.to_string()),
                None => Ok(serde_json::Value::Null),
            })
            .collect(),
    );
    LAST_PARSED.with(|c| *c.borrow_mut() = Some((column.clone(), parsed.clone())));
    parsed
}

/// `JSON_VALUE` over a STRING column, in lax mode as Flink: every row is
/// parsed once; a missing member, a JSON null, an object or an array is
/// "empty", malformed JSON or a value that does not convert to the result type
/// is an "error", each handled as its `ON EMPTY` / `ON ERROR` clause says
/// (`NULL` by default, `DEFAULT x`, or `ERROR`: the job fails).
fn json_value(
    args: &[Expr],
    ty: &DataType,
    eval: &dyn Fn(usize) -> Result<ArrayRef, ArrowError>,
) -> Result<ArrayRef, ArrowError> {
    use sluice_sql::json_path::{PathStep, parse_json_path};
    let mode = |i: usize| match args.get(i) {
        Some(Expr::Literal(Literal::Utf8(m))) => Ok(m.as_str()),
        _ => Err(ArrowError::ComputeError(
            "JSON_VALUE: malformed call (planner bug)".into(),
        )),
    };
    let path = mode(1)?;
    let (on_empty, on_error) = (mode(2)?, mode(4)?);
    let steps = parse_json_path(path)
        .map_err(|e| ArrowError::ComputeError(format!("JSON path '{path}': {e}")))?;
    let column = eval(0)?;
    let input = strings(&column)?;
    let n = input.len();
    let docs = parsed_json(&column, input);
    let mut values: Vec<Option<JsonScalar>> = Vec::with_capacity(n);
    let mut empty_default = vec![false; n];
    let mut error_default = vec![false; n];
    for (r, s) in input.iter().enumerate() {
        let Some(s) = s else {
            values.push(None);
            continue;
        };
        let found = match &docs[r] {
            Err(e) => Err(format!("malformed JSON ({e})")),
            Ok(doc) => {
                let mut cur = Some(doc);
                for step in &steps {
                    cur = match (cur, step) {
                        (Some(serde_json::Value::Object(o)), PathStep::Member(m)) => o.get(m),
                        (Some(serde_json::Value::Array(a)), PathStep::Index(i)) => a.get(*i),
                        _ => None,
                    };
                }
                match cur {
                    None
                    | Some(serde_json::Value::Null)
                    | Some(serde_json::Value::Object(_))
                    | Some(serde_json::Value::Array(_)) => Ok(None),
                    Some(v) => json_scalar(v, ty).map(Some),
                }
            }
        };
        match found {
            Ok(Some(v)) => values.push(Some(v)),
            Ok(None) => {
                if on_empty == "ERROR" {
                    return Err(ArrowError::ComputeError(format!(
                        "JSON_VALUE: no scalar value at '{path}' in {s} (ERROR ON EMPTY)"
                    )));
                }
                empty_default[r] = on_empty == "DEFAULT";
                values.push(None);
            }
            Err(why) => {
                if on_error == "ERROR" {
                    return Err(ArrowError::ComputeError(format!(
                        "JSON_VALUE at '{path}': {why} (ERROR ON ERROR)"
                    )));
                }
                error_default[r] = on_error == "DEFAULT";
                values.push(None);
            }
        }
    }
    let mut result: ArrayRef = match ty {
        DataType::Utf8 => Arc::new(
            values
                .into_iter()
                .map(|v| match v {
                    Some(JsonScalar::Str(s)) => Some(s),
                    _ => None,
                })
                .collect::<StringArray>(),
        ),
        DataType::Boolean => Arc::new(
            values
                .into_iter()
                .map(|v| match v {
                    Some(JsonScalar::Bool(b)) => Some(b),
                    _ => None,
                })
                .collect::<BooleanArray>(),
        ),
        DataType::Int32 => Arc::new(
            values
                .into_iter()
                .map(|v| match v {
                    Some(JsonScalar::Int(i)) => i32::try_from(i).ok(),
                    _ => None,
                })
                .collect::<Int32Array>(),
        ),
        DataType::Int64 => Arc::new(
            values
                .into_iter()
                .map(|v| match v {
                    Some(JsonScalar::Int(i)) => Some(i),
                    _ => None,
                })
                .collect::<Int64Array>(),
        ),
        DataType::Float32 => Arc::new(
            values
                .into_iter()
                .map(|v| match v {
                    Some(JsonScalar::Float(f)) => Some(f as f32),
                    _ => None,
                })
                .collect::<arrow_array::Float32Array>(),
        ),
        DataType::Float64 => Arc::new(
            values
                .into_iter()
                .map(|v| match v {
                    Some(JsonScalar::Float(f)) => Some(f),
                    _ => None,
                })
                .collect::<Float64Array>(),
        ),
        other => {
            return Err(ArrowError::ComputeError(format!(
                "JSON_VALUE cannot return {other}"
            )));
        }
    };
    for (mask, arg) in [(empty_default, 3), (error_default, 5)] {
        if mask.iter().any(|m| *m) {
            let default = eval(arg)?;
            result = zip(
                &BooleanArray::from(mask),
                &default.as_ref(),
                &result.as_ref(),
            )?;
        }
    }
    Ok(result)
}

#[cfg(test)]
mod json_value_tests {
    use super::*;

    #[test]
    fn calls_over_the_same_column_share_one_parse() {
        let col: ArrayRef = Arc::new(StringArray::from(vec![Some(r#"{"a":1}"#), None, Some("x")]));
        let input = strings(&col).unwrap_or_else(|e| panic!("{e}"));
        let first = parsed_json(&col, input);
        let again = parsed_json(&col, input);
        assert!(std::rc::Rc::ptr_eq(&first, &again));
        assert!(first[0].is_ok() && first[1].is_ok() && first[2].is_err());
        // Equal contents in another array are parsed anew (no stale hit).
        let other: ArrayRef = Arc::new(StringArray::from(vec![Some("[]")]));
        let o = parsed_json(&other, strings(&other).unwrap_or_else(|e| panic!("{e}")));
        assert!(!std::rc::Rc::ptr_eq(&first, &o));
        assert_eq!(o.len(), 1);
    }
}

//! Binding of scalar function calls, and timestamp literal parsing.

use arrow_schema::DataType;
use sqlparser::ast::{self as ast, Expr as AstExpr};

use crate::bind::{
    bind, bind_int_arg, bind_string_arg, cast_type, err, function_args, function_name,
    is_aggregate_name,
};
use crate::error::{ErrorCode, SqlResult};
use crate::expr::{Expr, Func, Literal, Scope};
use crate::json_path::parse_json_path;
use crate::parse::JSON_CLAUSE_PREFIX;
use crate::types::{self, common_type, is_numeric, is_timestamp, sql_name};

pub(crate) fn bind_function(e: &AstExpr, f: &ast::Function, scope: &Scope) -> SqlResult<Expr> {
    let name = function_name(f);
    if f.over.is_some() || is_aggregate_name(&name) || name == "ROW_NUMBER" {
        return Err(err(
            e,
            ErrorCode::Unsupported,
            format!(
                "aggregate {name} is not allowed here (only in a SELECT list with GROUP BY, a window aggregation or an OVER clause)"
            ),
        ));
    }
    let args = function_args(e, f)?;
    let arity = |lo: usize, hi: usize| -> SqlResult<()> {
        if args.len() < lo || args.len() > hi {
            Err(err(
                e,
                ErrorCode::SyntaxError,
                format!("{name} takes {lo}..{hi} arguments, got {}", args.len()),
            ))
        } else {
            Ok(())
        }
    };
    let strings = |args: &[AstExpr]| {
        args.iter()
            .map(|a| bind_string_arg(a, scope))
            .collect::<SqlResult<Vec<_>>>()
    };
    match name.as_str() {
        "UPPER" | "LOWER" | "CHAR_LENGTH" | "CHARACTER_LENGTH" => {
            arity(1, 1)?;
            let (func, ty) = match name.as_str() {
                "UPPER" => (Func::Upper, DataType::Utf8),
                "LOWER" => (Func::Lower, DataType::Utf8),
                _ => (Func::CharLength, DataType::Int32),
            };
            Ok(Expr::Call {
                func,
                args: strings(&args)?,
                ty,
            })
        }
        "CONCAT" => {
            arity(1, usize::MAX)?;
            Ok(Expr::Call {
                func: Func::Concat,
                args: strings(&args)?,
                ty: DataType::Utf8,
            })
        }
        "SUBSTRING" | "SUBSTR" => {
            arity(2, 3)?;
            let mut a = vec![bind_string_arg(&args[0], scope)?];
            for x in &args[1..] {
                a.push(bind_int_arg(x, scope)?);
            }
            Ok(Expr::Call {
                func: Func::Substring,
                args: a,
                ty: DataType::Utf8,
            })
        }
        "TRIM" => {
            arity(1, 1)?;
            Ok(Expr::Call {
                func: Func::Trim,
                args: strings(&args)?,
                ty: DataType::Utf8,
            })
        }
        "REGEXP_EXTRACT" => {
            arity(2, 3)?;
            let s = bind_string_arg(&args[0], scope)?;
            let p = bind(&args[1], scope)?;
            if !matches!(p, Expr::Literal(Literal::Utf8(_))) {
                return Err(err(
                    &args[1],
                    ErrorCode::Unsupported,
                    "REGEXP_EXTRACT needs a literal pattern",
                ));
            }
            let mut a = vec![s, p];
            if let Some(g) = args.get(2) {
                let gi = bind_int_arg(g, scope)?;
                a.push(gi);
            }
            Ok(Expr::Call {
                func: Func::RegexpExtract,
                args: a,
                ty: DataType::Utf8,
            })
        }
        "COALESCE" => {
            arity(1, usize::MAX)?;
            let bound = args
                .iter()
                .map(|a| bind(a, scope))
                .collect::<SqlResult<Vec<_>>>()?;
            let mut ty = DataType::Null;
            for (a, b) in args.iter().zip(&bound) {
                ty = common_type(&ty, &b.data_type()).ok_or_else(|| {
                    err(
                        a,
                        ErrorCode::TypeMismatch,
                        format!(
                            "COALESCE arguments have incompatible types {} and {}",
                            sql_name(&ty),
                            sql_name(&b.data_type())
                        ),
                    )
                })?;
            }
            Ok(Expr::Call {
                func: Func::Coalesce,
                args: bound.into_iter().map(|b| b.cast_to(&ty)).collect(),
                ty,
            })
        }
        "TO_TIMESTAMP_LTZ" => {
            arity(1, 2)?;
            let v = bind_int_arg(&args[0], scope)?;
            let precision = match args.get(1).map(|p| bind(p, scope)).transpose()? {
                None => 3,
                Some(Expr::Literal(Literal::Int32(p))) if p == 0 || p == 3 => p,
                Some(_) => {
                    return Err(err(
                        e,
                        ErrorCode::Unsupported,
                        "TO_TIMESTAMP_LTZ precision must be the literal 0 (seconds) or 3 (milliseconds)",
                    ));
                }
            };
            Ok(Expr::Call {
                func: Func::ToTimestampLtz,
                args: vec![v, Expr::Literal(Literal::Int32(precision))],
                ty: types::timestamp_ltz(),
            })
        }
        "DATE_FORMAT" => {
            arity(2, 2)?;
            let t = bind(&args[0], scope)?;
            if !is_timestamp(&t.data_type()) {
                return Err(err(
                    &args[0],
                    ErrorCode::TypeMismatch,
                    format!(
                        "DATE_FORMAT needs a TIMESTAMP, found {}",
                        sql_name(&t.data_type())
                    ),
                ));
            }
            let fmt = bind(&args[1], scope)?;
            if !matches!(fmt, Expr::Literal(Literal::Utf8(_))) {
                return Err(err(
                    &args[1],
                    ErrorCode::Unsupported,
                    "DATE_FORMAT needs a literal format",
                ));
            }
            Ok(Expr::Call {
                func: Func::DateFormat,
                args: vec![t, fmt],
                ty: DataType::Utf8,
            })
        }
        "CURRENT_WATERMARK" => {
            arity(1, 1)?;
            let t = bind(&args[0], scope)?;
            let ty = t.data_type();
            if !is_timestamp(&ty) {
                return Err(err(
                    &args[0],
                    ErrorCode::TypeMismatch,
                    "CURRENT_WATERMARK needs the rowtime attribute",
                ));
            }
            Ok(Expr::Call {
                func: Func::CurrentWatermark,
                args: vec![t],
                ty,
            })
        }
        "PROCTIME" => {
            arity(0, 0)?;
            Ok(Expr::Call {
                func: Func::Proctime,
                args: vec![],
                ty: types::timestamp_ltz(),
            })
        }
        "JSON_VALUE" => bind_json_value(e, f, &args, scope),
        "ABS" => {
            arity(1, 1)?;
            let x = bind(&args[0], scope)?;
            if !is_numeric(&x.data_type()) {
                return Err(err(&args[0], ErrorCode::TypeMismatch, "ABS needs a number"));
            }
            let ty = x.data_type();
            Ok(Expr::Call {
                func: Func::Abs,
                args: vec![x],
                ty,
            })
        }
        _ => Err(err(
            e,
            ErrorCode::Unsupported,
            format!("unsupported function {name}"),
        )),
    }
}

/// What `JSON_VALUE` does when the path finds nothing (`ON EMPTY`) or the
/// input or value is bad (`ON ERROR`); carried in the call's arguments as the
/// literal `'NULL' | 'ERROR' | 'DEFAULT'` followed by the default expression.
fn json_clause(
    args: &[AstExpr],
    target: &str,
    ty: &DataType,
    scope: &Scope,
) -> SqlResult<(Expr, Expr)> {
    let mut found: Option<(Expr, Expr)> = None;
    for a in args {
        let AstExpr::Function(f) = a else { continue };
        let name = f.name.0.last().map(|p| p.to_string()).unwrap_or_default();
        let name = name.trim_matches('"');
        let Some(rest) = name.strip_prefix(&format!("{JSON_CLAUSE_PREFIX}{target}_")) else {
            continue;
        };
        if found.is_some() {
            return Err(err(
                a,
                ErrorCode::SyntaxError,
                format!("JSON_VALUE has two ON {target} clauses"),
            ));
        }
        let inner = function_args(a, f)?;
        let default = match (rest, inner.as_slice()) {
            ("DEFAULT", [d]) => {
                let b = bind(d, scope)?;
                if !types::assignable(&b.data_type(), ty) {
                    return Err(err(
                        d,
                        ErrorCode::TypeMismatch,
                        format!(
                            "JSON_VALUE's DEFAULT … ON {target} is {} but the function returns {}",
                            sql_name(&b.data_type()),
                            sql_name(ty)
                        ),
                    ));
                }
                b.cast_to(ty)
            }
            ("NULL" | "ERROR", []) => Expr::Literal(Literal::Null).cast_to(ty),
            _ => {
                return Err(err(
                    a,
                    ErrorCode::SyntaxError,
                    format!("expected NULL, ERROR or DEFAULT <value> before ON {target}"),
                ));
            }
        };
        found = Some((Expr::Literal(Literal::Utf8(rest.to_string())), default));
    }
    Ok(found.unwrap_or_else(|| {
        (
            Expr::Literal(Literal::Utf8("NULL".into())),
            Expr::Literal(Literal::Null).cast_to(ty),
        )
    }))
}

/// `JSON_VALUE(json, 'path' [RETURNING type] [{NULL|ERROR|DEFAULT x} ON EMPTY]
/// [{NULL|ERROR|DEFAULT x} ON ERROR])` → `Call(JsonValue, [json, path,
/// on_empty, empty_default, on_error, error_default])`.
fn bind_json_value(
    e: &AstExpr,
    f: &ast::Function,
    args: &[AstExpr],
    scope: &Scope,
) -> SqlResult<Expr> {
    let is_clause = |a: &AstExpr| matches!(a, AstExpr::Function(g) if g.name.0.last().map(|p| p.to_string().trim_matches('"').starts_with(JSON_CLAUSE_PREFIX)).unwrap_or(false));
    let plain: Vec<&AstExpr> = args.iter().filter(|a| !is_clause(a)).collect();
    if plain.len() != 2 {
        return Err(err(
            e,
            ErrorCode::SyntaxError,
            format!(
                "JSON_VALUE takes (json, 'path' [RETURNING type] [… ON EMPTY] [… ON ERROR]), got {} arguments",
                plain.len()
            ),
        ));
    }
    let input = bind_string_arg(plain[0], scope)?;
    let path = match bind(plain[1], scope)? {
        Expr::Literal(Literal::Utf8(p)) => p,
        _ => {
            return Err(err(
                plain[1],
                ErrorCode::Unsupported,
                "unsupported construct: JSON_VALUE with a non-literal path",
            ));
        }
    };
    parse_json_path(&path).map_err(|why| {
        err(
            plain[1],
            ErrorCode::Unsupported,
            format!("unsupported construct: JSON path '{path}': {why}"),
        )
    })?;
    let mut ty = DataType::Utf8;
    if let ast::FunctionArguments::List(list) = &f.args {
        for c in &list.clauses {
            match c {
                ast::FunctionArgumentClause::JsonReturningClause(r) => {
                    let t = cast_type(e, &r.data_type)?;
                    if !matches!(
                        t,
                        DataType::Utf8
                            | DataType::Boolean
                            | DataType::Int32
                            | DataType::Int64
                            | DataType::Float32
                            | DataType::Float64
                    ) {
                        return Err(err(
                            e,
                            ErrorCode::Unsupported,
                            format!(
                                "unsupported construct: JSON_VALUE … RETURNING {}: supported are STRING, BOOLEAN, INT, BIGINT, FLOAT, DOUBLE",
                                r.data_type
                            ),
                        ));
                    }
                    ty = t;
                }
                other => {
                    return Err(err(
                        e,
                        ErrorCode::Unsupported,
                        format!("unsupported construct: {other} in JSON_VALUE"),
                    ));
                }
            }
        }
    }
    let (on_empty, empty_default) = json_clause(args, "EMPTY", &ty, scope)?;
    let (on_error, error_default) = json_clause(args, "ERROR", &ty, scope)?;
    Ok(Expr::Call {
        func: Func::JsonValue,
        args: vec![
            input,
            Expr::Literal(Literal::Utf8(path)),
            on_empty,
            empty_default,
            on_error,
            error_default,
        ],
        ty,
    })
}

/// Parses `yyyy-MM-dd HH:mm:ss[.SSS]` (or with `T`) into epoch milliseconds, UTC.
pub fn parse_timestamp_ms(s: &str) -> Option<i64> {
    let s = s.trim().trim_end_matches('Z');
    let (date, time) = s.split_once([' ', 'T']).unwrap_or((s, "00:00:00"));
    let mut d = date.split('-');
    let y: i64 = d.next()?.parse().ok()?;
    let m: u32 = d.next()?.parse().ok()?;
    let day: u32 = d.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':');
    let hh: i64 = t.next()?.parse().ok()?;
    let mm: i64 = t.next()?.parse().ok()?;
    let ss: i64 = t.next().unwrap_or("0").parse().ok()?;
    let frac3: String = frac.chars().chain("000".chars()).take(3).collect();
    let ms: i64 = frac3.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    let days = days_from_civil(y, m, day);
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

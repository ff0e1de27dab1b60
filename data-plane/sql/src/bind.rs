//! The binder: sqlparser's AST → typed [`Expr`] over a [`Scope`], with
//! implicit widening made explicit and every error located in the source.

use arrow_schema::DataType;
use sqlparser::ast::{
    self as ast, BinaryOperator, CastKind, DateTimeField, Expr as AstExpr, FunctionArg,
    FunctionArgExpr, FunctionArguments, Spanned, UnaryOperator, Value,
};

use crate::error::{ErrorCode, SqlError, SqlResult};
use crate::expr::{BinaryOp, Expr, Func, Literal, Scope};
use crate::functions::{bind_function, parse_timestamp_ms};
use crate::types::{self, common_type, is_numeric, is_string, is_timestamp, sql_name};

pub fn sql_text(e: &AstExpr) -> String {
    e.to_string().to_lowercase()
}

pub(crate) fn err(e: &AstExpr, code: ErrorCode, msg: impl Into<String>) -> SqlError {
    SqlError::span(e.span(), code, msg)
}

pub fn interval_ms(e: &AstExpr, iv: &ast::Interval) -> SqlResult<i64> {
    let text = match iv.value.as_ref() {
        AstExpr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::Number(s, _) => s.clone(),
            _ => {
                return Err(err(
                    e,
                    ErrorCode::SyntaxError,
                    "INTERVAL needs a quoted number",
                ));
            }
        },
        _ => {
            return Err(err(
                e,
                ErrorCode::SyntaxError,
                "INTERVAL needs a quoted number",
            ));
        }
    };
    let n: i64 = text
        .trim()
        .parse()
        .map_err(|_| err(e, ErrorCode::Unsupported, format!("unsupported INTERVAL value '{text}': use a whole number with one unit, e.g. INTERVAL '10' SECOND")))?;
    if iv.last_field.is_some() {
        return Err(err(
            e,
            ErrorCode::Unsupported,
            "unsupported construct: INTERVAL ranges (… TO …)",
        ));
    }
    let unit_ms: i64 = match iv.leading_field.as_ref() {
        Some(DateTimeField::Millisecond | DateTimeField::Milliseconds) => 1,
        Some(DateTimeField::Second | DateTimeField::Seconds) => 1_000,
        Some(DateTimeField::Minute | DateTimeField::Minutes) => 60_000,
        Some(DateTimeField::Hour | DateTimeField::Hours) => 3_600_000,
        Some(DateTimeField::Day | DateTimeField::Days) => 86_400_000,
        other => {
            return Err(err(
                e,
                ErrorCode::Unsupported,
                format!(
                    "unsupported INTERVAL unit {other:?}: use MILLISECOND, SECOND, MINUTE, HOUR or DAY"
                ),
            ));
        }
    };
    Ok(n * unit_ms)
}

/// Maps a CAST target type to Arrow.
pub fn cast_type(e: &AstExpr, dt: &ast::DataType) -> SqlResult<DataType> {
    let s = dt.to_string().to_uppercase();
    let base = s.split('(').next().unwrap_or("").trim();
    Ok(match base {
        "STRING" | "VARCHAR" | "CHAR" | "TEXT" | "CHARACTER VARYING" => DataType::Utf8,
        "BOOLEAN" | "BOOL" => DataType::Boolean,
        "TINYINT" => DataType::Int8,
        "SMALLINT" => DataType::Int16,
        "INT" | "INTEGER" => DataType::Int32,
        "BIGINT" => DataType::Int64,
        "FLOAT" | "REAL" => DataType::Float32,
        "DOUBLE" | "DOUBLE PRECISION" => DataType::Float64,
        "TIMESTAMP" if s.contains("LOCAL TIME ZONE") => types::timestamp_ltz(),
        "TIMESTAMP" => types::timestamp(),
        "TIMESTAMP_LTZ" => types::timestamp_ltz(),
        _ => {
            return Err(err(
                e,
                ErrorCode::Unsupported,
                format!("unsupported CAST target type {dt}"),
            ));
        }
    })
}

pub(crate) fn can_cast(from: &DataType, to: &DataType) -> bool {
    from == to
        || *from == DataType::Null
        || (is_numeric(from) || is_string(from) || *from == DataType::Boolean || is_timestamp(from))
            && (is_numeric(to) || is_string(to) || *to == DataType::Boolean || is_timestamp(to))
}

pub(crate) fn function_args(e: &AstExpr, f: &ast::Function) -> SqlResult<Vec<AstExpr>> {
    match &f.args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::Subquery(_) => Err(err(
            e,
            ErrorCode::Unsupported,
            "unsupported construct: subquery as a function argument",
        )),
        FunctionArguments::List(list) => {
            if !list.clauses.is_empty() && function_name(f) != "JSON_VALUE" {
                return Err(err(
                    e,
                    ErrorCode::Unsupported,
                    format!(
                        "unsupported construct: clauses inside the argument list of {}",
                        f.name
                    ),
                ));
            }
            let mut out = Vec::new();
            for a in &list.args {
                match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => out.push(x.clone()),
                    FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => {}
                    _ => {
                        return Err(err(
                            e,
                            ErrorCode::Unsupported,
                            format!("unsupported argument form in {}", f.name),
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}

pub fn function_name(f: &ast::Function) -> String {
    f.name.to_string().to_uppercase()
}

pub fn is_aggregate_name(name: &str) -> bool {
    matches!(name, "COUNT" | "SUM" | "MIN" | "MAX" | "AVG")
}

pub fn bind(e: &AstExpr, scope: &Scope) -> SqlResult<Expr> {
    if !scope.replacements.is_empty() {
        let text = sql_text(e);
        if let Some((_, r)) = scope.replacements.iter().find(|(t, _)| *t == text) {
            return Ok(r.clone());
        }
    }
    match e {
        AstExpr::Identifier(id) => bind_column(e, &id.value, scope),
        AstExpr::CompoundIdentifier(parts) => {
            let last = parts.last().map(|p| p.value.clone()).unwrap_or_default();
            if scope.is_qualified() && parts.len() >= 2 {
                // A join's scope names its columns `alias.column`: the qualifier decides the side.
                let q = format!("{}.{last}", parts[parts.len() - 2].value);
                return match scope.find(&q) {
                    Some(i) => Ok(Expr::column(i, &scope.columns[i].0, &scope.columns[i].1)),
                    None => Err(err(
                        e,
                        ErrorCode::UnknownColumn,
                        format!("unknown column '{q}'; available: {}", scope.column_list()),
                    )),
                };
            }
            bind_column(e, &last, scope)
        }
        AstExpr::Nested(inner) => bind(inner, scope),
        AstExpr::Value(v) => bind_value(e, &v.value),
        AstExpr::Interval(iv) => Ok(Expr::Literal(Literal::Interval(interval_ms(e, iv)?))),
        AstExpr::TypedString(ts) => {
            let s = match &ts.value.value {
                Value::SingleQuotedString(s) => s.clone(),
                _ => return Err(err(e, ErrorCode::SyntaxError, "expected a quoted literal")),
            };
            let ty = cast_type(e, &ts.data_type)?;
            if !is_timestamp(&ty) {
                return Err(err(
                    e,
                    ErrorCode::Unsupported,
                    format!("unsupported literal {e}"),
                ));
            }
            let ms = parse_timestamp_ms(&s).ok_or_else(|| {
                err(
                    e,
                    ErrorCode::TypeMismatch,
                    format!("'{s}' is not a timestamp of the form 'yyyy-MM-dd HH:mm:ss[.SSS]'"),
                )
            })?;
            Ok(Expr::Literal(Literal::Timestamp(ms)).cast_to(&ty))
        }
        AstExpr::UnaryOp { op, expr } => {
            let inner = bind(expr, scope)?;
            match op {
                UnaryOperator::Not => {
                    expect_bool(expr, &inner)?;
                    Ok(Expr::Not(Box::new(inner)))
                }
                UnaryOperator::Minus => {
                    if !is_numeric(&inner.data_type()) {
                        return Err(err(
                            e,
                            ErrorCode::TypeMismatch,
                            format!(
                                "cannot negate a value of type {}",
                                sql_name(&inner.data_type())
                            ),
                        ));
                    }
                    Ok(Expr::Negate(Box::new(inner)))
                }
                UnaryOperator::Plus => Ok(inner),
                other => Err(err(
                    e,
                    ErrorCode::Unsupported,
                    format!("unsupported operator {other}"),
                )),
            }
        }
        AstExpr::BinaryOp { left, op, right } => bind_binary(e, left, op, right, scope),
        AstExpr::IsNull(x) => Ok(Expr::IsNull {
            expr: Box::new(bind(x, scope)?),
            negated: false,
        }),
        AstExpr::IsNotNull(x) => Ok(Expr::IsNull {
            expr: Box::new(bind(x, scope)?),
            negated: true,
        }),
        AstExpr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let ge = bind_binary(e, expr, &BinaryOperator::GtEq, low, scope)?;
            let le = bind_binary(e, expr, &BinaryOperator::LtEq, high, scope)?;
            let both = Expr::Binary {
                op: BinaryOp::And,
                left: Box::new(ge),
                right: Box::new(le),
                ty: DataType::Boolean,
            };
            Ok(if *negated {
                Expr::Not(Box::new(both))
            } else {
                both
            })
        }
        AstExpr::In {
            expr,
            target,
            negated,
            ..
        } => {
            let list = match target {
                ast::InTarget::List(l) => l,
                _ => {
                    return Err(err(
                        e,
                        ErrorCode::Unsupported,
                        "unsupported construct: IN with a subquery; use a literal list",
                    ));
                }
            };
            let x = bind(expr, scope)?;
            let mut items = Vec::new();
            for item in list {
                let b = bind(item, scope)?;
                let t = common_type(&x.data_type(), &b.data_type()).ok_or_else(|| {
                    err(
                        item,
                        ErrorCode::TypeMismatch,
                        format!(
                            "IN list item of type {} cannot be compared with {}",
                            sql_name(&b.data_type()),
                            sql_name(&x.data_type())
                        ),
                    )
                })?;
                items.push(b.cast_to(&t));
            }
            let xt = items
                .first()
                .map(|i| i.data_type())
                .unwrap_or_else(|| x.data_type());
            Ok(Expr::InList {
                expr: Box::new(x.cast_to(&xt)),
                list: items,
                negated: *negated,
            })
        }
        AstExpr::Like {
            negated,
            any,
            expr,
            pattern,
            escape_char,
        } => {
            if *any || escape_char.is_some() {
                return Err(err(
                    e,
                    ErrorCode::Unsupported,
                    "unsupported construct: LIKE ANY / ESCAPE",
                ));
            }
            let x = bind(expr, scope)?;
            if !is_string(&x.data_type()) {
                return Err(err(
                    expr,
                    ErrorCode::TypeMismatch,
                    format!("LIKE needs a STRING, found {}", sql_name(&x.data_type())),
                ));
            }
            let p = match bind(pattern, scope)? {
                Expr::Literal(Literal::Utf8(p)) => p,
                _ => {
                    return Err(err(
                        pattern,
                        ErrorCode::Unsupported,
                        "unsupported construct: LIKE with a non-literal pattern",
                    ));
                }
            };
            Ok(Expr::Like {
                expr: Box::new(x),
                pattern: p,
                negated: *negated,
            })
        }
        AstExpr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            let op = operand.as_ref().map(|o| bind(o, scope)).transpose()?;
            let mut branches = Vec::new();
            let mut ty = DataType::Null;
            for w in conditions {
                let cond = match &op {
                    Some(o) => {
                        let v = bind(&w.condition, scope)?;
                        let t = common_type(&o.data_type(), &v.data_type()).ok_or_else(|| {
                            err(
                                &w.condition,
                                ErrorCode::TypeMismatch,
                                "CASE operand and WHEN value have incompatible types",
                            )
                        })?;
                        Expr::Binary {
                            op: BinaryOp::Eq,
                            left: Box::new(o.clone().cast_to(&t)),
                            right: Box::new(v.cast_to(&t)),
                            ty: DataType::Boolean,
                        }
                    }
                    None => {
                        let c = bind(&w.condition, scope)?;
                        expect_bool(&w.condition, &c)?;
                        c
                    }
                };
                let r = bind(&w.result, scope)?;
                ty = common_type(&ty, &r.data_type()).ok_or_else(|| {
                    err(
                        &w.result,
                        ErrorCode::TypeMismatch,
                        format!(
                            "CASE branches have incompatible types {} and {}",
                            sql_name(&ty),
                            sql_name(&r.data_type())
                        ),
                    )
                })?;
                branches.push((cond, r));
            }
            let otherwise = match else_result {
                Some(x) => {
                    let r = bind(x, scope)?;
                    ty = common_type(&ty, &r.data_type()).ok_or_else(|| {
                        err(
                            x,
                            ErrorCode::TypeMismatch,
                            format!(
                                "CASE branches have incompatible types {} and {}",
                                sql_name(&ty),
                                sql_name(&r.data_type())
                            ),
                        )
                    })?;
                    Some(Box::new(r))
                }
                None => None,
            };
            let branches = branches
                .into_iter()
                .map(|(c, r)| (c, r.cast_to(&ty)))
                .collect();
            let otherwise = otherwise.map(|o| Box::new(o.cast_to(&ty)));
            Ok(Expr::Case {
                branches,
                otherwise,
                ty,
            })
        }
        AstExpr::Cast {
            kind,
            expr,
            data_type,
            format,
        } => {
            if format.is_some() {
                return Err(err(
                    e,
                    ErrorCode::Unsupported,
                    "unsupported construct: CAST … FORMAT",
                ));
            }
            let x = bind(expr, scope)?;
            let ty = cast_type(e, data_type)?;
            if !can_cast(&x.data_type(), &ty) {
                return Err(err(
                    e,
                    ErrorCode::TypeMismatch,
                    format!(
                        "cannot CAST {} to {}",
                        sql_name(&x.data_type()),
                        sql_name(&ty)
                    ),
                ));
            }
            let safe = matches!(kind, CastKind::TryCast | CastKind::SafeCast);
            Ok(Expr::Cast {
                expr: Box::new(x),
                ty,
                safe,
            })
        }
        AstExpr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            let s = bind_string_arg(expr, scope)?;
            let mut args = vec![s];
            let from = substring_from.as_ref().ok_or_else(|| {
                err(
                    e,
                    ErrorCode::SyntaxError,
                    "SUBSTRING needs a start position",
                )
            })?;
            args.push(bind_int_arg(from, scope)?);
            if let Some(l) = substring_for {
                args.push(bind_int_arg(l, scope)?);
            }
            Ok(Expr::Call {
                func: Func::Substring,
                args,
                ty: DataType::Utf8,
            })
        }
        AstExpr::Trim {
            trim_where,
            trim_what,
            expr,
            trim_characters,
        } => {
            if trim_where.is_some() || trim_what.is_some() || trim_characters.is_some() {
                return Err(err(
                    e,
                    ErrorCode::Unsupported,
                    "unsupported construct: TRIM with LEADING/TRAILING/characters (plain TRIM(s) is supported)",
                ));
            }
            Ok(Expr::Call {
                func: Func::Trim,
                args: vec![bind_string_arg(expr, scope)?],
                ty: DataType::Utf8,
            })
        }
        AstExpr::Function(f) => bind_function(e, f, scope),
        other => Err(err(
            e,
            ErrorCode::Unsupported,
            format!("unsupported expression {other}"),
        )),
    }
}

fn bind_column(e: &AstExpr, name: &str, scope: &Scope) -> SqlResult<Expr> {
    let found = match scope.find(name) {
        Some(i) => Some(i),
        None if scope.is_qualified() => {
            // An unqualified name in a join: the one column of either input with that name.
            let suffix = format!(".{}", name.to_lowercase());
            let hits: Vec<usize> = (0..scope.columns.len())
                .filter(|&i| scope.columns[i].0.to_lowercase().ends_with(&suffix))
                .collect();
            if hits.len() > 1 {
                return Err(err(
                    e,
                    ErrorCode::UnknownColumn,
                    format!(
                        "column '{name}' is ambiguous ({}); qualify it with its table or alias",
                        hits.iter()
                            .map(|&i| scope.columns[i].0.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
            hits.first().copied()
        }
        None => None,
    };
    match found {
        Some(i) => Ok(Expr::column(i, &scope.columns[i].0, &scope.columns[i].1)),
        None => Err(err(
            e,
            ErrorCode::UnknownColumn,
            format!(
                "unknown column '{name}'; available: {}",
                scope.column_list()
            ),
        )),
    }
}

fn bind_value(e: &AstExpr, v: &Value) -> SqlResult<Expr> {
    Ok(Expr::Literal(match v {
        Value::Number(n, _) => {
            if let Ok(i) = n.parse::<i32>() {
                Literal::Int32(i)
            } else if let Ok(i) = n.parse::<i64>() {
                Literal::Int64(i)
            } else if let Ok(f) = n.parse::<f64>() {
                Literal::Float64(f)
            } else {
                return Err(err(e, ErrorCode::SyntaxError, format!("bad number {n}")));
            }
        }
        Value::SingleQuotedString(s) => Literal::Utf8(s.clone()),
        Value::Boolean(b) => Literal::Bool(*b),
        Value::Null => Literal::Null,
        other => {
            return Err(err(
                e,
                ErrorCode::Unsupported,
                format!("unsupported literal {other}"),
            ));
        }
    }))
}

pub(crate) fn expect_bool(e: &AstExpr, x: &Expr) -> SqlResult<()> {
    let t = x.data_type();
    if t == DataType::Boolean || t == DataType::Null {
        Ok(())
    } else {
        Err(err(
            e,
            ErrorCode::TypeMismatch,
            format!("expected a BOOLEAN condition, found {}", sql_name(&t)),
        ))
    }
}

pub(crate) fn bind_string_arg(e: &AstExpr, scope: &Scope) -> SqlResult<Expr> {
    let x = bind(e, scope)?;
    let t = x.data_type();
    if is_string(&t) || t == DataType::Null {
        Ok(x.cast_to(&DataType::Utf8))
    } else {
        Err(err(
            e,
            ErrorCode::TypeMismatch,
            format!("expected a STRING argument, found {}", sql_name(&t)),
        ))
    }
}

pub(crate) fn bind_int_arg(e: &AstExpr, scope: &Scope) -> SqlResult<Expr> {
    let x = bind(e, scope)?;
    let t = x.data_type();
    if matches!(
        t,
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64
    ) {
        Ok(x.cast_to(&DataType::Int64))
    } else {
        Err(err(
            e,
            ErrorCode::TypeMismatch,
            format!("expected an integer argument, found {}", sql_name(&t)),
        ))
    }
}

fn bind_binary(
    e: &AstExpr,
    left: &AstExpr,
    op: &BinaryOperator,
    right: &AstExpr,
    scope: &Scope,
) -> SqlResult<Expr> {
    if *op == BinaryOperator::StringConcat {
        let l = bind_string_arg(left, scope)?;
        let r = bind_string_arg(right, scope)?;
        return Ok(Expr::Call {
            func: Func::Concat,
            args: vec![l, r],
            ty: DataType::Utf8,
        });
    }
    let bop = match op {
        BinaryOperator::Plus => BinaryOp::Plus,
        BinaryOperator::Minus => BinaryOp::Minus,
        BinaryOperator::Multiply => BinaryOp::Multiply,
        BinaryOperator::Divide => BinaryOp::Divide,
        BinaryOperator::Modulo => BinaryOp::Modulo,
        BinaryOperator::Eq => BinaryOp::Eq,
        BinaryOperator::NotEq => BinaryOp::NotEq,
        BinaryOperator::Lt => BinaryOp::Lt,
        BinaryOperator::LtEq => BinaryOp::LtEq,
        BinaryOperator::Gt => BinaryOp::Gt,
        BinaryOperator::GtEq => BinaryOp::GtEq,
        BinaryOperator::And => BinaryOp::And,
        BinaryOperator::Or => BinaryOp::Or,
        other => {
            return Err(err(
                e,
                ErrorCode::Unsupported,
                format!("unsupported operator {other}"),
            ));
        }
    };
    let l = bind(left, scope)?;
    let r = bind(right, scope)?;
    let (lt, rt) = (l.data_type(), r.data_type());
    let mismatch = || {
        err(
            e,
            ErrorCode::TypeMismatch,
            format!(
                "operator {} cannot be applied to {} and {}",
                bop.symbol(),
                sql_name(&lt),
                sql_name(&rt)
            ),
        )
    };
    match bop {
        BinaryOp::And | BinaryOp::Or => {
            expect_bool(left, &l)?;
            expect_bool(right, &r)?;
            Ok(Expr::Binary {
                op: bop,
                left: Box::new(l),
                right: Box::new(r),
                ty: DataType::Boolean,
            })
        }
        _ if bop.is_comparison() => {
            let t = common_type(&lt, &rt).ok_or_else(mismatch)?;
            Ok(Expr::Binary {
                op: bop,
                left: Box::new(l.cast_to(&t)),
                right: Box::new(r.cast_to(&t)),
                ty: DataType::Boolean,
            })
        }
        BinaryOp::Plus | BinaryOp::Minus if is_timestamp(&lt) && rt == types::interval() => {
            Ok(Expr::Binary {
                op: bop,
                left: Box::new(l),
                right: Box::new(r),
                ty: lt,
            })
        }
        _ => {
            if !(is_numeric(&lt) || lt == DataType::Null)
                || !(is_numeric(&rt) || rt == DataType::Null)
            {
                return Err(mismatch());
            }
            let t = common_type(&lt, &rt).ok_or_else(mismatch)?;
            Ok(Expr::Binary {
                op: bop,
                left: Box::new(l.cast_to(&t)),
                right: Box::new(r.cast_to(&t)),
                ty: t,
            })
        }
    }
}

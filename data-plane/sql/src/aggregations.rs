//! Planning of the aggregating query shapes: aggregate calls, window TVFs,
//! `OVER` running aggregates, window aggregation and unbounded `GROUP BY`.

use std::collections::BTreeMap;

use arrow_schema::DataType;
use sqlparser::ast::{
    self as ast, Expr as AstExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Spanned,
    WindowFrameBound, WindowFrameUnits, WindowType,
};

use crate::catalog::TableDef;
use crate::error::{ErrorCode, SqlError, SqlResult};
use crate::expr::{Expr, Scope, bind, function_name, interval_ms, is_aggregate_name, sql_text};
use crate::plan::{AggCall, AggFunc, Exchange, Stage, TimeKind, WindowKind};
use crate::planner::{default_name, unsupported};
use crate::types::{self, is_numeric, sql_name};

pub(crate) fn plain_args(f: &ast::Function) -> SqlResult<(Vec<AstExpr>, bool, bool)> {
    let span = f.name.span();
    match &f.args {
        FunctionArguments::None => Ok((vec![], false, false)),
        FunctionArguments::Subquery(_) => Err(unsupported(span, "subquery as a function argument")),
        FunctionArguments::List(l) => {
            if !l.clauses.is_empty() {
                return Err(unsupported(
                    span,
                    "clauses inside a function's argument list",
                ));
            }
            let distinct = matches!(
                l.duplicate_treatment,
                Some(ast::DuplicateTreatment::Distinct)
            );
            let mut star = false;
            let mut args = Vec::new();
            for a in &l.args {
                match a {
                    FunctionArg::Unnamed(FunctionArgExpr::Expr(x)) => args.push(x.clone()),
                    FunctionArg::Unnamed(FunctionArgExpr::Wildcard) => star = true,
                    _ => {
                        return Err(unsupported(
                            span,
                            "named or qualified-wildcard function arguments",
                        ));
                    }
                }
            }
            Ok((args, distinct, star))
        }
    }
}

pub(crate) struct Aggs {
    /// SQL text of each distinct aggregate call, in first-seen order.
    texts: Vec<String>,
    calls: Vec<AggCall>,
}

/// Collects aggregate calls (`COUNT`, `SUM`, …), appending their argument
/// expressions to `pre` (a projection evaluated before the aggregation).
pub(crate) fn plan_aggs(
    calls: &[&ast::Function],
    scope: &Scope,
    pre: &mut Vec<Expr>,
) -> SqlResult<Aggs> {
    let mut out = Aggs {
        texts: Vec::new(),
        calls: Vec::new(),
    };
    for f in calls {
        let name = function_name(f);
        if !is_aggregate_name(&name) {
            continue;
        }
        let text = sql_text(&AstExpr::Function((*f).clone()));
        if out.texts.contains(&text) {
            continue;
        }
        if f.filter.is_some() {
            return Err(unsupported(f.name.span(), "aggregate FILTER (WHERE …)"));
        }
        let (args, distinct, star) = plain_args(f)?;
        let func = match name.as_str() {
            "COUNT" => AggFunc::Count,
            "SUM" => AggFunc::Sum,
            "MIN" => AggFunc::Min,
            "MAX" => AggFunc::Max,
            _ => AggFunc::Avg,
        };
        let (arg, ty) = if star || (func == AggFunc::Count && args.is_empty()) {
            if func != AggFunc::Count {
                return Err(SqlError::span(
                    f.name.span(),
                    ErrorCode::SyntaxError,
                    format!("{name}(*) is not valid; only COUNT(*)"),
                ));
            }
            (None, DataType::Int64)
        } else {
            if args.len() != 1 {
                return Err(SqlError::span(
                    f.name.span(),
                    ErrorCode::SyntaxError,
                    format!("{name} takes one argument"),
                ));
            }
            let e = bind(&args[0], scope)?;
            let t = e.data_type();
            let ty = match func {
                AggFunc::Count => DataType::Int64,
                AggFunc::Sum | AggFunc::Avg => {
                    if !is_numeric(&t) {
                        return Err(SqlError::span(
                            args[0].span(),
                            ErrorCode::TypeMismatch,
                            format!("{name} needs a numeric argument, found {}", sql_name(&t)),
                        ));
                    }
                    t.clone()
                }
                AggFunc::Min | AggFunc::Max => {
                    if !(is_numeric(&t) || types::is_string(&t) || types::is_timestamp(&t)) {
                        return Err(SqlError::span(
                            args[0].span(),
                            ErrorCode::TypeMismatch,
                            format!(
                                "{name} needs a number, string or timestamp, found {}",
                                sql_name(&t)
                            ),
                        ));
                    }
                    t.clone()
                }
            };
            pre.push(e);
            (Some(pre.len() - 1), ty)
        };
        if distinct && func != AggFunc::Count {
            return Err(unsupported(
                f.name.span(),
                &format!("{name}(DISTINCT …): only COUNT(DISTINCT …) is supported"),
            ));
        }
        out.texts.push(text);
        out.calls.push(AggCall {
            func,
            arg,
            distinct,
            ty,
        });
    }
    Ok(out)
}

pub(crate) struct Tvf {
    pub(crate) window: WindowKind,
    pub(crate) time: usize,
}

pub(crate) fn plan_tvf(
    expr: &AstExpr,
    tables: &BTreeMap<String, TableDef>,
) -> SqlResult<(String, Tvf)> {
    let f = match expr {
        AstExpr::Function(f) => f,
        _ => {
            return Err(unsupported(
                expr.span(),
                "table function other than TUMBLE, HOP, SESSION",
            ));
        }
    };
    let name = function_name(f);
    let (args, _, _) = plain_args(f)?;
    let expect = match name.as_str() {
        "TUMBLE" => 3,
        "HOP" => 4,
        "SESSION" => 3,
        "CUMULATE" => return Err(unsupported(f.name.span(), "CUMULATE windows")),
        _ => {
            return Err(unsupported(
                f.name.span(),
                &format!("table function {name}"),
            ));
        }
    };
    if args.len() != expect {
        return Err(SqlError::span(
            f.name.span(),
            ErrorCode::SyntaxError,
            format!(
                "{name} takes {expect} arguments: (TABLE t, DESCRIPTOR(time_col), {}) ",
                if name == "HOP" {
                    "slide, size"
                } else if name == "SESSION" {
                    "gap"
                } else {
                    "size"
                }
            ),
        ));
    }
    let table = match &args[0] {
        AstExpr::Identifier(id) => id.value.clone(),
        AstExpr::CompoundIdentifier(p) => p.last().map(|i| i.value.clone()).unwrap_or_default(),
        other => {
            return Err(unsupported(
                other.span(),
                "a window TVF over anything but a table name",
            ));
        }
    };
    let t = tables.get(&table).ok_or_else(|| {
        SqlError::span(
            args[0].span(),
            ErrorCode::UnknownTable,
            format!("unknown table '{table}'"),
        )
    })?;
    let col = match &args[1] {
        AstExpr::Function(d) if function_name(d) == "DESCRIPTOR" => {
            let (a, _, _) = plain_args(d)?;
            match a.as_slice() {
                [AstExpr::Identifier(id)] => (id.value.clone(), a[0].span()),
                _ => {
                    return Err(SqlError::span(
                        args[1].span(),
                        ErrorCode::SyntaxError,
                        "DESCRIPTOR takes one column name",
                    ));
                }
            }
        }
        other => {
            return Err(SqlError::span(
                other.span(),
                ErrorCode::SyntaxError,
                "expected DESCRIPTOR(time_column)",
            ));
        }
    };
    let scope = Scope::new(t.columns());
    let time = scope.find(&col.0).ok_or_else(|| {
        SqlError::span(
            col.1,
            ErrorCode::UnknownColumn,
            format!("unknown column '{}' in table '{table}'", col.0),
        )
    })?;
    let is_rowtime = t
        .watermark
        .as_ref()
        .map(|w| w.column == time)
        .unwrap_or(false);
    if !is_rowtime {
        return Err(SqlError::span(
            col.1,
            ErrorCode::Unsupported,
            format!(
                "window TVF over '{}', which is not an event-time attribute (declare WATERMARK FOR {} AS …); processing-time windows are not supported",
                col.0, col.0
            ),
        ));
    }
    let iv = |e: &AstExpr| -> SqlResult<i64> {
        match e {
            AstExpr::Interval(i) => {
                let ms = interval_ms(e, i)?;
                if ms <= 0 {
                    return Err(SqlError::span(
                        e.span(),
                        ErrorCode::SyntaxError,
                        "window sizes must be positive",
                    ));
                }
                Ok(ms)
            }
            other => Err(SqlError::span(
                other.span(),
                ErrorCode::SyntaxError,
                "expected an INTERVAL",
            )),
        }
    };
    let window = match name.as_str() {
        "TUMBLE" => WindowKind::Tumble {
            size_ms: iv(&args[2])?,
        },
        "HOP" => {
            let slide_ms = iv(&args[2])?;
            let size_ms = iv(&args[3])?;
            if size_ms % slide_ms != 0 {
                return Err(unsupported(
                    args[3].span(),
                    "HOP whose size is not a multiple of its slide",
                ));
            }
            WindowKind::Hop { size_ms, slide_ms }
        }
        _ => WindowKind::Session {
            gap_ms: iv(&args[2])?,
        },
    };
    Ok((table, Tvf { window, time }))
}

pub(crate) fn plan_over(
    stages: &mut Vec<Stage>,
    scope: &Scope,
    source: &TableDef,
    calls: &[&ast::Function],
) -> SqlResult<Scope> {
    let first = calls[0];
    let spec = |f: &ast::Function| -> SqlResult<ast::WindowSpec> {
        match &f.over {
            Some(WindowType::WindowSpec(s)) => Ok(s.clone()),
            _ => Err(unsupported(f.name.span(), "named windows (OVER w)")),
        }
    };
    let s0 = spec(first)?;
    for f in &calls[1..] {
        if spec(f)?.to_string() != s0.to_string() {
            return Err(unsupported(
                f.name.span(),
                "OVER clauses with different windows in one SELECT",
            ));
        }
    }
    let mut pre: Vec<Expr> = scope
        .columns
        .iter()
        .enumerate()
        .map(|(i, (n, t))| Expr::column(i, n, t))
        .collect();
    let n_in = pre.len();
    let mut keys = Vec::new();
    for p in &s0.partition_by {
        let e = bind(p, scope)?;
        match e.as_column() {
            Some(i) => keys.push(i),
            None => {
                pre.push(e);
                keys.push(pre.len() - 1);
            }
        }
    }
    let order = match s0.order_by.as_slice() {
        [o] => o,
        _ => {
            return Err(SqlError::span(
                first.name.span(),
                ErrorCode::Unsupported,
                "OVER needs ORDER BY exactly one time attribute",
            ));
        }
    };
    if matches!(order.options.sort, Some(ast::OrderBySort::Desc)) {
        return Err(unsupported(
            order.expr.span(),
            "OVER … ORDER BY … DESC (time must ascend)",
        ));
    }
    let oe = bind(&order.expr, scope)?;
    let time = oe
        .as_column()
        .ok_or_else(|| unsupported(order.expr.span(), "OVER ordered by an expression"))?;
    let time_kind = if source
        .watermark
        .as_ref()
        .map(|w| w.column == time)
        .unwrap_or(false)
    {
        TimeKind::Event
    } else if source.proctime == Some(time) {
        TimeKind::Processing
    } else {
        return Err(SqlError::span(
            order.expr.span(),
            ErrorCode::Unsupported,
            format!(
                "OVER must be ordered by a time attribute; '{}' has no WATERMARK and is not PROCTIME()",
                scope.columns[time].0
            ),
        ));
    };
    let range = match &s0.window_frame {
        None => true,
        Some(fr) => {
            let ok_start = matches!(fr.start_bound, WindowFrameBound::Preceding(None));
            let ok_end = matches!(fr.end_bound, None | Some(WindowFrameBound::CurrentRow));
            if !ok_start || !ok_end {
                return Err(unsupported(
                    first.name.span(),
                    "bounded OVER frames (only UNBOUNDED PRECEDING AND CURRENT ROW)",
                ));
            }
            match fr.units {
                WindowFrameUnits::Rows => false,
                WindowFrameUnits::Range => true,
                WindowFrameUnits::Groups => {
                    return Err(unsupported(first.name.span(), "GROUPS frames"));
                }
            }
        }
    };
    for f in calls {
        let n = function_name(f);
        if !is_aggregate_name(&n) {
            return Err(unsupported(
                f.name.span(),
                &format!("{n} OVER (…): supported are COUNT, SUM, MIN, MAX, AVG"),
            ));
        }
    }
    let aggs = plan_aggs(calls, &Scope::new(scope.columns.clone()), &mut pre)?;
    if aggs.calls.iter().any(|c| c.distinct) {
        return Err(unsupported(first.name.span(), "COUNT(DISTINCT …) OVER (…)"));
    }
    let extra = pre.len() > n_in;
    let mut cols: Vec<(String, DataType)> = pre
        .iter()
        .enumerate()
        .map(|(i, e)| {
            if i < n_in {
                scope.columns[i].clone()
            } else {
                (format!("$pre{i}"), e.data_type())
            }
        })
        .collect();
    if extra {
        let names = cols.iter().map(|(n, _)| n.clone()).collect();
        stages.push(Stage::Project { exprs: pre, names });
    }
    stages.push(Stage::Exchange(Exchange::Hash { keys: keys.clone() }));
    let mut post = Scope::default();
    for (i, (text, call)) in aggs.texts.iter().zip(&aggs.calls).enumerate() {
        let idx = cols.len() + i;
        post.replacements.push((
            text.clone(),
            Expr::column(idx, &format!("$agg{i}"), &call.ty),
        ));
    }
    for (i, c) in aggs.calls.iter().enumerate() {
        cols.push((format!("$agg{i}"), c.ty.clone()));
    }
    stages.push(Stage::OverAggregate {
        keys,
        time,
        time_kind,
        range,
        aggs: aggs.calls,
    });
    post.columns = cols;
    Ok(post)
}

pub(crate) fn plan_window(
    stages: &mut Vec<Stage>,
    scope: &Scope,
    tvf: Tvf,
    group_by: &[AstExpr],
    agg_calls: &[&ast::Function],
    select: &ast::Select,
) -> SqlResult<(Scope, bool)> {
    let mut has_start = false;
    let mut has_end = false;
    let mut pre: Vec<Expr> = Vec::new();
    let mut key_texts = Vec::new();
    let mut key_names = Vec::new();
    for g in group_by {
        let name = default_name(g, 0);
        if name.eq_ignore_ascii_case("window_start") {
            has_start = true;
            continue;
        }
        if name.eq_ignore_ascii_case("window_end") {
            has_end = true;
            continue;
        }
        if name.eq_ignore_ascii_case("window_time") {
            return Err(unsupported(g.span(), "GROUP BY window_time"));
        }
        pre.push(bind(g, scope)?);
        key_texts.push(sql_text(g));
        key_names.push(name);
    }
    if !has_start || !has_end {
        return Err(SqlError::span(
            select.select_token.0.span,
            ErrorCode::Unsupported,
            "a window TVF query must GROUP BY window_start, window_end (window TVFs without aggregation are not supported)",
        ));
    }
    let k = pre.len();
    let tcol = &scope.columns[tvf.time];
    pre.push(Expr::column(tvf.time, &tcol.0, &tcol.1));
    let aggs = plan_aggs(agg_calls, scope, &mut pre)?;
    if matches!(tvf.window, WindowKind::Session { .. }) && aggs.calls.iter().any(|c| c.distinct) {
        return Err(unsupported(
            select.select_token.0.span,
            "COUNT(DISTINCT …) in SESSION windows",
        ));
    }
    let names: Vec<String> = pre
        .iter()
        .enumerate()
        .map(|(i, _)| format!("$pre{i}"))
        .collect();
    stages.push(Stage::Project { exprs: pre, names });
    stages.push(Stage::Exchange(Exchange::Hash {
        keys: (0..k).collect(),
    }));
    stages.push(Stage::WindowAggregate {
        keys: (0..k).collect(),
        time: k,
        window: tvf.window,
        aggs: aggs.calls.clone(),
    });
    let mut post = Scope::default();
    for (i, (t, n)) in key_texts.iter().zip(&key_names).enumerate() {
        let ty = match stages.iter().rev().find_map(|s| match s {
            Stage::Project { exprs, .. } => Some(exprs[i].data_type()),
            _ => None,
        }) {
            Some(t) => t,
            None => DataType::Null,
        };
        post.columns.push((n.clone(), ty.clone()));
        post.replacements.push((t.clone(), Expr::column(i, n, &ty)));
    }
    post.columns
        .push(("window_start".into(), types::timestamp()));
    post.columns.push(("window_end".into(), types::timestamp()));
    for (i, (t, c)) in aggs.texts.iter().zip(&aggs.calls).enumerate() {
        let idx = k + 2 + i;
        post.columns.push((format!("$agg{i}"), c.ty.clone()));
        post.replacements
            .push((t.clone(), Expr::column(idx, &format!("$agg{i}"), &c.ty)));
    }
    Ok((post, false))
}

pub(crate) fn plan_group(
    stages: &mut Vec<Stage>,
    scope: &Scope,
    group_by: &[AstExpr],
    agg_calls: &[&ast::Function],
) -> SqlResult<Scope> {
    let mut pre = Vec::new();
    let mut key_texts = Vec::new();
    let mut key_names = Vec::new();
    for g in group_by {
        pre.push(bind(g, scope)?);
        key_texts.push(sql_text(g));
        key_names.push(default_name(g, 0));
    }
    let k = pre.len();
    let aggs = plan_aggs(agg_calls, scope, &mut pre)?;
    let key_types: Vec<DataType> = pre.iter().take(k).map(|e| e.data_type()).collect();
    let names: Vec<String> = pre
        .iter()
        .enumerate()
        .map(|(i, _)| format!("$pre{i}"))
        .collect();
    stages.push(Stage::Project { exprs: pre, names });
    stages.push(Stage::Exchange(Exchange::Hash {
        keys: (0..k).collect(),
    }));
    stages.push(Stage::GroupAggregate {
        keys: (0..k).collect(),
        aggs: aggs.calls.clone(),
    });
    let mut post = Scope::default();
    for (i, ((t, n), ty)) in key_texts.iter().zip(&key_names).zip(&key_types).enumerate() {
        post.columns.push((n.clone(), ty.clone()));
        post.replacements.push((t.clone(), Expr::column(i, n, ty)));
    }
    for (i, (t, c)) in aggs.texts.iter().zip(&aggs.calls).enumerate() {
        post.columns.push((format!("$agg{i}"), c.ty.clone()));
        post.replacements
            .push((t.clone(), Expr::column(k + i, &format!("$agg{i}"), &c.ty)));
    }
    Ok(post)
}

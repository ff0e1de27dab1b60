//! Flink's deduplication pattern, the one subquery in FROM we plan:
//!
//! ```sql
//! SELECT … FROM (
//!   SELECT *, ROW_NUMBER() OVER (PARTITION BY k… ORDER BY t [ASC|DESC]) AS rn FROM src [WHERE …]
//! ) WHERE rn = 1
//! ```
//!
//! `t` must be a time attribute of `src` (its WATERMARK column or a
//! `PROCTIME()` column). ASC keeps the first row per key (append-only), DESC
//! the last (a changelog). Every other use of ROW_NUMBER — top-N (`rn <= N`),
//! selecting `rn`, ordering by a non-time column — is rejected by name.

use std::cell::Cell;
use std::collections::BTreeMap;

use arrow_schema::DataType;
use sqlparser::ast::{
    self as ast, BinaryOperator, Expr as AstExpr, GroupByExpr, SelectItem, SetExpr, Spanned,
    TableFactor, Value, WindowType,
};
use sqlparser::tokenizer::Span;

use crate::aggregations::plain_args;
use crate::catalog::TableDef;
use crate::error::{ErrorCode, SqlError, SqlResult};
use crate::expr::{Expr, Scope, bind, function_name, is_aggregate_name};
use crate::parse::Insert;
use crate::plan::{Exchange, Pipeline, Stage, TimeKind};
use crate::planner::{
    collect_calls, default_name, finish_pipeline, item_expr, lookup_source, plan_where,
    source_stages, unsupported,
};
use crate::simplify::map;
use crate::types::sql_name;

const PATTERN: &str = "SELECT … FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY … ORDER BY <time attribute> [ASC|DESC]) AS rn FROM t) WHERE rn = 1";

/// Replaces each column reference `#i` by `inner[i]`.
fn substitute(e: Expr, inner: &[Expr]) -> Expr {
    map(e, &|x| match x {
        Expr::Column { index, .. } if index < inner.len() => inner[index].clone(),
        other => other,
    })
}

fn references(e: &Expr, column: usize) -> bool {
    let seen = Cell::new(false);
    map(e.clone(), &|x| {
        if x.as_column() == Some(column) {
            seen.set(true);
        }
        x
    });
    seen.get()
}

fn conjuncts<'a>(e: &'a AstExpr, out: &mut Vec<&'a AstExpr>) {
    match e {
        AstExpr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        AstExpr::Nested(x) => conjuncts(x, out),
        other => out.push(other),
    }
}

fn is_name(e: &AstExpr, name: &str) -> bool {
    match e {
        AstExpr::Identifier(id) => id.value.eq_ignore_ascii_case(name),
        AstExpr::CompoundIdentifier(p) => p
            .last()
            .map(|x| x.value.eq_ignore_ascii_case(name))
            .unwrap_or(false),
        AstExpr::Nested(x) => is_name(x, name),
        _ => false,
    }
}

fn int_literal(e: &AstExpr) -> Option<i64> {
    match e {
        AstExpr::Value(v) => match &v.value {
            Value::Number(n, _) => n.parse().ok(),
            _ => None,
        },
        AstExpr::Nested(x) => int_literal(x),
        _ => None,
    }
}

/// Whether `c` keeps exactly the first row number: `rn = 1`, `rn <= 1`, `rn < 2` (either side).
fn is_top_one(c: &AstExpr, rn: &str) -> bool {
    let AstExpr::BinaryOp { left, op, right } = c else {
        return false;
    };
    let (n, op) = if is_name(left, rn) {
        (int_literal(right), op.clone())
    } else if is_name(right, rn) {
        let flipped = match op {
            BinaryOperator::GtEq => BinaryOperator::LtEq,
            BinaryOperator::Gt => BinaryOperator::Lt,
            other => other.clone(),
        };
        (int_literal(left), flipped)
    } else {
        return false;
    };
    matches!(
        (op, n),
        (BinaryOperator::Eq | BinaryOperator::LtEq, Some(1)) | (BinaryOperator::Lt, Some(2))
    )
}

struct RowNumber<'a> {
    call: &'a ast::Function,
    alias: String,
}

pub(crate) fn plan_dedup_insert(
    ins: &Insert,
    sink: &TableDef,
    outer: &ast::Select,
    sub: &ast::Query,
    tables: &BTreeMap<String, TableDef>,
) -> SqlResult<Pipeline> {
    let not_dedup = |span: Span| {
        unsupported(
            span,
            &format!("subquery in FROM (the one supported form is deduplication: {PATTERN})"),
        )
    };
    if sub.with.is_some() || sub.order_by.is_some() || sub.limit_clause.is_some() {
        return Err(not_dedup(sub.span()));
    }
    let inner = match sub.body.as_ref() {
        SetExpr::Select(s) => s,
        other => return Err(not_dedup(other.span())),
    };
    // Find the ROW_NUMBER item first: without one, this is no deduplication.
    let mut row_number: Option<RowNumber<'_>> = None;
    for it in &inner.projection {
        let (e, alias) = match it {
            SelectItem::Wildcard(_) => continue,
            other => item_expr(other)?,
        };
        if let AstExpr::Function(f) = e
            && function_name(f) == "ROW_NUMBER"
        {
            if row_number.is_some() {
                return Err(unsupported(f.name.span(), "two ROW_NUMBER() in one SELECT"));
            }
            let alias = alias.ok_or_else(|| {
                SqlError::span(
                    f.name.span(),
                    ErrorCode::Unsupported,
                    format!("unsupported construct: ROW_NUMBER() without an alias; name it and filter on it: {PATTERN}"),
                )
            })?;
            row_number = Some(RowNumber { call: f, alias });
        }
    }
    let Some(rn) = row_number else {
        return Err(not_dedup(sub.span()));
    };
    if inner.distinct.is_some() {
        return Err(unsupported(inner.select_token.0.span, "SELECT DISTINCT"));
    }
    if let Some(h) = &inner.having {
        return Err(unsupported(h.span(), "HAVING"));
    }
    if !matches!(&inner.group_by, GroupByExpr::Expressions(v, _) if v.is_empty()) {
        return Err(unsupported(
            inner.group_by.span(),
            "GROUP BY in a deduplication subquery",
        ));
    }
    if inner.from.len() != 1 || !inner.from[0].joins.is_empty() {
        return Err(unsupported(
            inner.select_token.0.span,
            "a deduplication subquery must read exactly one table (no joins)",
        ));
    }
    let relation = &inner.from[0].relation;
    let source_name = match relation {
        TableFactor::Table {
            name, args: None, ..
        } => name
            .0
            .last()
            .map(|p| p.to_string())
            .unwrap_or_default()
            .trim_matches('`')
            .trim_matches('"')
            .to_string(),
        other => {
            return Err(unsupported(
                other.span(),
                "deduplication over anything but a table (window TVF or nested subquery)",
            ));
        }
    };
    let source = lookup_source(relation.span(), &source_name, tables)?;
    let mut stages = source_stages(source);
    let scope = Scope::new(source.columns());
    if let Some(w) = &inner.selection {
        plan_where(w, &scope, source, &mut stages)?;
    }

    // ROW_NUMBER() OVER (PARTITION BY … ORDER BY time [ASC|DESC]).
    let f = rn.call;
    let (args, _, star) = plain_args(f)?;
    if !args.is_empty() || star {
        return Err(SqlError::span(
            f.name.span(),
            ErrorCode::SyntaxError,
            "ROW_NUMBER() takes no arguments",
        ));
    }
    let spec = match &f.over {
        Some(WindowType::WindowSpec(s)) => s,
        Some(WindowType::NamedWindow(_)) => {
            return Err(unsupported(f.name.span(), "named windows (OVER w)"));
        }
        None => {
            return Err(SqlError::span(
                f.name.span(),
                ErrorCode::SyntaxError,
                "ROW_NUMBER() needs OVER (PARTITION BY … ORDER BY …)",
            ));
        }
    };
    if spec.window_frame.is_some() {
        return Err(unsupported(
            f.name.span(),
            "a window frame on ROW_NUMBER() OVER (…)",
        ));
    }
    let order = match spec.order_by.as_slice() {
        [o] => o,
        _ => {
            return Err(unsupported(
                f.name.span(),
                "ROW_NUMBER() OVER (…) without ORDER BY exactly one time attribute (top-N by other columns is not supported)",
            ));
        }
    };
    let keep_last = matches!(order.options.sort, Some(ast::OrderBySort::Desc));
    let time = bind(&order.expr, &scope)?.as_column().ok_or_else(|| {
        unsupported(
            order.expr.span(),
            "ROW_NUMBER() ordered by an expression (order by a time attribute column)",
        )
    })?;
    let time_kind = if source.watermark.as_ref().map(|w| w.column) == Some(time) {
        TimeKind::Event
    } else if source.proctime == Some(time) {
        TimeKind::Processing
    } else {
        return Err(SqlError::span(
            order.expr.span(),
            ErrorCode::Unsupported,
            format!(
                "unsupported construct: ROW_NUMBER() ordered by '{}', which is not a time attribute (no WATERMARK, not PROCTIME()); top-N is not supported",
                scope.columns[time].0
            ),
        ));
    };
    let mut pre: Vec<Expr> = scope
        .columns
        .iter()
        .enumerate()
        .map(|(i, (n, t))| Expr::column(i, n, t))
        .collect();
    let n_in = pre.len();
    let mut keys = Vec::new();
    for p in &spec.partition_by {
        match bind(p, &scope)? {
            e if e.as_column().is_some() => keys.extend(e.as_column()),
            e => {
                pre.push(e);
                keys.push(pre.len() - 1);
            }
        }
    }

    // The subquery's other items, bound over the source's columns (they are
    // row-wise, so computing them after the deduplication gives the same rows).
    let mut inner_exprs: Vec<Expr> = Vec::new();
    let mut inner_names: Vec<(String, DataType)> = Vec::new();
    for (i, it) in inner.projection.iter().enumerate() {
        if let SelectItem::Wildcard(_) = it {
            for (c, (n, t)) in scope.columns.iter().enumerate() {
                inner_exprs.push(Expr::column(c, n, t));
                inner_names.push((n.clone(), t.clone()));
            }
            continue;
        }
        let (e, alias) = item_expr(it)?;
        if matches!(e, AstExpr::Function(g) if std::ptr::eq(g, f)) {
            continue;
        }
        let mut calls = Vec::new();
        collect_calls(e, &mut calls);
        if let Some(c) = calls
            .iter()
            .find(|c| c.over.is_some() || is_aggregate_name(&function_name(c)))
        {
            return Err(unsupported(
                c.name.span(),
                "aggregates or OVER windows next to ROW_NUMBER() in a deduplication subquery",
            ));
        }
        let b = bind(e, &scope)?;
        inner_names.push((alias.unwrap_or_else(|| default_name(e, i)), b.data_type()));
        inner_exprs.push(b);
    }
    // The outer query sees the subquery's columns and `rn`, which it may only compare with 1.
    let rn_index = inner_names.len();
    let mut outer_scope = Scope::new(inner_names.clone());
    outer_scope
        .columns
        .push((rn.alias.clone(), DataType::Int64));
    let rn_used = |span: Span| {
        unsupported(
            span,
            &format!(
                "using the ROW_NUMBER() result '{}' other than in WHERE {} = 1 (only deduplication is supported: {PATTERN})",
                rn.alias, rn.alias
            ),
        )
    };

    let mut has_top_one = false;
    let mut post_filters: Vec<Expr> = Vec::new();
    let mut cs = Vec::new();
    if let Some(w) = &outer.selection {
        conjuncts(w, &mut cs);
    }
    for c in cs {
        if is_top_one(c, &rn.alias) {
            if has_top_one {
                return Err(rn_used(c.span()));
            }
            has_top_one = true;
            continue;
        }
        let b = bind(c, &outer_scope)?;
        if references(&b, rn_index) {
            let top_n = matches!(c, AstExpr::BinaryOp { left, op: BinaryOperator::Lt | BinaryOperator::LtEq, .. } if is_name(left, &rn.alias));
            if top_n {
                return Err(unsupported(
                    c.span(),
                    &format!(
                        "top-N ({c}): only deduplication ({} = 1) is supported",
                        rn.alias
                    ),
                ));
            }
            return Err(rn_used(c.span()));
        }
        if b.data_type() != DataType::Boolean {
            return Err(SqlError::span(
                c.span(),
                ErrorCode::TypeMismatch,
                format!(
                    "WHERE needs a BOOLEAN condition, found {}",
                    sql_name(&b.data_type())
                ),
            ));
        }
        if keep_last {
            // A filter on a changelog would have to turn dropped updates into deletes.
            return Err(unsupported(
                c.span(),
                "conditions next to rn = 1 when keeping the last row (ORDER BY … DESC); filter inside the subquery instead",
            ));
        }
        post_filters.push(b);
    }
    if !has_top_one {
        return Err(unsupported(
            f.name.span(),
            &format!(
                "ROW_NUMBER() without WHERE {} = 1 in the outer query (only deduplication is supported: {PATTERN})",
                rn.alias
            ),
        ));
    }

    // The outer SELECT: plain row-wise expressions over the subquery's columns.
    if outer.distinct.is_some() {
        return Err(unsupported(outer.select_token.0.span, "SELECT DISTINCT"));
    }
    if !matches!(&outer.group_by, GroupByExpr::Expressions(v, _) if v.is_empty()) {
        return Err(unsupported(
            outer.group_by.span(),
            "GROUP BY over a deduplication",
        ));
    }
    let mut items: Vec<(Expr, Span)> = Vec::new();
    for it in &outer.projection {
        if let SelectItem::Wildcard(_) = it {
            return Err(rn_used(it.span()));
        }
        let (e, _) = item_expr(it)?;
        let mut calls = Vec::new();
        collect_calls(e, &mut calls);
        if let Some(c) = calls
            .iter()
            .find(|c| c.over.is_some() || is_aggregate_name(&function_name(c)))
        {
            return Err(unsupported(
                c.name.span(),
                "aggregates or OVER windows over a deduplication",
            ));
        }
        let b = bind(e, &outer_scope)?;
        if references(&b, rn_index) {
            return Err(rn_used(e.span()));
        }
        items.push((substitute(b, &inner_exprs), e.span()));
    }

    if pre.len() > n_in {
        let names = pre
            .iter()
            .enumerate()
            .map(|(i, _)| {
                if i < n_in {
                    scope.columns[i].0.clone()
                } else {
                    format!("$pre{i}")
                }
            })
            .collect();
        stages.push(Stage::Project {
            exprs: pre.clone(),
            names,
        });
    }
    stages.push(Stage::Exchange(Exchange::Hash { keys: keys.clone() }));
    stages.push(Stage::Deduplicate {
        keys,
        time,
        time_kind,
        keep_last,
    });
    for p in post_filters {
        stages.push(Stage::Filter {
            predicate: substitute(p, &inner_exprs),
        });
    }
    finish_pipeline(ins, sink, source, stages, items, pre.len(), keep_last)
}

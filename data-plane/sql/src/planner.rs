//! `INSERT INTO sink SELECT …` → a [`Pipeline`]. The supported shapes are
//! stateless (projection/filter), `OVER` running aggregates, windowing TVFs
//! with `GROUP BY window_start, window_end, …`, unbounded `GROUP BY`
//! (changelog), deduplication over a `ROW_NUMBER()` subquery (planned in
//! `dedup.rs`) and interval joins of two tables (planned in `join.rs`).
//! Anything else is rejected with its position.

use std::collections::BTreeMap;

use arrow_schema::DataType;
use sqlparser::ast::{
    self as ast, Expr as AstExpr, GroupByExpr, SelectItem, SetExpr, Spanned, TableFactor,
};
use sqlparser::tokenizer::Span;

use crate::aggregations::{plan_group, plan_over, plan_tvf, plan_window};
use crate::catalog::TableDef;
use crate::error::{ErrorCode, SqlError, SqlResult};
use crate::expr::{Expr, Scope, bind, function_name, is_aggregate_name};
use crate::parse::Insert;
use crate::plan::{Pipeline, Stage};
use crate::types::{assignable, sql_name};

pub(crate) fn unsupported(span: Span, what: &str) -> SqlError {
    SqlError::span(
        span,
        ErrorCode::Unsupported,
        format!("unsupported construct: {what}"),
    )
}

/// Function calls inside an expression (not descending into the calls themselves).
pub(crate) fn collect_calls<'a>(e: &'a AstExpr, out: &mut Vec<&'a ast::Function>) {
    match e {
        AstExpr::Function(f) => out.push(f),
        AstExpr::BinaryOp { left, right, .. } => {
            collect_calls(left, out);
            collect_calls(right, out);
        }
        AstExpr::UnaryOp { expr, .. }
        | AstExpr::Nested(expr)
        | AstExpr::IsNull(expr)
        | AstExpr::IsNotNull(expr)
        | AstExpr::Cast { expr, .. } => collect_calls(expr, out),
        AstExpr::Between {
            expr, low, high, ..
        } => {
            collect_calls(expr, out);
            collect_calls(low, out);
            collect_calls(high, out);
        }
        AstExpr::In {
            expr,
            target: ast::InTarget::List(list),
            ..
        } => {
            collect_calls(expr, out);
            for x in list {
                collect_calls(x, out);
            }
        }
        AstExpr::Like { expr, pattern, .. } => {
            collect_calls(expr, out);
            collect_calls(pattern, out);
        }
        AstExpr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            if let Some(o) = operand {
                collect_calls(o, out);
            }
            for w in conditions {
                collect_calls(&w.condition, out);
                collect_calls(&w.result, out);
            }
            if let Some(x) = else_result {
                collect_calls(x, out);
            }
        }
        AstExpr::Substring {
            expr,
            substring_from,
            substring_for,
            ..
        } => {
            collect_calls(expr, out);
            if let Some(x) = substring_from {
                collect_calls(x, out);
            }
            if let Some(x) = substring_for {
                collect_calls(x, out);
            }
        }
        AstExpr::Trim { expr, .. } => collect_calls(expr, out),
        _ => {}
    }
}

pub(crate) fn item_expr(item: &SelectItem) -> SqlResult<(&AstExpr, Option<String>)> {
    match item {
        SelectItem::UnnamedExpr(e) => Ok((e, None)),
        SelectItem::ExprWithAlias { expr, alias } => Ok((expr, Some(alias.value.clone()))),
        other => Err(unsupported(other.span(), "this kind of select item")),
    }
}

pub(crate) fn default_name(e: &AstExpr, i: usize) -> String {
    match e {
        AstExpr::Identifier(id) => id.value.clone(),
        AstExpr::CompoundIdentifier(p) => p.last().map(|x| x.value.clone()).unwrap_or_default(),
        _ => format!("EXPR${i}"),
    }
}

pub(crate) fn source_stages(t: &TableDef) -> Vec<Stage> {
    let mut stages = Vec::new();
    if !t.computed.is_empty() {
        let cols = t.columns();
        let mut exprs: Vec<Expr> = t
            .physical
            .iter()
            .enumerate()
            .map(|(i, c)| Expr::column(i, &c.name, &c.ty))
            .collect();
        exprs.extend(t.computed.iter().map(|(_, e)| e.clone()));
        stages.push(Stage::Project {
            exprs,
            names: cols.into_iter().map(|(n, _)| n).collect(),
        });
    }
    if let Some(w) = &t.watermark {
        stages.push(Stage::AssignWatermark {
            rowtime: w.column,
            expr: w.expr.clone(),
        });
    }
    stages
}

pub fn plan_insert(ins: &Insert, tables: &BTreeMap<String, TableDef>) -> SqlResult<Pipeline> {
    let sink = tables.get(&ins.target).ok_or_else(|| {
        SqlError::span(
            ins.target_span,
            ErrorCode::UnknownTable,
            format!("unknown table '{}'", ins.target),
        )
    })?;
    if sink.connector == "datagen" {
        return Err(SqlError::span(
            ins.target_span,
            ErrorCode::BadOption,
            format!(
                "table '{}' uses connector 'datagen', which cannot be written to",
                ins.target
            ),
        ));
    }
    let q = &ins.query;
    if q.with.is_some() {
        return Err(unsupported(q.span(), "WITH (common table expressions)"));
    }
    if let Some(o) = &q.order_by {
        return Err(unsupported(o.span(), "ORDER BY on a streaming query"));
    }
    if q.limit_clause.is_some() || q.fetch.is_some() {
        return Err(unsupported(q.span(), "LIMIT / FETCH"));
    }
    let select = match q.body.as_ref() {
        SetExpr::Select(s) => s,
        other => {
            return Err(unsupported(
                other.span(),
                "set operations (UNION, INTERSECT, EXCEPT) and VALUES",
            ));
        }
    };
    if select.distinct.is_some() {
        return Err(unsupported(select.select_token.0.span, "SELECT DISTINCT"));
    }
    if select.having.is_some() {
        return Err(unsupported(
            select.having.as_ref().map(|h| h.span()).unwrap_or(q.span()),
            "HAVING",
        ));
    }
    if select.from.len() > 1 || select.from.first().is_some_and(|f| !f.joins.is_empty()) {
        return crate::join::plan_join_insert(ins, sink, select, tables);
    }
    let Some(from) = select.from.first() else {
        return Err(unsupported(
            select.select_token.0.span,
            "a SELECT without FROM",
        ));
    };
    let (source_name, tvf) = match &from.relation {
        TableFactor::Table {
            name, args: None, ..
        } => {
            let n = name.0.last().map(|p| p.to_string()).unwrap_or_default();
            let n = n.trim_matches('`').trim_matches('"').to_string();
            (n, None)
        }
        TableFactor::TableFunction { expr, .. } => {
            let (t, tvf) = plan_tvf(expr, tables)?;
            (t, Some(tvf))
        }
        TableFactor::Derived {
            lateral: false,
            subquery,
            ..
        } => {
            return crate::dedup::plan_dedup_insert(ins, sink, select, subquery, tables);
        }
        TableFactor::Derived { .. } => {
            return Err(unsupported(
                from.relation.span(),
                "LATERAL subquery in FROM",
            ));
        }
        other => return Err(unsupported(other.span(), "this kind of FROM item")),
    };
    let source = lookup_source(from.relation.span(), &source_name, tables)?;
    let mut stages = source_stages(source);
    let scope = Scope::new(source.columns());
    if let Some(w) = &select.selection {
        plan_where(w, &scope, source, &mut stages)?;
    }

    // Expand `*` and collect the select items.
    let mut items: Vec<(AstExpr, String, Span)> = Vec::new();
    for (i, it) in select.projection.iter().enumerate() {
        match it {
            SelectItem::Wildcard(_) => {
                if tvf.is_some() {
                    return Err(unsupported(it.span(), "SELECT * over a window aggregation"));
                }
                for (n, _) in scope.columns.iter() {
                    items.push((
                        AstExpr::Identifier(ast::Ident::new(n.clone())),
                        n.clone(),
                        it.span(),
                    ));
                }
            }
            _ => {
                let (e, alias) = item_expr(it)?;
                items.push((
                    e.clone(),
                    alias.unwrap_or_else(|| default_name(e, i)),
                    e.span(),
                ));
            }
        }
    }
    let mut calls = Vec::new();
    for (e, _, _) in &items {
        collect_calls(e, &mut calls);
    }
    let over_calls: Vec<&ast::Function> =
        calls.iter().copied().filter(|f| f.over.is_some()).collect();
    let agg_calls: Vec<&ast::Function> = calls
        .iter()
        .copied()
        .filter(|f| f.over.is_none() && is_aggregate_name(&function_name(f)))
        .collect();
    let group_by: Vec<AstExpr> = match &select.group_by {
        GroupByExpr::Expressions(v, m) if m.is_empty() => v.clone(),
        other => {
            return Err(unsupported(
                other.span(),
                "GROUP BY ALL / ROLLUP / CUBE / GROUPING SETS",
            ));
        }
    };

    if let Some(f) = over_calls.iter().find(|f| function_name(f) == "ROW_NUMBER") {
        return Err(unsupported(
            f.name.span(),
            "ROW_NUMBER() outside the deduplication pattern SELECT … FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY … ORDER BY <time attribute>) AS rn FROM t) WHERE rn = 1",
        ));
    }
    let (post_scope, updating) = if let Some(tvf) = tvf {
        plan_window(&mut stages, &scope, tvf, &group_by, &agg_calls, select)?
    } else if !over_calls.is_empty() {
        if !group_by.is_empty() || !agg_calls.is_empty() {
            return Err(unsupported(
                over_calls[0].name.span(),
                "OVER aggregates mixed with GROUP BY",
            ));
        }
        (plan_over(&mut stages, &scope, source, &over_calls)?, false)
    } else if !group_by.is_empty() || !agg_calls.is_empty() {
        (
            plan_group(&mut stages, &scope, &group_by, &agg_calls)?,
            true,
        )
    } else {
        (scope.clone(), false)
    };

    let bound = items
        .iter()
        .map(|(e, _, span)| Ok((bind(e, &post_scope)?, *span)))
        .collect::<SqlResult<Vec<_>>>()?;
    finish_pipeline(
        ins,
        sink,
        source,
        stages,
        bound,
        post_scope.columns.len(),
        updating,
    )
}

/// The table read by a query, which must be readable.
pub(crate) fn lookup_source<'a>(
    span: Span,
    name: &str,
    tables: &'a BTreeMap<String, TableDef>,
) -> SqlResult<&'a TableDef> {
    let source = tables.get(name).ok_or_else(|| {
        SqlError::span(
            span,
            ErrorCode::UnknownTable,
            format!("unknown table '{name}'"),
        )
    })?;
    // jdbc is a sink here: reading a database table is not a streaming source.
    if source.connector == "blackhole" || source.connector == "print" || source.connector == "jdbc"
    {
        return Err(SqlError::span(
            span,
            ErrorCode::BadOption,
            format!(
                "table '{name}' uses connector '{}', which cannot be read",
                source.connector
            ),
        ));
    }
    Ok(source)
}

/// The `WHERE` of a query reading `source` directly.
pub(crate) fn plan_where(
    w: &AstExpr,
    scope: &Scope,
    source: &TableDef,
    stages: &mut Vec<Stage>,
) -> SqlResult<()> {
    let p = bind(w, scope)?;
    if p.data_type() != DataType::Boolean {
        return Err(SqlError::span(
            w.span(),
            ErrorCode::TypeMismatch,
            format!(
                "WHERE needs a BOOLEAN condition, found {}",
                sql_name(&p.data_type())
            ),
        ));
    }
    if source.watermark.is_none() && !source.computed.is_empty() {
        // Filter before computing columns (they are then computed for the kept rows
        // only): the predicate reads the computed expressions themselves, simplified.
        // Not done with a watermark, which is taken over all rows before any filter.
        let inlined = crate::simplify::simplify(crate::simplify::inline_computed(p, source));
        stages.insert(0, Stage::Filter { predicate: inlined });
    } else {
        stages.push(Stage::Filter { predicate: p });
    }
    Ok(())
}

/// The final projection onto the sink's columns (`items` bound over the last
/// stage's `n_cols` columns) and the sink checks.
pub(crate) fn finish_pipeline(
    ins: &Insert,
    sink: &TableDef,
    source: &TableDef,
    mut stages: Vec<Stage>,
    items: Vec<(Expr, Span)>,
    n_cols: usize,
    updating: bool,
) -> SqlResult<Pipeline> {
    if items.len() != sink.physical.len() {
        return Err(SqlError::span(
            ins.target_span,
            ErrorCode::TypeMismatch,
            format!(
                "the query produces {} columns but sink '{}' has {} ({})",
                items.len(),
                sink.name,
                sink.physical.len(),
                sink.physical
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    let mut exprs = Vec::new();
    let mut output = Vec::new();
    for ((b, span), col) in items.into_iter().zip(&sink.physical) {
        if !assignable(&b.data_type(), &col.ty) {
            return Err(SqlError::span(
                span,
                ErrorCode::TypeMismatch,
                format!(
                    "cannot write {} into column '{}' of type {} of sink '{}'; use CAST",
                    sql_name(&b.data_type()),
                    col.name,
                    sql_name(&col.ty),
                    sink.name
                ),
            ));
        }
        exprs.push(b.cast_to(&col.ty));
        output.push((col.name.clone(), sql_name(&col.ty)));
    }
    let identity = exprs.len() == n_cols
        && exprs
            .iter()
            .enumerate()
            .all(|(i, e)| e.as_column() == Some(i));
    if !identity {
        stages.push(Stage::Project {
            exprs,
            names: sink.physical.iter().map(|c| c.name.clone()).collect(),
        });
    }
    if updating && sink.connector == "jdbc" && sink.primary_key.is_empty() {
        return Err(SqlError::span(
            ins.target_span,
            ErrorCode::Unsupported,
            format!(
                "sink '{}' (connector 'jdbc') receives updates but has no PRIMARY KEY; declare `PRIMARY KEY (…) NOT ENFORCED` so rows can be upserted",
                sink.name
            ),
        ));
    }
    if updating
        && !matches!(
            sink.connector.as_str(),
            "upsert-kafka" | "print" | "blackhole" | "filesystem" | "jdbc"
        )
    {
        return Err(SqlError::span(
            ins.target_span,
            ErrorCode::Unsupported,
            format!(
                "sink '{}' (connector '{}') only takes append-only rows but this query produces updates; use an upsert sink (upsert-kafka, jdbc with a primary key, print, blackhole)",
                sink.name, sink.connector
            ),
        ));
    }
    if updating && sink.connector == "filesystem" {
        return Err(SqlError::span(
            ins.target_span,
            ErrorCode::Unsupported,
            format!(
                "sink '{}' (filesystem) only takes append-only rows but this query produces updates",
                sink.name
            ),
        ));
    }
    Ok(Pipeline {
        source: source.name.clone(),
        sink: sink.name.clone(),
        stages,
        output,
        updating,
        right: None,
    })
}

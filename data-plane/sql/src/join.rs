//! Flink's interval join, the one join we plan:
//!
//! ```sql
//! SELECT … FROM a [AS x], b [AS y] WHERE x.k = y.k AND y.t BETWEEN x.t - INTERVAL … AND x.t + INTERVAL …
//! SELECT … FROM a x [INNER | LEFT | RIGHT | FULL [OUTER]] JOIN b y
//!   ON x.k = y.k AND x.t >= y.t - INTERVAL … AND x.t < y.t + INTERVAL … [WHERE …]
//! ```
//!
//! Both inputs are tables with a WATERMARK (append-only, event time). The
//! conjuncts of the condition are sorted into equality predicates between
//! the two inputs (the join key: at least one), bounds on the difference of
//! the two time attributes (both a lower and an upper bound: strict bounds
//! become inclusive ones 1 ms inside, as timestamps are milliseconds), and the
//! rest, which filters the joined rows. For an inner join the condition is
//! `ON` and `WHERE` together; for an outer join it is `ON` alone, which may
//! hold only keys and bounds (another predicate there would decide which rows
//! are padded: not supported), and `WHERE` filters the joined and padded rows.
//! Both inputs are hash-partitioned on the key; keys of different types are
//! cast to their common type first so equal values hash alike. Regular
//! (unbounded) joins, processing-time joins, CROSS/NATURAL/USING joins, joins
//! of more than two tables or of subqueries and aggregations over a join are
//! rejected by name with their position.

use std::cell::RefCell;
use std::collections::BTreeMap;

use arrow_schema::DataType;
use sqlparser::ast::{
    self as ast, Expr as AstExpr, GroupByExpr, JoinConstraint, JoinOperator, SelectItem, Spanned,
    TableFactor,
};
use sqlparser::tokenizer::Span;

use crate::catalog::TableDef;
use crate::error::{ErrorCode, SqlError, SqlResult};
use crate::expr::{BinaryOp, Expr, Literal, Scope, bind, function_name, is_aggregate_name};
use crate::parse::Insert;
use crate::plan::{Exchange, JoinInput, JoinKind, Pipeline, Stage};
use crate::planner::{
    collect_calls, finish_pipeline, item_expr, lookup_source, source_stages, unsupported,
};
use crate::simplify::map;
use crate::types::{common_type, is_timestamp, sql_name};

const EXAMPLE: &str = "FROM a, b WHERE a.id = b.id AND b.t BETWEEN a.t - INTERVAL '1' HOUR AND a.t + INTERVAL '1' HOUR";

/// One input of the join as written.
struct Side<'a> {
    table: &'a TableDef,
    /// The alias, or the table's name.
    qualifier: String,
    span: Span,
    /// Index of the time attribute (the WATERMARK column) in `table.columns()`.
    rowtime: usize,
}

fn side<'a>(f: &TableFactor, tables: &'a BTreeMap<String, TableDef>) -> SqlResult<Side<'a>> {
    let TableFactor::Table {
        name,
        alias,
        args: None,
        ..
    } = f
    else {
        return Err(unsupported(
            f.span(),
            "a subquery or table function as an input of a join (join tables directly)",
        ));
    };
    let n = name.0.last().map(|p| p.to_string()).unwrap_or_default();
    let n = n.trim_matches('`').trim_matches('"').to_string();
    let table = lookup_source(f.span(), &n, tables)?;
    if table.connector == "upsert-kafka" {
        return Err(unsupported(
            f.span(),
            &format!(
                "interval join with table '{n}' (connector 'upsert-kafka'), which is a changelog: both inputs must be append-only"
            ),
        ));
    }
    let Some(w) = &table.watermark else {
        return Err(unsupported(
            f.span(),
            &format!(
                "join with table '{n}', which has no event-time attribute (WATERMARK FOR …): only interval joins of two tables with watermarks are supported, not regular or processing-time joins"
            ),
        ));
    };
    Ok(Side {
        table,
        qualifier: alias
            .as_ref()
            .map(|a| a.name.value.clone())
            .unwrap_or_else(|| n.clone()),
        span: f.span(),
        rowtime: w.column,
    })
}

/// The two inputs, the `ON` condition if any, where the join is written, and its kind.
fn inputs<'a>(
    select: &'a ast::Select,
    tables: &'a BTreeMap<String, TableDef>,
) -> SqlResult<(Side<'a>, Side<'a>, Option<&'a AstExpr>, Span, JoinKind)> {
    let too_many = |span: Span| unsupported(span, "a join of more than two tables");
    match select.from.as_slice() {
        [a, b] => {
            if let Some(j) = a.joins.first().or(b.joins.first()) {
                return Err(too_many(j.relation.span()));
            }
            Ok((
                side(&a.relation, tables)?,
                side(&b.relation, tables)?,
                None,
                b.relation.span(),
                JoinKind::Inner,
            ))
        }
        [a] if a.joins.len() == 1 => {
            let j = &a.joins[0];
            let span = j.relation.span();
            let (c, kind) = match &j.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) => (c, JoinKind::Inner),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (c, JoinKind::LeftOuter),
                JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (c, JoinKind::RightOuter),
                JoinOperator::FullOuter(c) => (c, JoinKind::FullOuter),
                JoinOperator::CrossJoin(_) => {
                    return Err(unsupported(span, "CROSS JOIN"));
                }
                _ => {
                    return Err(unsupported(
                        span,
                        "this kind of JOIN (interval joins are [INNER], LEFT, RIGHT or FULL [OUTER] JOIN … ON)",
                    ));
                }
            };
            let on = match c {
                JoinConstraint::On(e) => Some(e),
                JoinConstraint::Using(_) | JoinConstraint::UsingAlias(..) => {
                    return Err(unsupported(span, "JOIN … USING (write the equality in ON)"));
                }
                JoinConstraint::Natural => {
                    return Err(unsupported(span, "NATURAL JOIN"));
                }
                JoinConstraint::None if kind != JoinKind::Inner => {
                    return Err(SqlError::span(
                        span,
                        ErrorCode::SyntaxError,
                        format!("{} JOIN needs an ON condition", kind.name().to_uppercase()),
                    ));
                }
                JoinConstraint::None => None,
            };
            Ok((
                side(&a.relation, tables)?,
                side(&j.relation, tables)?,
                on,
                span,
                kind,
            ))
        }
        [a, ..] => Err(too_many(
            a.joins
                .get(1)
                .map(|j| j.relation.span())
                .or_else(|| select.from.get(2).map(|f| f.relation.span()))
                .unwrap_or(select.select_token.0.span),
        )),
        [] => Err(unsupported(
            select.select_token.0.span,
            "a SELECT without FROM",
        )),
    }
}

fn ast_conjuncts<'a>(e: &'a AstExpr, out: &mut Vec<&'a AstExpr>) {
    match e {
        AstExpr::BinaryOp {
            left,
            op: ast::BinaryOperator::And,
            right,
        } => {
            ast_conjuncts(left, out);
            ast_conjuncts(right, out);
        }
        AstExpr::Nested(x) => ast_conjuncts(x, out),
        other => out.push(other),
    }
}

fn split_and(e: Expr, out: &mut Vec<Expr>) {
    match e {
        Expr::Binary {
            op: BinaryOp::And,
            left,
            right,
            ..
        } => {
            split_and(*left, out);
            split_and(*right, out);
        }
        other => out.push(other),
    }
}

/// Which inputs an expression reads: (left, right).
fn sides(e: &Expr, n_left: usize) -> (bool, bool) {
    let seen = RefCell::new((false, false));
    map(e.clone(), &|x| {
        if let Some(i) = x.as_column() {
            let mut s = seen.borrow_mut();
            if i < n_left {
                s.0 = true;
            } else {
                s.1 = true;
            }
        }
        x
    });
    seen.into_inner()
}

/// `column` or `column ± INTERVAL`, as (column, offset in ms).
fn time_term(e: &Expr) -> Option<(usize, i64)> {
    match e {
        Expr::Column { index, ty, .. } if is_timestamp(ty) => Some((*index, 0)),
        Expr::Cast { expr, ty, .. } if is_timestamp(ty) => time_term(expr),
        Expr::Binary {
            op: op @ (BinaryOp::Plus | BinaryOp::Minus),
            left,
            right,
            ..
        } => {
            let (c, off) = time_term(left)?;
            let Expr::Literal(Literal::Interval(ms)) = right.as_ref() else {
                return None;
            };
            Some((
                c,
                if *op == BinaryOp::Plus {
                    off + ms
                } else {
                    off - ms
                },
            ))
        }
        _ => None,
    }
}

/// Bounds on `left.t - right.t`, inclusive.
#[derive(Default)]
struct Bounds {
    lower: Option<i64>,
    upper: Option<i64>,
}

impl Bounds {
    /// Takes `c` as a bound if it is `left.t ± x  op  right.t ± y` (either way round).
    fn take(&mut self, c: &Expr, lt: usize, rt: usize) -> bool {
        let Expr::Binary {
            op, left, right, ..
        } = c
        else {
            return false;
        };
        let (Some((a, ao)), Some((b, bo))) = (time_term(left), time_term(right)) else {
            return false;
        };
        // Normalise to `left.t - right.t  op  k`.
        let (op, k) = if a == lt && b == rt {
            (*op, bo - ao)
        } else if a == rt && b == lt {
            let flipped = match op {
                BinaryOp::Lt => BinaryOp::Gt,
                BinaryOp::LtEq => BinaryOp::GtEq,
                BinaryOp::Gt => BinaryOp::Lt,
                BinaryOp::GtEq => BinaryOp::LtEq,
                other => *other,
            };
            (flipped, ao - bo)
        } else {
            return false;
        };
        let lower = |b: &mut Self, v: i64| b.lower = Some(b.lower.map_or(v, |x| x.max(v)));
        let upper = |b: &mut Self, v: i64| b.upper = Some(b.upper.map_or(v, |x| x.min(v)));
        match op {
            BinaryOp::GtEq => lower(self, k),
            BinaryOp::Gt => lower(self, k + 1),
            BinaryOp::LtEq => upper(self, k),
            BinaryOp::Lt => upper(self, k - 1),
            BinaryOp::Eq => {
                lower(self, k);
                upper(self, k);
            }
            _ => return false,
        }
        true
    }
}

/// Key expressions of one input as columns: plain columns of the key type
/// stay as they are; otherwise a projection appends the (cast) keys.
fn key_columns(
    keys: &[Expr],
    columns: &[(String, DataType)],
    prefix: &str,
    stages: &mut Vec<Stage>,
) -> (Vec<usize>, Vec<(String, DataType)>) {
    if keys.iter().all(|k| k.as_column().is_some()) {
        return (
            keys.iter().filter_map(Expr::as_column).collect(),
            Vec::new(),
        );
    }
    let mut exprs: Vec<Expr> = columns
        .iter()
        .enumerate()
        .map(|(i, (n, t))| Expr::column(i, n, t))
        .collect();
    let mut names: Vec<String> = columns.iter().map(|(n, _)| n.clone()).collect();
    let mut extra = Vec::new();
    for (i, k) in keys.iter().enumerate() {
        let name = format!("${prefix}key{i}");
        extra.push((name.clone(), k.data_type()));
        names.push(name);
        exprs.push(k.clone());
    }
    stages.push(Stage::Project { exprs, names });
    ((columns.len()..columns.len() + keys.len()).collect(), extra)
}

pub(crate) fn plan_join_insert(
    ins: &Insert,
    sink: &TableDef,
    select: &ast::Select,
    tables: &BTreeMap<String, TableDef>,
) -> SqlResult<Pipeline> {
    let (left, right, on, join_span, kind) = inputs(select, tables)?;
    if left.qualifier.eq_ignore_ascii_case(&right.qualifier) {
        return Err(SqlError::span(
            right.span,
            ErrorCode::Duplicate,
            format!(
                "both inputs of the join are called '{}'; give them different aliases",
                left.qualifier
            ),
        ));
    }
    let qualify = |s: &Side<'_>| -> Vec<(String, DataType)> {
        s.table
            .columns()
            .into_iter()
            .map(|(n, t)| (format!("{}.{n}", s.qualifier), t))
            .collect()
    };
    let (lcols, rcols) = (qualify(&left), qualify(&right));
    let nl = lcols.len();
    let mut scope = Scope::new(lcols.iter().chain(&rcols).cloned().collect());
    scope.qualified = true;
    let (lt, rt) = (left.rowtime, nl + right.rowtime);

    // Sort the conjuncts of ON and WHERE (all the same for an inner join; for
    // an outer join WHERE filters the joined and padded rows).
    let bind_bool = |c: &AstExpr, out: &mut Vec<(Expr, Span)>| -> SqlResult<()> {
        let mut parts = Vec::new();
        ast_conjuncts(c, &mut parts);
        for p in parts {
            let b = bind(p, &scope)?;
            if b.data_type() != DataType::Boolean {
                return Err(SqlError::span(
                    p.span(),
                    ErrorCode::TypeMismatch,
                    format!(
                        "a join condition must be BOOLEAN, found {}",
                        sql_name(&b.data_type())
                    ),
                ));
            }
            let mut split = Vec::new();
            split_and(b, &mut split);
            out.extend(split.into_iter().map(|x| (x, p.span())));
        }
        Ok(())
    };
    let mut conjuncts: Vec<(Expr, Span)> = Vec::new();
    let mut residual: Vec<Expr> = Vec::new();
    if let Some(on) = on {
        bind_bool(on, &mut conjuncts)?;
    }
    if let Some(w) = &select.selection {
        if kind == JoinKind::Inner {
            bind_bool(w, &mut conjuncts)?;
        } else {
            let mut after = Vec::new();
            bind_bool(w, &mut after)?;
            residual.extend(after.into_iter().map(|(e, _)| e));
        }
    }
    let mut bounds = Bounds::default();
    let mut lkeys: Vec<Expr> = Vec::new();
    let mut rkeys: Vec<Expr> = Vec::new();
    for (c, span) in conjuncts {
        if bounds.take(&c, lt, rt) {
            continue;
        }
        if let Expr::Binary {
            op: BinaryOp::Eq,
            left: a,
            right: b,
            ..
        } = &c
        {
            let (sa, sb) = (sides(a, nl), sides(b, nl));
            let pair = match (sa, sb) {
                ((true, false), (false, true)) => Some((a, b)),
                ((false, true), (true, false)) => Some((b, a)),
                _ => None,
            };
            if let Some((l, r)) = pair {
                // Equal values must hash alike on both sides: one type for both.
                let t = common_type(&l.data_type(), &r.data_type()).unwrap_or(l.data_type());
                lkeys.push(l.as_ref().clone().cast_to(&t));
                let shift = |x: Expr| match x {
                    Expr::Column { index, name, ty } => Expr::Column {
                        index: index - nl,
                        name,
                        ty,
                    },
                    other => other,
                };
                rkeys.push(map(r.as_ref().clone(), &shift).cast_to(&t));
                continue;
            }
        }
        if kind != JoinKind::Inner {
            return Err(unsupported(
                span,
                &format!(
                    "a condition other than key equalities and time bounds in the ON clause of a {} interval join (it would decide which rows are padded with NULLs); filter in WHERE or before the join",
                    kind.name().to_uppercase()
                ),
            ));
        }
        residual.push(c);
    }
    if lkeys.is_empty() {
        return Err(unsupported(
            join_span,
            &format!(
                "join without an equality predicate between its two inputs (an interval join needs one, e.g. {EXAMPLE})"
            ),
        ));
    }
    let (Some(lower), Some(upper)) = (bounds.lower, bounds.upper) else {
        return Err(unsupported(
            join_span,
            &format!(
                "regular join: the time attributes {}.{} and {}.{} must be bounded against each other on both sides to make an interval join, e.g. {EXAMPLE}",
                left.qualifier,
                left.table.columns()[left.rowtime].0,
                right.qualifier,
                right.table.columns()[right.rowtime].0,
            ),
        ));
    };
    if lower > upper {
        return Err(SqlError::span(
            join_span,
            ErrorCode::Unsupported,
            format!(
                "the join's time condition is empty: {}.t - {}.t must be between {lower} ms and {upper} ms",
                left.qualifier, right.qualifier
            ),
        ));
    }
    // HAVING and DISTINCT were rejected before the FROM was looked at.
    match &select.group_by {
        GroupByExpr::Expressions(v, m) if v.is_empty() && m.is_empty() => {}
        other => return Err(unsupported(other.span(), "GROUP BY over a join")),
    }

    // Left: source, keys, exchange, the join, the residual filter. Right: source, keys, exchange.
    let mut stages = source_stages(left.table);
    let (left_keys, lextra) = key_columns(&lkeys, &lcols, "l", &mut stages);
    let mut rstages = source_stages(right.table);
    let (right_keys, rextra) = key_columns(&rkeys, &rcols, "r", &mut rstages);
    stages.push(Stage::Exchange(Exchange::Hash {
        keys: left_keys.clone(),
    }));
    rstages.push(Stage::Exchange(Exchange::Hash {
        keys: right_keys.clone(),
    }));
    let right_columns: Vec<(String, DataType)> = rcols.iter().chain(&rextra).cloned().collect();
    stages.push(Stage::IntervalJoin {
        kind,
        left_keys,
        right_keys,
        left_time: left.rowtime,
        right_time: right.rowtime,
        lower_ms: lower,
        upper_ms: upper,
        right_columns: right_columns.clone(),
    });
    // The joined row is the left columns (with any appended keys), then the right ones.
    let shift = lextra.len();
    let post_cols: Vec<(String, DataType)> = lcols
        .iter()
        .chain(&lextra)
        .chain(&right_columns)
        .cloned()
        .collect();
    let mut post = Scope::new(post_cols);
    post.qualified = true;
    let rebase = |e: Expr| {
        map(e, &|x| match x {
            Expr::Column { index, name, ty } if index >= nl => Expr::Column {
                index: index + shift,
                name,
                ty,
            },
            other => other,
        })
    };
    if let Some(first) = residual.pop() {
        let predicate = residual
            .into_iter()
            .rev()
            .fold(rebase(first), |acc, c| Expr::Binary {
                op: BinaryOp::And,
                left: Box::new(rebase(c)),
                right: Box::new(acc),
                ty: DataType::Boolean,
            });
        stages.push(Stage::Filter { predicate });
    }

    let mut items: Vec<(Expr, Span)> = Vec::new();
    for it in &select.projection {
        match it {
            SelectItem::Wildcard(_) => {
                for (c, (n, t)) in post.columns.iter().enumerate() {
                    if !n.starts_with('$') {
                        items.push((Expr::column(c, n, t), it.span()));
                    }
                }
            }
            _ => {
                let (e, _) = item_expr(it)?;
                let mut calls = Vec::new();
                collect_calls(e, &mut calls);
                if let Some(f) = calls
                    .iter()
                    .find(|f| f.over.is_some() || is_aggregate_name(&function_name(f)))
                {
                    return Err(unsupported(
                        f.name.span(),
                        "aggregates and OVER over a join",
                    ));
                }
                items.push((bind(e, &post)?, e.span()));
            }
        }
    }
    let n_cols = post.columns.len();
    let mut p = finish_pipeline(ins, sink, left.table, stages, items, n_cols, false)?;
    p.right = Some(JoinInput {
        source: right.table.name.clone(),
        stages: rstages,
    });
    Ok(p)
}

//! Rewrites that make filters cheap: computed columns inlined into a
//! predicate (so it can run before they are computed), and
//! `CASE … THEN 'a' … END = 'b'` folded into the conditions that select `'b'`
//! (Flink's planner does the same, turning a string compare into int compares).

use arrow_schema::DataType;

use crate::catalog::TableDef;
use crate::expr::{BinaryOp, Expr, Func, Literal};

/// Replaces references to computed columns by their expressions (over the physical columns).
pub fn inline_computed(e: Expr, t: &TableDef) -> Expr {
    let n = t.physical.len();
    map(e, &|x| match x {
        Expr::Column { index, .. } if index >= n => t.computed[index - n].1.clone(),
        other => other,
    })
}

pub(crate) fn map(e: Expr, f: &dyn Fn(Expr) -> Expr) -> Expr {
    let b = |x: Box<Expr>| Box::new(map(*x, f));
    let e = match e {
        Expr::Binary {
            op,
            left,
            right,
            ty,
        } => Expr::Binary {
            op,
            left: b(left),
            right: b(right),
            ty,
        },
        Expr::Not(x) => Expr::Not(b(x)),
        Expr::Negate(x) => Expr::Negate(b(x)),
        Expr::IsNull { expr, negated } => Expr::IsNull {
            expr: b(expr),
            negated,
        },
        Expr::Like {
            expr,
            pattern,
            negated,
        } => Expr::Like {
            expr: b(expr),
            pattern,
            negated,
        },
        Expr::InList {
            expr,
            list,
            negated,
        } => Expr::InList {
            expr: b(expr),
            list: list.into_iter().map(|x| map(x, f)).collect(),
            negated,
        },
        Expr::Case {
            branches,
            otherwise,
            ty,
        } => Expr::Case {
            branches: branches
                .into_iter()
                .map(|(c, r)| (map(c, f), map(r, f)))
                .collect(),
            otherwise: otherwise.map(b),
            ty,
        },
        Expr::Cast { expr, ty, safe } => Expr::Cast {
            expr: b(expr),
            ty,
            safe,
        },
        Expr::Call { func, args, ty } => Expr::Call {
            func,
            args: args.into_iter().map(|x| map(x, f)).collect(),
            ty,
        },
        leaf => leaf,
    };
    f(e)
}

fn boolean(op: BinaryOp, l: Expr, r: Expr) -> Expr {
    Expr::Binary {
        op,
        left: Box::new(l),
        right: Box::new(r),
        ty: DataType::Boolean,
    }
}

/// `c IS TRUE`: CASE treats a NULL condition as false, and so must the folded form.
fn is_true(c: Expr) -> Expr {
    Expr::Call {
        func: Func::Coalesce,
        args: vec![c, Expr::Literal(Literal::Bool(false))],
        ty: DataType::Boolean,
    }
}

/// Folds `CASE WHEN c1 THEN l1 … ELSE ln END = lit` (all results literals) into
/// `(c1 AND l1 = lit) OR (NOT c1 AND c2 AND l2 = lit) …` with the constant parts evaluated.
pub fn simplify(e: Expr) -> Expr {
    map(e, &|x| match x {
        Expr::Binary {
            op: BinaryOp::Eq,
            left,
            right,
            ty,
        } => match (*left, *right) {
            (
                Expr::Case {
                    branches,
                    otherwise,
                    ..
                },
                Expr::Literal(lit),
            ) if branches.iter().all(|(_, r)| matches!(r, Expr::Literal(_)))
                && otherwise
                    .as_deref()
                    .map(|o| matches!(o, Expr::Literal(_)))
                    .unwrap_or(false)
                && lit != Literal::Null =>
            {
                let mut terms: Vec<Expr> = Vec::new();
                let mut earlier: Vec<Expr> = Vec::new();
                for (c, r) in &branches {
                    if *r == Expr::Literal(lit.clone()) {
                        let mut t = is_true(c.clone());
                        for p in &earlier {
                            t = boolean(BinaryOp::And, Expr::Not(Box::new(is_true(p.clone()))), t);
                        }
                        terms.push(t);
                    }
                    earlier.push(c.clone());
                }
                if otherwise.as_deref() == Some(&Expr::Literal(lit.clone())) {
                    let mut t = Expr::Literal(Literal::Bool(true));
                    for p in &earlier {
                        t = boolean(BinaryOp::And, t, Expr::Not(Box::new(is_true(p.clone()))));
                    }
                    terms.push(t);
                }
                terms
                    .into_iter()
                    .reduce(|a, b| boolean(BinaryOp::Or, a, b))
                    .unwrap_or(Expr::Literal(Literal::Bool(false)))
            }
            (l, r) => Expr::Binary {
                op: BinaryOp::Eq,
                left: Box::new(l),
                right: Box::new(r),
                ty,
            },
        },
        other => other,
    })
}

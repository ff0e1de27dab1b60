//! Typed scalar expressions bound to an input schema (the binder is in
//! `bind.rs`). Every node knows its Arrow type; implicit widening is made
//! explicit with `Cast` nodes so the runtime never guesses.

use arrow_schema::DataType;

pub use crate::bind::{bind, function_name, interval_ms, is_aggregate_name, sql_text};
pub use crate::functions::parse_timestamp_ms;
use crate::types::{self, sql_name};

#[derive(Debug, Clone, PartialEq)]
pub enum Literal {
    Null,
    Bool(bool),
    Int32(i32),
    Int64(i64),
    Float64(f64),
    Utf8(String),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    /// An interval, in milliseconds.
    Interval(i64),
}

impl Literal {
    pub fn data_type(&self) -> DataType {
        match self {
            Literal::Null => DataType::Null,
            Literal::Bool(_) => DataType::Boolean,
            Literal::Int32(_) => DataType::Int32,
            Literal::Int64(_) => DataType::Int64,
            Literal::Float64(_) => DataType::Float64,
            Literal::Utf8(_) => DataType::Utf8,
            Literal::Timestamp(_) => types::timestamp(),
            Literal::Interval(_) => types::interval(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Plus,
    Minus,
    Multiply,
    Divide,
    Modulo,
    Eq,
    NotEq,
    Lt,
    LtEq,
    Gt,
    GtEq,
    And,
    Or,
}

impl BinaryOp {
    pub fn symbol(self) -> &'static str {
        match self {
            BinaryOp::Plus => "+",
            BinaryOp::Minus => "-",
            BinaryOp::Multiply => "*",
            BinaryOp::Divide => "/",
            BinaryOp::Modulo => "%",
            BinaryOp::Eq => "=",
            BinaryOp::NotEq => "<>",
            BinaryOp::Lt => "<",
            BinaryOp::LtEq => "<=",
            BinaryOp::Gt => ">",
            BinaryOp::GtEq => ">=",
            BinaryOp::And => "AND",
            BinaryOp::Or => "OR",
        }
    }

    pub(crate) fn is_comparison(self) -> bool {
        matches!(
            self,
            BinaryOp::Eq
                | BinaryOp::NotEq
                | BinaryOp::Lt
                | BinaryOp::LtEq
                | BinaryOp::Gt
                | BinaryOp::GtEq
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Upper,
    Lower,
    Concat,
    /// SUBSTRING(s, start [, len]) with 1-based start, as Flink.
    Substring,
    Trim,
    CharLength,
    RegexpExtract,
    Coalesce,
    /// TO_TIMESTAMP_LTZ(epoch, precision 0 = seconds | 3 = milliseconds)
    ToTimestampLtz,
    DateFormat,
    CurrentWatermark,
    Proctime,
    Abs,
    /// JSON_VALUE(json, path, on_empty, empty_default, on_error, error_default):
    /// `on_*` are the literals 'NULL', 'ERROR' or 'DEFAULT'; the defaults are
    /// already of the result type.
    JsonValue,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Column {
        index: usize,
        name: String,
        ty: DataType,
    },
    Literal(Literal),
    Binary {
        op: BinaryOp,
        left: Box<Expr>,
        right: Box<Expr>,
        ty: DataType,
    },
    Not(Box<Expr>),
    Negate(Box<Expr>),
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Like {
        expr: Box<Expr>,
        pattern: String,
        negated: bool,
    },
    InList {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    Case {
        branches: Vec<(Expr, Expr)>,
        otherwise: Option<Box<Expr>>,
        ty: DataType,
    },
    Cast {
        expr: Box<Expr>,
        ty: DataType,
        safe: bool,
    },
    Call {
        func: Func,
        args: Vec<Expr>,
        ty: DataType,
    },
}

impl Expr {
    pub fn data_type(&self) -> DataType {
        match self {
            Expr::Column { ty, .. } => ty.clone(),
            Expr::Literal(l) => l.data_type(),
            Expr::Binary { ty, .. }
            | Expr::Case { ty, .. }
            | Expr::Cast { ty, .. }
            | Expr::Call { ty, .. } => ty.clone(),
            Expr::Not(_) | Expr::IsNull { .. } | Expr::Like { .. } | Expr::InList { .. } => {
                DataType::Boolean
            }
            Expr::Negate(e) => e.data_type(),
        }
    }

    pub fn column(index: usize, name: &str, ty: &DataType) -> Expr {
        Expr::Column {
            index,
            name: name.to_string(),
            ty: ty.clone(),
        }
    }

    /// Wraps in a CAST unless the type already matches.
    pub fn cast_to(self, ty: &DataType) -> Expr {
        if &self.data_type() == ty {
            self
        } else {
            Expr::Cast {
                expr: Box::new(self),
                ty: ty.clone(),
                safe: false,
            }
        }
    }

    pub fn as_column(&self) -> Option<usize> {
        match self {
            Expr::Column { index, .. } => Some(*index),
            _ => None,
        }
    }
}

impl std::fmt::Display for Expr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Expr::Column { name, index, .. } => write!(f, "{name}#{index}"),
            Expr::Literal(Literal::Utf8(s)) => write!(f, "'{s}'"),
            Expr::Literal(Literal::Interval(ms)) => write!(f, "INTERVAL {ms} ms"),
            Expr::Literal(l) => match l {
                Literal::Null => write!(f, "NULL"),
                Literal::Bool(b) => write!(f, "{b}"),
                Literal::Int32(v) => write!(f, "{v}"),
                Literal::Int64(v) => write!(f, "{v}"),
                Literal::Float64(v) => write!(f, "{v}"),
                Literal::Timestamp(v) => write!(f, "TIMESTAMP {v} ms"),
                Literal::Utf8(_) | Literal::Interval(_) => Ok(()),
            },
            Expr::Binary {
                op, left, right, ..
            } => write!(f, "({left} {} {right})", op.symbol()),
            Expr::Not(e) => write!(f, "NOT {e}"),
            Expr::Negate(e) => write!(f, "-{e}"),
            Expr::IsNull { expr, negated } => {
                write!(f, "{expr} IS {}NULL", if *negated { "NOT " } else { "" })
            }
            Expr::Like {
                expr,
                pattern,
                negated,
            } => {
                write!(
                    f,
                    "{expr} {}LIKE '{pattern}'",
                    if *negated { "NOT " } else { "" }
                )
            }
            Expr::InList {
                expr,
                list,
                negated,
            } => {
                write!(f, "{expr} {}IN (", if *negated { "NOT " } else { "" })?;
                for (i, e) in list.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{e}")?;
                }
                write!(f, ")")
            }
            Expr::Case {
                branches,
                otherwise,
                ..
            } => {
                write!(f, "CASE")?;
                for (c, r) in branches {
                    write!(f, " WHEN {c} THEN {r}")?;
                }
                if let Some(o) = otherwise {
                    write!(f, " ELSE {o}")?;
                }
                write!(f, " END")
            }
            Expr::Cast { expr, ty, .. } => write!(f, "CAST({expr} AS {})", sql_name(ty)),
            Expr::Call {
                func: Func::JsonValue,
                args,
                ty,
            } if args.len() == 6 => {
                write!(
                    f,
                    "JSON_VALUE({}, {} RETURNING {}",
                    args[0],
                    args[1],
                    sql_name(ty)
                )?;
                for (mode, default, target) in
                    [(&args[2], &args[3], "EMPTY"), (&args[4], &args[5], "ERROR")]
                {
                    match mode {
                        Expr::Literal(Literal::Utf8(m)) if m == "DEFAULT" => {
                            write!(f, " DEFAULT {default} ON {target}")?
                        }
                        Expr::Literal(Literal::Utf8(m)) => write!(f, " {m} ON {target}")?,
                        other => write!(f, " {other} ON {target}")?,
                    }
                }
                write!(f, ")")
            }
            Expr::Call { func, args, .. } => {
                write!(f, "{}(", format!("{func:?}").to_uppercase())?;
                for (i, e) in args.iter().enumerate() {
                    if i > 0 {
                        write!(f, ", ")?;
                    }
                    write!(f, "{e}")?;
                }
                write!(f, ")")
            }
        }
    }
}

/// The columns an expression can see, plus replacements for whole
/// sub-expressions (aggregates and grouping keys after an aggregation),
/// matched on their SQL text.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    pub columns: Vec<(String, DataType)>,
    pub replacements: Vec<(String, Expr)>,
    /// Columns are named `alias.column` (the scope of a join): a qualified
    /// reference must match its qualifier, an unqualified one must be unambiguous.
    pub qualified: bool,
}

impl Scope {
    pub fn new(columns: Vec<(String, DataType)>) -> Self {
        Scope {
            columns,
            replacements: Vec::new(),
            qualified: false,
        }
    }

    pub fn find(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|(n, _)| n.eq_ignore_ascii_case(name))
    }

    pub(crate) fn is_qualified(&self) -> bool {
        self.qualified
    }

    pub(crate) fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

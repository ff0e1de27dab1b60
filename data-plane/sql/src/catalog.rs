//! Tables declared by `CREATE TABLE`, validated: column types, computed columns
//! bound over the physical ones, the watermark, the primary key and the options.

use std::collections::BTreeMap;

use arrow_schema::DataType;
use serde::Serialize;

use crate::error::{ErrorCode, SqlError, SqlResult};
use crate::expr::{Expr, Func, Scope, bind};
use crate::options;
use crate::parse::{CreateTable, TableElement};
use crate::types::{is_timestamp, sql_name};

#[derive(Debug, Clone, Serialize)]
pub struct Column {
    pub name: String,
    #[serde(serialize_with = "ser_type")]
    pub ty: DataType,
}

fn ser_type<S: serde::Serializer>(t: &DataType, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&sql_name(t))
}

#[derive(Debug, Clone)]
pub struct WatermarkDef {
    /// Index of the rowtime column in the table's full column list.
    pub column: usize,
    /// Bound over the full column list; its value is the watermark candidate of a row.
    pub expr: Expr,
}

#[derive(Debug, Clone)]
pub struct TableDef {
    pub name: String,
    pub connector: String,
    pub options: BTreeMap<String, String>,
    /// Columns the connector reads or writes, in declaration order.
    pub physical: Vec<Column>,
    /// Computed columns, appended after the physical ones; bound over the physical columns.
    pub computed: Vec<(Column, Expr)>,
    pub watermark: Option<WatermarkDef>,
    /// Index (full column list) of a `PROCTIME()` column.
    pub proctime: Option<usize>,
    /// Indexes into `physical`.
    pub primary_key: Vec<usize>,
}

impl TableDef {
    /// Physical then computed columns: the schema a query sees.
    pub fn columns(&self) -> Vec<(String, DataType)> {
        self.physical
            .iter()
            .map(|c| (c.name.clone(), c.ty.clone()))
            .chain(
                self.computed
                    .iter()
                    .map(|(c, _)| (c.name.clone(), c.ty.clone())),
            )
            .collect()
    }

    pub fn option(&self, key: &str) -> Option<&str> {
        self.options.get(key).map(String::as_str)
    }
}

pub fn build_table(ct: &CreateTable) -> SqlResult<TableDef> {
    let mut physical: Vec<Column> = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    let mut dup = |name: &str, span| -> SqlResult<()> {
        if seen.iter().any(|s| s.eq_ignore_ascii_case(name)) {
            return Err(SqlError::span(
                span,
                ErrorCode::Duplicate,
                format!("column '{name}' is declared twice in table '{}'", ct.name),
            ));
        }
        seen.push(name.to_string());
        Ok(())
    };
    for el in &ct.elements {
        match el {
            TableElement::Physical { name, ty, span } => {
                dup(name, *span)?;
                physical.push(Column {
                    name: name.clone(),
                    ty: ty.clone(),
                });
            }
            TableElement::Computed { name, span, .. } => dup(name, *span)?,
            _ => {}
        }
    }
    let phys_scope = Scope::new(
        physical
            .iter()
            .map(|c| (c.name.clone(), c.ty.clone()))
            .collect(),
    );
    let mut computed = Vec::new();
    let mut proctime = None;
    for el in &ct.elements {
        if let TableElement::Computed { name, expr, .. } = el {
            let bound = bind(expr, &phys_scope)?;
            if matches!(
                bound,
                Expr::Call {
                    func: Func::Proctime,
                    ..
                }
            ) {
                proctime = Some(physical.len() + computed.len());
            }
            computed.push((
                Column {
                    name: name.clone(),
                    ty: bound.data_type(),
                },
                bound,
            ));
        }
    }
    let mut full = phys_scope.clone();
    for (c, _) in &computed {
        full.columns.push((c.name.clone(), c.ty.clone()));
    }
    let mut watermark = None;
    let mut primary_key = Vec::new();
    for el in &ct.elements {
        match el {
            TableElement::Watermark { column, expr, span } => {
                if watermark.is_some() {
                    return Err(SqlError::span(
                        *span,
                        ErrorCode::Duplicate,
                        "a table has at most one WATERMARK",
                    ));
                }
                let idx = full.find(column).ok_or_else(|| {
                    SqlError::span(
                        *span,
                        ErrorCode::UnknownColumn,
                        format!("WATERMARK FOR unknown column '{column}'"),
                    )
                })?;
                if !is_timestamp(&full.columns[idx].1) {
                    return Err(SqlError::span(
                        *span,
                        ErrorCode::TypeMismatch,
                        format!(
                            "WATERMARK FOR '{column}': the rowtime column must be TIMESTAMP(3) or TIMESTAMP_LTZ(3), found {}",
                            sql_name(&full.columns[idx].1)
                        ),
                    ));
                }
                let bound = bind(expr, &full)?;
                if !is_timestamp(&bound.data_type()) {
                    return Err(SqlError::span(
                        *span,
                        ErrorCode::TypeMismatch,
                        format!(
                            "the WATERMARK expression must be a timestamp, found {}",
                            sql_name(&bound.data_type())
                        ),
                    ));
                }
                let bound = bound.cast_to(&full.columns[idx].1);
                watermark = Some(WatermarkDef {
                    column: idx,
                    expr: bound,
                });
            }
            TableElement::PrimaryKey { columns, span } => {
                if !primary_key.is_empty() {
                    return Err(SqlError::span(
                        *span,
                        ErrorCode::Duplicate,
                        "a table has at most one PRIMARY KEY",
                    ));
                }
                for (c, cspan) in columns {
                    let i = physical
                        .iter()
                        .position(|p| p.name.eq_ignore_ascii_case(c))
                        .ok_or_else(|| {
                            SqlError::span(
                                *cspan,
                                ErrorCode::UnknownColumn,
                                format!("PRIMARY KEY names unknown physical column '{c}'"),
                            )
                        })?;
                    primary_key.push(i);
                }
            }
            _ => {}
        }
    }
    let names: Vec<String> = physical.iter().map(|c| c.name.clone()).collect();
    let opts = options::validate(&ct.name, ct.name_span, &ct.options, &names)?;
    let connector = opts.get("connector").cloned().unwrap_or_default();
    if connector == "upsert-kafka" && primary_key.is_empty() {
        return Err(SqlError::span(
            ct.name_span,
            ErrorCode::BadOption,
            format!(
                "table '{}' uses connector 'upsert-kafka', which needs a PRIMARY KEY … NOT ENFORCED",
                ct.name
            ),
        ));
    }
    Ok(TableDef {
        name: ct.name.clone(),
        connector,
        options: opts,
        physical,
        computed,
        watermark,
        proctime,
        primary_key,
    })
}

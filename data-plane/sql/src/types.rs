//! SQL types of the supported subset and their Arrow representation.

use arrow_schema::{DataType, TimeUnit};

/// Timestamps are kept in milliseconds like Flink's default `TIMESTAMP(3)`.
pub const TS_UNIT: TimeUnit = TimeUnit::Millisecond;

pub fn timestamp() -> DataType {
    DataType::Timestamp(TS_UNIT, None)
}

pub fn timestamp_ltz() -> DataType {
    DataType::Timestamp(TS_UNIT, Some("+00:00".into()))
}

pub fn interval() -> DataType {
    DataType::Duration(TS_UNIT)
}

pub fn is_timestamp(t: &DataType) -> bool {
    matches!(t, DataType::Timestamp(_, _))
}

pub fn is_numeric(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
    )
}

pub fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8)
}

fn numeric_rank(t: &DataType) -> u8 {
    match t {
        DataType::Int8 => 1,
        DataType::Int16 => 2,
        DataType::Int32 => 3,
        DataType::Int64 => 4,
        DataType::Float32 => 5,
        DataType::Float64 => 6,
        _ => 0,
    }
}

/// The type both operands of an arithmetic or comparison are widened to.
pub fn common_type(a: &DataType, b: &DataType) -> Option<DataType> {
    if a == b {
        return Some(a.clone());
    }
    if *a == DataType::Null {
        return Some(b.clone());
    }
    if *b == DataType::Null {
        return Some(a.clone());
    }
    if is_numeric(a) && is_numeric(b) {
        return Some(if numeric_rank(a) >= numeric_rank(b) {
            a.clone()
        } else {
            b.clone()
        });
    }
    if is_timestamp(a) && is_timestamp(b) {
        return Some(a.clone());
    }
    None
}

/// Whether a value of `from` may be written into a column of `to` without an
/// explicit CAST (Flink's implicit widening rules, simplified).
pub fn assignable(from: &DataType, to: &DataType) -> bool {
    if from == to || *from == DataType::Null {
        return true;
    }
    if is_numeric(from) && is_numeric(to) {
        return numeric_rank(from) <= numeric_rank(to);
    }
    is_timestamp(from) && is_timestamp(to)
}

/// Flink's name of a type, for messages and `explain`.
pub fn sql_name(t: &DataType) -> String {
    match t {
        DataType::Null => "NULL".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 => "TINYINT".into(),
        DataType::Int16 => "SMALLINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 => "STRING".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP(3)".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP_LTZ(3)".into(),
        DataType::Duration(_) => "INTERVAL".into(),
        DataType::Date32 => "DATE".into(),
        other => format!("{other}"),
    }
}

//! `'connector' = 'print'` (rows to stdout or stderr as Flink prints them:
//! `[identifier> ][subtask> ]+I[v1, v2]`) and `'connector' = 'blackhole'`.

use std::io::Write;

use arrow_array::cast::AsArray;
use arrow_array::types::TimestampMillisecondType;
use arrow_array::{Array, RecordBatch};
use arrow_schema::DataType;
use sluice_runtime::connector::{SinkContext, SinkWriter};
use sluice_runtime::eval::format_timestamp;
use sluice_runtime::{Result, RowKind, RuntimeError};

pub struct PrintSink {
    prefix: String,
    stderr: bool,
    columns: usize,
    updating: bool,
}

pub fn create_print(ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
    let id = ctx
        .table
        .option("print-identifier")
        .map(|s| format!("{s}> "))
        .unwrap_or_default();
    let sub = if ctx.parallelism > 1 {
        format!("{}> ", ctx.subtask + 1)
    } else {
        String::new()
    };
    Ok(Box::new(PrintSink {
        prefix: format!("{id}{sub}"),
        stderr: ctx
            .table
            .option("standard-error")
            .map(|v| v.eq_ignore_ascii_case("true"))
            .unwrap_or(false),
        columns: ctx.table.physical.len(),
        updating: ctx.updating,
    }))
}

/// Flink's text of a row: `+I[a, b]`.
pub fn format_row(
    batch: &RecordBatch,
    row: usize,
    columns: usize,
    updating: bool,
) -> Result<String> {
    let kind = if updating {
        let k = batch
            .column(batch.num_columns() - 1)
            .as_primitive::<arrow_array::types::Int8Type>()
            .value(row);
        RowKind::from_i8(k)
    } else {
        RowKind::Insert
    };
    let mut s = String::from(kind.short());
    s.push('[');
    for c in 0..columns {
        if c > 0 {
            s.push_str(", ");
        }
        let a = batch.column(c);
        if a.is_null(row) {
            s.push_str("NULL");
        } else if let DataType::Timestamp(_, _) = a.data_type() {
            s.push_str(&format_timestamp(
                a.as_primitive::<TimestampMillisecondType>().value(row),
                "yyyy-MM-dd HH:mm:ss.SSS",
            ));
        } else {
            s.push_str(
                &arrow_cast::display::array_value_to_string(a, row)
                    .map_err(|e| RuntimeError::Plan(format!("print: {e}")))?,
            );
        }
    }
    s.push(']');
    Ok(s)
}

impl SinkWriter for PrintSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        let mut out = String::new();
        for r in 0..batch.num_rows() {
            out.push_str(&self.prefix);
            out.push_str(&format_row(batch, r, self.columns, self.updating)?);
            out.push('\n');
        }
        let res = if self.stderr {
            std::io::stderr().lock().write_all(out.as_bytes())
        } else {
            std::io::stdout().lock().write_all(out.as_bytes())
        };
        res.map_err(|e| RuntimeError::Io {
            context: "print sink".into(),
            source: e,
        })
    }

    fn flush(&mut self) -> Result<()> {
        std::io::stdout().flush().map_err(|e| RuntimeError::Io {
            context: "print sink".into(),
            source: e,
        })
    }

    fn finish(&mut self) -> Result<()> {
        self.flush()
    }
}

/// Discards rows (the executor still counts them).
pub struct BlackholeSink;

impl SinkWriter for BlackholeSink {
    fn write(&mut self, _batch: &RecordBatch) -> Result<()> {
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

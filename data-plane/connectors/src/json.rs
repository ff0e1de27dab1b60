//! The `json` format: JSON lines to Arrow (arrow-json's decoder, schema-driven)
//! and Arrow to JSON lines (a direct writer over the columns, in Flink's
//! default `SQL` timestamp style `yyyy-MM-dd HH:mm:ss.SSS`).

use std::io::Write;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMillisecondType,
};
use arrow_array::{Array, RecordBatch};
use arrow_json::reader::{Decoder, ReaderBuilder};
use arrow_schema::{DataType, SchemaRef};
use sluice_runtime::eval::format_timestamp;
use sluice_runtime::{Result, RuntimeError};

pub struct JsonDecoder {
    decoder: Decoder,
    schema: SchemaRef,
    ignore_parse_errors: bool,
    what: String,
}

impl JsonDecoder {
    /// `what` names the table for errors.
    pub fn new(
        schema: SchemaRef,
        batch_size: usize,
        ignore_parse_errors: bool,
        what: &str,
    ) -> Result<Self> {
        let decoder = ReaderBuilder::new(schema.clone())
            .with_batch_size(batch_size)
            .build_decoder()
            .map_err(|e| RuntimeError::Plan(format!("{what}: JSON decoder: {e}")))?;
        Ok(JsonDecoder {
            decoder,
            schema,
            ignore_parse_errors,
            what: what.to_string(),
        })
    }

    /// Decodes whole lines (the buffer must end at a line boundary).
    pub fn decode_lines(&mut self, buf: &[u8], out: &mut Vec<RecordBatch>) -> Result<()> {
        match self.decode_all(buf, out) {
            Ok(()) => Ok(()),
            Err(e) if self.ignore_parse_errors => {
                // Start over line by line, skipping the bad ones (Flink's json.ignore-parse-errors).
                self.decoder = ReaderBuilder::new(self.schema.clone())
                    .build_decoder()
                    .map_err(|e| RuntimeError::Plan(format!("{}: JSON decoder: {e}", self.what)))?;
                let _ = e;
                for line in buf.split(|b| *b == b'\n') {
                    if line.iter().all(|b| b.is_ascii_whitespace()) {
                        continue;
                    }
                    let ok =
                        self.decoder.decode(line).is_ok() && self.decoder.decode(b"\n").is_ok();
                    if !ok {
                        self.decoder = ReaderBuilder::new(self.schema.clone())
                            .build_decoder()
                            .map_err(|e| {
                                RuntimeError::Plan(format!("{}: JSON decoder: {e}", self.what))
                            })?;
                    }
                    match self.decoder.flush() {
                        Ok(Some(b)) => out.push(b),
                        Ok(None) => {}
                        Err(_) => {}
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    fn decode_all(&mut self, mut buf: &[u8], out: &mut Vec<RecordBatch>) -> Result<()> {
        while !buf.is_empty() {
            let n = self.decoder.decode(buf).map_err(|e| self.err(e))?;
            buf = &buf[n..];
            if n == 0 || !buf.is_empty() {
                if let Some(b) = self.decoder.flush().map_err(|e| self.err(e))? {
                    out.push(b);
                }
                if n == 0 {
                    break;
                }
            }
        }
        if let Some(b) = self.decoder.flush().map_err(|e| self.err(e))? {
            out.push(b);
        }
        Ok(())
    }

    fn err(&self, e: arrow_schema::ArrowError) -> RuntimeError {
        RuntimeError::Plan(format!("{}: bad JSON input: {e}", self.what))
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                let _ = write!(out, "\\u{b:04x}");
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

/// Writes one JSON object per row of `batch` (its first `columns` columns),
/// pushing the end offset of each row into `ends`.
pub fn encode_rows(
    batch: &RecordBatch,
    columns: usize,
    out: &mut Vec<u8>,
    ends: &mut Vec<usize>,
    newline: bool,
) -> Result<()> {
    let schema = batch.schema();
    let names: Vec<Vec<u8>> = schema
        .fields()
        .iter()
        .take(columns)
        .map(|f| {
            let mut v = Vec::new();
            write_str(&mut v, f.name());
            v.push(b':');
            v
        })
        .collect();
    let mut itoa_buf = itoa::Buffer::new();
    for r in 0..batch.num_rows() {
        out.push(b'{');
        for (c, name) in names.iter().enumerate() {
            if c > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name);
            let a = batch.column(c);
            if a.is_null(r) {
                out.extend_from_slice(b"null");
                continue;
            }
            match a.data_type() {
                DataType::Utf8 => write_str(out, a.as_string::<i32>().value(r)),
                DataType::Int8 => out.extend_from_slice(
                    itoa_buf
                        .format(a.as_primitive::<Int8Type>().value(r))
                        .as_bytes(),
                ),
                DataType::Int16 => out.extend_from_slice(
                    itoa_buf
                        .format(a.as_primitive::<Int16Type>().value(r))
                        .as_bytes(),
                ),
                DataType::Int32 => out.extend_from_slice(
                    itoa_buf
                        .format(a.as_primitive::<Int32Type>().value(r))
                        .as_bytes(),
                ),
                DataType::Int64 => out.extend_from_slice(
                    itoa_buf
                        .format(a.as_primitive::<Int64Type>().value(r))
                        .as_bytes(),
                ),
                DataType::Float32 => {
                    let _ = write!(out, "{:?}", a.as_primitive::<Float32Type>().value(r));
                }
                DataType::Float64 => {
                    let _ = write!(out, "{:?}", a.as_primitive::<Float64Type>().value(r));
                }
                DataType::Boolean => out.extend_from_slice(if a.as_boolean().value(r) {
                    b"true"
                } else {
                    b"false"
                }),
                DataType::Timestamp(_, tz) => {
                    let ms = a.as_primitive::<TimestampMillisecondType>().value(r);
                    let mut s = format_timestamp(ms, "yyyy-MM-dd HH:mm:ss.SSS");
                    if tz.is_some() {
                        s.push('Z');
                    }
                    write_str(out, &s);
                }
                other => {
                    let s = arrow_cast::display::array_value_to_string(a, r).map_err(|e| {
                        RuntimeError::Plan(format!("JSON encoding of {other}: {e}"))
                    })?;
                    write_str(out, &s);
                }
            }
        }
        out.push(b'}');
        if newline {
            out.push(b'\n');
        }
        ends.push(out.len());
    }
    Ok(())
}

//! The `json` format: JSON lines to Arrow (arrow-json's decoder, schema-driven)
//! and Arrow to JSON lines (a direct writer over the columns, in Flink's
//! default `SQL` timestamp style `yyyy-MM-dd HH:mm:ss.SSS`).

use std::io::Write;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMillisecondType,
};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, Int64Builder, StringBuilder};
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_json::reader::{Decoder, ReaderBuilder};
use arrow_schema::{DataType, SchemaRef};
use sluice_runtime::eval::format_timestamp;
use sluice_runtime::{Result, RuntimeError};

pub struct JsonDecoder {
    decoder: Decoder,
    schema: SchemaRef,
    ignore_parse_errors: bool,
    what: String,
    batch_size: usize,
    /// The flat-object decoder, while it keeps succeeding (see [`FlatDecoder`]).
    flat: Option<FlatDecoder>,
    flat_attempts: u64,
    flat_fallbacks: u64,
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
            flat: FlatDecoder::new(&schema),
            schema,
            ignore_parse_errors,
            what: what.to_string(),
            batch_size: batch_size.max(1),
            flat_attempts: 0,
            flat_fallbacks: 0,
        })
    }

    /// Decodes whole lines (the buffer must end at a line boundary).
    pub fn decode_lines(&mut self, buf: &[u8], out: &mut Vec<RecordBatch>) -> Result<()> {
        if let Some(flat) = self.flat.as_mut() {
            self.flat_attempts += 1;
            let before = out.len();
            if flat
                .decode(buf, self.batch_size, &self.schema, out)
                .is_some()
            {
                return Ok(());
            }
            // Something the flat decoder does not take (or bad input): arrow-json decides, on
            // the whole buffer, so results and errors are arrow-json's.
            out.truncate(before);
            self.flat_fallbacks += 1;
            if self.flat_fallbacks > self.flat_attempts / 4 + 4 {
                self.flat = None;
            }
        }
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

/// A decoder for the common shape of JSON lines — flat objects of strings, integers, booleans and
/// nulls — that writes straight into column builders, several times faster than arrow-json's tape
/// decoder (which was most of the time of a filter/project job over JSON). It only accepts what it
/// decodes exactly as arrow-json would, and gives up (`None`) on anything else: nested values,
/// floats, strings in number columns or numbers in string columns, duplicate or non-nullable
/// missing fields, invalid UTF-8, malformed input. The caller then decodes the same buffer with
/// arrow-json, so what is produced, and every error, is arrow-json's.
struct FlatDecoder {
    names: Vec<Vec<u8>>,
    nullable: Vec<bool>,
    cols: Vec<FlatCol>,
    /// Unescaped string bytes, reused.
    text: String,
    /// Field index of the k-th key of the previous object: lines usually repeat the key order,
    /// so a key is matched with one comparison.
    order: Vec<usize>,
}

enum FlatCol {
    Utf8(StringBuilder),
    Int(IntKind, Int64Builder),
    Bool(BooleanBuilder),
}

#[derive(Clone, Copy)]
enum IntKind {
    I8,
    I16,
    I32,
    I64,
}

impl FlatDecoder {
    fn new(schema: &SchemaRef) -> Option<FlatDecoder> {
        let fields = schema.fields();
        if fields.is_empty() || fields.len() > 64 {
            return None;
        }
        let mut cols = Vec::with_capacity(fields.len());
        for f in fields {
            cols.push(match f.data_type() {
                DataType::Utf8 => FlatCol::Utf8(StringBuilder::new()),
                DataType::Int8 => FlatCol::Int(IntKind::I8, Int64Builder::new()),
                DataType::Int16 => FlatCol::Int(IntKind::I16, Int64Builder::new()),
                DataType::Int32 => FlatCol::Int(IntKind::I32, Int64Builder::new()),
                DataType::Int64 => FlatCol::Int(IntKind::I64, Int64Builder::new()),
                DataType::Boolean => FlatCol::Bool(BooleanBuilder::new()),
                _ => return None,
            });
        }
        Some(FlatDecoder {
            names: fields
                .iter()
                .map(|f| f.name().as_bytes().to_vec())
                .collect(),
            nullable: fields.iter().map(|f| f.is_nullable()).collect(),
            cols,
            text: String::new(),
            order: Vec::new(),
        })
    }

    /// Appends batches of `batch_size` rows (the last one shorter) to `out`, as arrow-json's
    /// decoder cuts them; `None` leaves the builders empty and `out` possibly extended.
    fn decode(
        &mut self,
        buf: &[u8],
        batch_size: usize,
        schema: &SchemaRef,
        out: &mut Vec<RecordBatch>,
    ) -> Option<()> {
        let ok = std::str::from_utf8(buf)
            .ok()
            .and_then(|text| self.decode_text(text, batch_size, schema, out));
        if ok.is_none() {
            // Drop a partial batch.
            for c in &mut self.cols {
                c.finish();
            }
        }
        ok
    }

    fn decode_text(
        &mut self,
        text: &str,
        batch_size: usize,
        schema: &SchemaRef,
        out: &mut Vec<RecordBatch>,
    ) -> Option<()> {
        let b = text.as_bytes();
        let mut i = 0;
        let mut rows = 0;
        loop {
            i = skip_ws(b, i);
            if i == b.len() {
                break;
            }
            i = self.row(text, i)?;
            rows += 1;
            if rows == batch_size {
                out.push(self.flush(schema)?);
                rows = 0;
            }
        }
        if rows > 0 {
            out.push(self.flush(schema)?);
        }
        Some(())
    }

    fn flush(&mut self, schema: &SchemaRef) -> Option<RecordBatch> {
        let cols: Vec<ArrayRef> = self.cols.iter_mut().map(FlatCol::finish).collect();
        RecordBatch::try_new(schema.clone(), cols).ok()
    }

    /// One object starting at `b[i]`; returns the index after it.
    fn row(&mut self, text: &str, mut i: usize) -> Option<usize> {
        let b = text.as_bytes();
        if b[i] != b'{' {
            return None;
        }
        i = skip_ws(b, i + 1);
        let mut seen = 0u64;
        let mut k = 0;
        if b.get(i) == Some(&b'}') {
            i += 1;
        } else {
            loop {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                let (name_end, escaped) = string_end(b, i + 1)?;
                if escaped {
                    return None;
                }
                let name = &b[i + 1..name_end];
                i = skip_ws(b, name_end + 1);
                if b.get(i) != Some(&b':') {
                    return None;
                }
                i = skip_ws(b, i + 1);
                let hint = self
                    .order
                    .get(k)
                    .and_then(|&f| Some((f, self.names.get(f)?)));
                let field = match hint {
                    Some((f, n)) if bytes_eq(n, name) => Some(f),
                    _ => {
                        let found = self.names.iter().position(|n| bytes_eq(n, name));
                        // usize::MAX: a key the schema does not have.
                        self.order.resize(k, usize::MAX);
                        self.order.push(found.unwrap_or(usize::MAX));
                        found
                    }
                };
                k += 1;
                i = match field {
                    Some(f) => {
                        if seen & (1 << f) != 0 {
                            return None;
                        }
                        seen |= 1 << f;
                        self.value(f, text, i)?
                    }
                    None => skip_scalar(b, i)?,
                };
                i = skip_ws(b, i);
                match b.get(i) {
                    Some(b',') => i = skip_ws(b, i + 1),
                    Some(b'}') => {
                        i += 1;
                        break;
                    }
                    _ => return None,
                }
            }
        }
        for f in 0..self.cols.len() {
            if seen & (1 << f) == 0 {
                if !self.nullable[f] {
                    return None;
                }
                self.cols[f].append_null();
            }
        }
        Some(i)
    }

    /// The value of field `f` at `b[i]`; returns the index after it.
    fn value(&mut self, f: usize, text: &str, i: usize) -> Option<usize> {
        let b = text.as_bytes();
        if b[i..].starts_with(b"null") {
            if !self.nullable[f] {
                return None;
            }
            self.cols[f].append_null();
            return Some(i + 4);
        }
        match &mut self.cols[f] {
            FlatCol::Utf8(builder) => {
                if b[i] != b'"' {
                    return None;
                }
                let (end, escaped) = string_end(b, i + 1)?;
                if escaped {
                    unescape(&text[i + 1..end], &mut self.text)?;
                    builder.append_value(&self.text);
                } else {
                    builder.append_value(&text[i + 1..end]);
                }
                Some(end + 1)
            }
            FlatCol::Int(kind, builder) => {
                let (v, end) = parse_int(b, i)?;
                let fits = match kind {
                    IntKind::I8 => i8::try_from(v).is_ok(),
                    IntKind::I16 => i16::try_from(v).is_ok(),
                    IntKind::I32 => i32::try_from(v).is_ok(),
                    IntKind::I64 => true,
                };
                if !fits {
                    return None;
                }
                builder.append_value(v);
                Some(end)
            }
            FlatCol::Bool(builder) => {
                if b[i..].starts_with(b"true") {
                    builder.append_value(true);
                    Some(i + 4)
                } else if b[i..].starts_with(b"false") {
                    builder.append_value(false);
                    Some(i + 5)
                } else {
                    None
                }
            }
        }
    }
}

impl FlatCol {
    fn append_null(&mut self) {
        match self {
            FlatCol::Utf8(b) => b.append_null(),
            FlatCol::Int(_, b) => b.append_null(),
            FlatCol::Bool(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            FlatCol::Utf8(b) => Arc::new(b.finish()),
            FlatCol::Int(kind, b) => {
                let a = b.finish();
                // Values were range-checked when appended, so the narrowing casts cannot fail.
                match kind {
                    IntKind::I64 => Arc::new(a),
                    IntKind::I32 => Arc::new(a.unary::<_, Int32Type>(|v| v as i32)),
                    IntKind::I16 => Arc::new(a.unary::<_, Int16Type>(|v| v as i16)),
                    IntKind::I8 => Arc::new(a.unary::<_, Int8Type>(|v| v as i8)),
                }
            }
            FlatCol::Bool(b) => Arc::new(b.finish()),
        }
    }
}

/// Field names are short: a byte loop beats a call to `memcmp`.
#[inline]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline]
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && matches!(b[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// Index of the closing quote of a string whose contents start at `b[i]`, and whether it has
/// escapes; `None` for an unterminated string or a raw control character (invalid JSON).
#[inline]
fn string_end(b: &[u8], mut i: usize) -> Option<(usize, bool)> {
    let mut escaped = false;
    loop {
        match *b.get(i)? {
            b'"' => return Some((i, escaped)),
            b'\\' => {
                escaped = true;
                i += 2;
            }
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// JSON string contents to text; `None` for an invalid escape or a UTF-16 surrogate (arrow-json
/// decides those).
fn unescape(s: &str, out: &mut String) -> Option<()> {
    out.clear();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        out.push(match chars.next()? {
            '"' => '"',
            '\\' => '\\',
            '/' => '/',
            'b' => '\u{8}',
            'f' => '\u{c}',
            'n' => '\n',
            'r' => '\r',
            't' => '\t',
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                if hex.len() != 4 || !hex.bytes().all(|h| h.is_ascii_hexdigit()) {
                    return None;
                }
                char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
            }
            _ => return None,
        });
    }
    Some(())
}

/// A JSON integer (`-?(0|[1-9][0-9]*)`, at most 18 digits so it cannot overflow) ending at a
/// delimiter; fractions and exponents are left to arrow-json.
#[inline]
fn parse_int(b: &[u8], mut i: usize) -> Option<(i64, usize)> {
    let negative = b.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let start = i;
    let mut v: i64 = 0;
    while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        v = v * 10 + i64::from(d - b'0');
        i += 1;
        if i - start > 18 {
            return None;
        }
    }
    let digits = i - start;
    if digits == 0 || (digits > 1 && b[start] == b'0') {
        return None;
    }
    match b.get(i) {
        None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') => {}
        _ => return None,
    }
    Some((if negative { -v } else { v }, i))
}

/// Skips the value of a field the schema does not have: strings, integers and literals only.
fn skip_scalar(b: &[u8], i: usize) -> Option<usize> {
    match *b.get(i)? {
        b'"' => match string_end(b, i + 1)? {
            (end, false) => Some(end + 1),
            // arrow-json checks the escapes.
            (_, true) => None,
        },
        b'-' | b'0'..=b'9' => parse_int(b, i).map(|(_, end)| end),
        _ => [&b"null"[..], b"true", b"false"]
            .iter()
            .find(|lit| b[i..].starts_with(lit))
            .map(|lit| i + lit.len()),
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

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_schema::{Field, Schema};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("user_id", DataType::Utf8, true),
            Field::new("ts", DataType::Int64, true),
            Field::new("n", DataType::Int32, true),
            Field::new("ok", DataType::Boolean, true),
        ]))
    }

    fn arrow_json(schema: &SchemaRef, input: &[u8], batch: usize) -> Vec<RecordBatch> {
        let mut d = ReaderBuilder::new(schema.clone())
            .with_batch_size(batch)
            .build_decoder()
            .unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        let mut buf = input;
        while !buf.is_empty() {
            let n = d.decode(buf).unwrap_or_else(|e| panic!("{e}"));
            buf = &buf[n..];
            if let Some(b) = d.flush().unwrap_or_else(|e| panic!("{e}")) {
                out.push(b);
            }
        }
        out
    }

    #[test]
    fn flat_decoder_matches_arrow_json_on_what_it_accepts() {
        let s = schema();
        let inputs: [&[u8]; 7] = [
            b"{\"user_id\":\"u1\",\"ts\":1710000000000,\"n\":-3,\"ok\":true}\n{\"user_id\":\"u2\",\"ts\":-0,\"ok\":false}\n",
            b"  { \"ok\" : null , \"user_id\" : null,\"n\":0 }\r\n\n{}\n",
            b"{\"user_id\":\"a \\\"q\\\" \\\\ \\/ \\n\\t\\u00e9\\u20ac\",\"extra\":\"x\",\"more\":17,\"lit\":null}\n",
            b"{\"user_id\":\"\xc3\xa9t\xc3\xa9\",\"ts\":999999999999999999}{\"n\":2147483647}\n",
            b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n",
            b"",
            b"\n \n",
        ];
        for input in inputs {
            for batch in [1, 2, 1024] {
                let mut flat = FlatDecoder::new(&s).unwrap_or_else(|| panic!("flat schema"));
                let mut got = Vec::new();
                assert!(
                    flat.decode(input, batch, &s, &mut got).is_some(),
                    "flat decoder refused {}",
                    String::from_utf8_lossy(input)
                );
                assert_eq!(
                    got,
                    arrow_json(&s, input, batch),
                    "{}",
                    String::from_utf8_lossy(input)
                );
            }
        }
    }

    #[test]
    fn flat_decoder_leaves_the_rest_to_arrow_json() {
        let s = schema();
        let refused: [&[u8]; 12] = [
            b"{\"ts\":1.5}\n",
            b"{\"ts\":1e3}\n",
            b"{\"ts\":\"12\"}\n",
            b"{\"user_id\":12}\n",
            b"{\"n\":2147483648}\n",
            b"{\"x\":{\"y\":1}}\n",
            b"{\"x\":[1]}\n",
            b"{\"n\":1,\"n\":2}\n",
            b"{\"user_id\":\"\\ud83d\\ude00\"}\n",
            b"{\"n\":01}\n",
            b"{\"n\":1}x\n",
            b"[1]\n",
        ];
        for input in refused {
            let mut flat = FlatDecoder::new(&s).unwrap_or_else(|| panic!("flat schema"));
            let mut got = Vec::new();
            assert!(
                flat.decode(input, 1024, &s, &mut got).is_none(),
                "flat decoder took {}",
                String::from_utf8_lossy(input)
            );
            // What the public decoder gives is arrow-json's own answer.
            let mut d =
                JsonDecoder::new(s.clone(), 1024, false, "t").unwrap_or_else(|e| panic!("{e}"));
            let mut ours = Vec::new();
            let mut theirs = ReaderBuilder::new(s.clone())
                .with_batch_size(1024)
                .build_decoder()
                .unwrap_or_else(|e| panic!("{e}"));
            let expected = theirs.decode(input).and_then(|_| theirs.flush());
            match (d.decode_lines(input, &mut ours), expected) {
                (Ok(()), Ok(b)) => assert_eq!(ours, b.into_iter().collect::<Vec<_>>()),
                (Err(_), Err(_)) => {}
                (a, b) => panic!(
                    "{}: ours {a:?}, arrow-json {b:?}",
                    String::from_utf8_lossy(input)
                ),
            }
        }
    }

    #[test]
    fn unsupported_types_disable_the_flat_decoder() {
        let s = Arc::new(Schema::new(vec![Field::new("x", DataType::Float64, true)]));
        assert!(FlatDecoder::new(&s).is_none());
    }
}

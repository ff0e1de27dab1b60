//! The `json` format: JSON lines to Arrow (arrow-json's decoder, schema-driven)
//! and Arrow to JSON lines (a direct writer over the columns, in Flink's
//! default `SQL` timestamp style `yyyy-MM-dd HH:mm:ss.SSS`).

use std::io::Write;

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimestampMillisecondType,
};
use std::sync::Arc;

use arrow_array::builder::{BooleanBuilder, NullBufferBuilder};
use arrow_array::{Array, ArrayRef, Int64Array, RecordBatch, StringArray};
use arrow_buffer::{Buffer, OffsetBuffer, ScalarBuffer};
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
        let before = out.len();
        match self.decode_all(buf, out) {
            Ok(()) => Ok(()),
            Err(_) if self.ignore_parse_errors => {
                // Batches cut before the error are decoded again below.
                out.truncate(before);
                // Skip the bad lines (Flink's json.ignore-parse-errors) and decode the runs of
                // good lines between them in bulk, so a bad line costs no tiny batches.
                self.decoder = self.fresh_decoder(self.batch_size)?;
                let mut run = 0;
                for (_, at, line) in lines(buf) {
                    if self.line_error(line)?.is_some() {
                        self.decode_all(&buf[run..at], out)?;
                        run = at + line.len();
                    }
                }
                self.decode_all(&buf[run..], out)
            }
            Err(e) => {
                // The next buffer must not start inside the failed one.
                self.decoder = self.fresh_decoder(self.batch_size)?;
                Err(e)
            }
        }
    }

    /// The first line of `buf` that does not decode on its own: (line index from 0, byte
    /// offset, arrow-json's error). For error messages, after [`Self::decode_lines`] failed.
    pub fn first_bad_line(&mut self, buf: &[u8]) -> Option<(usize, usize, String)> {
        for (n, at, line) in lines(buf) {
            match self.line_error(line) {
                Ok(None) => {}
                Ok(Some(message)) => return Some((n, at, message)),
                Err(e) => return Some((n, at, e.to_string())),
            }
        }
        None
    }

    /// Why `line` alone does not decode, if it does not.
    fn line_error(&mut self, line: &[u8]) -> Result<Option<String>> {
        let mut probe = self.fresh_decoder(1)?;
        let checked = probe
            .decode(line)
            .and_then(|_| probe.decode(b"\n"))
            .and_then(|_| probe.flush());
        Ok(checked.err().map(|e| e.to_string()))
    }

    fn fresh_decoder(&self, batch_size: usize) -> Result<Decoder> {
        ReaderBuilder::new(self.schema.clone())
            .with_batch_size(batch_size)
            .build_decoder()
            .map_err(|e| RuntimeError::Plan(format!("{}: JSON decoder: {e}", self.what)))
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

/// The non-blank lines of `buf`: (index from 0, byte offset, the line with its newline).
fn lines(buf: &[u8]) -> impl Iterator<Item = (usize, usize, &[u8])> {
    let mut at = 0;
    buf.split_inclusive(|b| *b == b'\n')
        .enumerate()
        .filter_map(move |(n, line)| {
            let start = at;
            at += line.len();
            (!line.iter().all(|b| b.is_ascii_whitespace())).then_some((n, start, line))
        })
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
    /// `"name":` of each field, matched in place against the input so that a key in the
    /// expected position is neither scanned for its end nor compared twice; `None` for a name
    /// that JSON would escape (its keys take the general path, which refuses escapes).
    keys: Vec<Option<Vec<u8>>>,
    nullable: Vec<bool>,
    cols: Vec<FlatCol>,
    /// Unescaped string bytes, reused.
    text: String,
    /// Field index of the k-th key of the previous object: lines usually repeat the key order,
    /// so a key is matched with one comparison.
    order: Vec<usize>,
}

enum FlatCol {
    Utf8(Utf8Col),
    Int(IntKind, IntCol),
    Bool(BooleanBuilder),
}

/// A string column built from slices of the (already UTF-8-checked) input. Unlike
/// `StringBuilder`, it copies short values with one fixed-size move and starts each batch at
/// the previous batch's size, so appends neither call `memcpy` nor regrow.
struct Utf8Col {
    offsets: Vec<i32>,
    values: Vec<u8>,
    nulls: NullBufferBuilder,
}

struct IntCol {
    values: Vec<i64>,
    nulls: NullBufferBuilder,
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
                DataType::Utf8 => FlatCol::Utf8(Utf8Col::new(0, 0)),
                DataType::Int8 => FlatCol::Int(IntKind::I8, IntCol::new(0)),
                DataType::Int16 => FlatCol::Int(IntKind::I16, IntCol::new(0)),
                DataType::Int32 => FlatCol::Int(IntKind::I32, IntCol::new(0)),
                DataType::Int64 => FlatCol::Int(IntKind::I64, IntCol::new(0)),
                DataType::Boolean => FlatCol::Bool(BooleanBuilder::new()),
                _ => return None,
            });
        }
        Some(FlatDecoder {
            names: fields
                .iter()
                .map(|f| f.name().as_bytes().to_vec())
                .collect(),
            keys: fields
                .iter()
                .map(|f| {
                    let n = f.name().as_bytes();
                    if n.iter().any(|&c| c == b'"' || c == b'\\' || c < 0x20) {
                        return None;
                    }
                    let mut k = Vec::with_capacity(n.len() + 3);
                    k.push(b'"');
                    k.extend_from_slice(n);
                    k.extend_from_slice(b"\":");
                    Some(k)
                })
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
                c.clear();
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
        let cols = self
            .cols
            .iter_mut()
            .map(FlatCol::finish)
            .collect::<Option<Vec<ArrayRef>>>()?;
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
                let hinted = self.order.get(k).and_then(|&f| {
                    let key = self.keys.get(f)?.as_deref()?;
                    bytes_eq(b.get(i..i + key.len())?, key).then_some((f, key.len()))
                });
                let field = if let Some((f, len)) = hinted {
                    i = skip_ws(b, i + len);
                    Some(f)
                } else {
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
                    let found = self.names.iter().position(|n| bytes_eq(n, name));
                    // usize::MAX: a key the schema does not have.
                    self.order.resize(k, usize::MAX);
                    self.order.push(found.unwrap_or(usize::MAX));
                    found
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
            FlatCol::Utf8(col) => {
                if b[i] != b'"' {
                    return None;
                }
                let (end, escaped) = string_end(b, i + 1)?;
                if escaped {
                    unescape(&text[i + 1..end], &mut self.text)?;
                    col.push(self.text.as_bytes(), 0, self.text.len())?;
                } else {
                    col.push(b, i + 1, end)?;
                }
                Some(end + 1)
            }
            FlatCol::Int(kind, col) => {
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
                col.values.push(v);
                col.nulls.append_non_null();
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
            FlatCol::Utf8(c) => {
                c.offsets.push(c.offsets.last().copied().unwrap_or(0));
                c.nulls.append_null();
            }
            FlatCol::Int(_, c) => {
                c.values.push(0);
                c.nulls.append_null();
            }
            FlatCol::Bool(b) => b.append_null(),
        }
    }

    fn clear(&mut self) {
        match self {
            FlatCol::Utf8(c) => *c = Utf8Col::new(c.offsets.len(), c.values.len()),
            FlatCol::Int(_, c) => *c = IntCol::new(c.values.len()),
            FlatCol::Bool(b) => *b = BooleanBuilder::new(),
        }
    }

    /// The column so far, leaving it empty; `None` only for values arrow rejects (a batch of
    /// strings longer than `i32::MAX` bytes).
    fn finish(&mut self) -> Option<ArrayRef> {
        Some(match self {
            FlatCol::Utf8(c) => {
                let next = Utf8Col::new(c.offsets.len(), c.values.len());
                let Utf8Col {
                    offsets,
                    values,
                    mut nulls,
                } = std::mem::replace(c, next);
                Arc::new(
                    StringArray::try_new(
                        OffsetBuffer::new(ScalarBuffer::from(offsets)),
                        Buffer::from_vec(values),
                        nulls.finish(),
                    )
                    .ok()?,
                )
            }
            FlatCol::Int(kind, c) => {
                let next = IntCol::new(c.values.len());
                let IntCol { values, mut nulls } = std::mem::replace(c, next);
                let a = Int64Array::try_new(ScalarBuffer::from(values), nulls.finish()).ok()?;
                // Values were range-checked when appended, so the narrowing casts cannot fail.
                match kind {
                    IntKind::I64 => Arc::new(a),
                    IntKind::I32 => Arc::new(a.unary::<_, Int32Type>(|v| v as i32)),
                    IntKind::I16 => Arc::new(a.unary::<_, Int16Type>(|v| v as i16)),
                    IntKind::I8 => Arc::new(a.unary::<_, Int8Type>(|v| v as i8)),
                }
            }
            FlatCol::Bool(b) => Arc::new(b.finish()),
        })
    }
}

impl Utf8Col {
    fn new(rows: usize, bytes: usize) -> Utf8Col {
        let mut offsets = Vec::with_capacity(rows.max(1));
        offsets.push(0);
        Utf8Col {
            offsets,
            values: Vec::with_capacity(bytes),
            nulls: NullBufferBuilder::new(rows),
        }
    }

    /// Appends `src[start..end]`; `None` past `i32::MAX` bytes.
    #[inline(always)]
    fn push(&mut self, src: &[u8], start: usize, end: usize) -> Option<()> {
        let at = self.values.len();
        match src.get(start..start + 16) {
            // Most values are short: copy a fixed 16 bytes and cut back, instead of a
            // variable-length copy.
            Some(block) if end - start <= 16 => {
                self.values.extend_from_slice(block);
                self.values.truncate(at + (end - start));
            }
            _ => self.values.extend_from_slice(&src[start..end]),
        }
        self.offsets.push(i32::try_from(self.values.len()).ok()?);
        self.nulls.append_non_null();
        Some(())
    }
}

impl IntCol {
    fn new(rows: usize) -> IntCol {
        IntCol {
            values: Vec::with_capacity(rows),
            nulls: NullBufferBuilder::new(rows),
        }
    }
}

/// Field names are short: word compares beat a call to `memcmp`.
#[inline(always)]
fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            if word(a, i) != word(b, i) {
                return false;
            }
            i += 8;
        }
        // The last word overlaps the previous one rather than falling back to bytes.
        return word(a, n - 8) == word(b, n - 8);
    }
    let mut i = 0;
    while i < n {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// Eight bytes from `b[i]` (which must have them), first byte lowest.
#[inline(always)]
fn word(b: &[u8], i: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[i..i + 8]);
    u64::from_le_bytes(w)
}

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// High bit set in each byte of `w` that ends or interrupts a JSON string: `"`, `\`, or a control
/// character. Bits above the lowest set one may be spurious (borrows), the lowest is exact.
#[inline(always)]
fn string_stops(w: u64) -> u64 {
    let zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    zero(w ^ (ONES * u64::from(b'"')))
        | zero(w ^ (ONES * u64::from(b'\\')))
        | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS)
}

/// How many of the bytes of `w`, from the lowest, are ASCII digits (0 to 8).
#[inline(always)]
fn digit_run(w: u64) -> usize {
    // A digit is 0x30..=0x39: high nibble 3, and still 3 after adding 6. Carries only leave
    // bytes above a non-digit, so the lowest flagged byte is exact.
    let flags = ((w & 0xF0F0_F0F0_F0F0_F0F0) ^ 0x3030_3030_3030_3030)
        | ((w.wrapping_add(0x0606_0606_0606_0606) & 0xF0F0_F0F0_F0F0_F0F0) ^ 0x3030_3030_3030_3030);
    (flags.trailing_zeros() / 8) as usize
}

/// The number written by the lowest `n` (0 to 8) bytes of `w`, all digits, first digit lowest.
#[inline(always)]
fn digits_value(w: u64, n: usize) -> u64 {
    // Digit bytes never borrow, so the low `n` bytes are exact; shifting them to the top
    // makes the rest leading zeros.
    let v = w
        .wrapping_sub(0x3030_3030_3030_3030)
        .checked_shl(8 * (8 - n) as u32)
        .unwrap_or(0);
    // Pairs, then quadruples, then all eight: each step is `10^k * high part + low part`.
    let v = (v * 10 + (v >> 8)) & 0x00FF_00FF_00FF_00FF;
    let v = (v * 100 + (v >> 16)) & 0x0000_FFFF_0000_FFFF;
    (v * 10_000 + (v >> 32)) & 0xFFFF_FFFF
}

const POW10: [i64; 9] = [
    1,
    10,
    100,
    1_000,
    10_000,
    100_000,
    1_000_000,
    10_000_000,
    100_000_000,
];

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
        // Eight bytes at a time up to the next quote, backslash or control character.
        while i + 8 <= b.len() {
            let stops = string_stops(word(b, i));
            if stops != 0 {
                i += (stops.trailing_zeros() / 8) as usize;
                break;
            }
            i += 8;
        }
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
#[inline(always)]
fn parse_int(b: &[u8], mut i: usize) -> Option<(i64, usize)> {
    let negative = b.get(i) == Some(&b'-');
    if negative {
        i += 1;
    }
    let start = i;
    let mut v: i64 = 0;
    // Up to 16 digits (epoch milliseconds have 13) from two words loaded and converted
    // independently, so neither waits for the other.
    let mut ended = false;
    if i + 16 <= b.len() {
        let (w1, w2) = (word(b, i), word(b, i + 8));
        let (n1, n2) = (digit_run(w1), digit_run(w2));
        if n1 < 8 {
            v = digits_value(w1, n1) as i64;
            i += n1;
            ended = true;
        } else if n2 < 8 {
            v = (digits_value(w1, 8) * POW10[n2] as u64 + digits_value(w2, n2)) as i64;
            i += 8 + n2;
            ended = true;
        }
    }
    if !ended {
        // Longer numbers, or near the end of the input: a word at a time while eight bytes
        // are left, then byte by byte.
        while i + 8 <= b.len() {
            let w = word(b, i);
            let n = digit_run(w);
            if i - start + n > 18 {
                return None;
            }
            v = v * POW10[n] + digits_value(w, n) as i64;
            i += n;
            if n < 8 {
                ended = true;
                break;
            }
        }
    }
    if !ended {
        while let Some(d) = b.get(i).filter(|d| d.is_ascii_digit()) {
            if i - start == 18 {
                return None;
            }
            v = v * 10 + i64::from(d - b'0');
            i += 1;
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

    /// What the public decoder gives for `input` equals arrow-json's answer on it, whichever
    /// path decoded it.
    fn assert_as_arrow_json(s: &SchemaRef, input: &[u8]) {
        let mut d = JsonDecoder::new(s.clone(), 1024, false, "t").unwrap_or_else(|e| panic!("{e}"));
        let mut ours = Vec::new();
        let mut theirs = ReaderBuilder::new(s.clone())
            .with_batch_size(1024)
            .build_decoder()
            .unwrap_or_else(|e| panic!("{e}"));
        let expected = theirs.decode(input).and_then(|n| {
            if n < input.len() {
                Err(arrow_schema::ArrowError::JsonError("unconsumed".into()))
            } else {
                theirs.flush()
            }
        });
        match (d.decode_lines(input, &mut ours), expected) {
            (Ok(()), Ok(b)) => assert_eq!(
                ours,
                b.into_iter().collect::<Vec<_>>(),
                "{}",
                String::from_utf8_lossy(input)
            ),
            (Err(_), Err(_)) => {}
            (a, b) => panic!(
                "{}: ours {a:?}, arrow-json {b:?}",
                String::from_utf8_lossy(input)
            ),
        }
    }

    #[test]
    fn word_at_a_time_string_scan_finds_every_stop() {
        let s = schema();
        // Quotes, escapes, control characters and multi-byte characters at every position of
        // strings shorter and longer than a word, and at the very end of the input.
        let stops: [&str; 7] = [
            "\\\"",
            "\\\\",
            "\\n",
            "\\u00e9",
            "\u{e9}",
            "\u{20ac}\u{1f600}",
            "\t",
        ];
        for len in 0..40 {
            for at in 0..=len {
                for stop in stops {
                    let mut v = "x".repeat(len);
                    v.insert_str(at, stop);
                    let line = format!("{{\"user_id\":\"{v}\",\"n\":{len}}}");
                    assert_as_arrow_json(&s, format!("{line}\n").as_bytes());
                    assert_as_arrow_json(&s, line.as_bytes());
                }
                // Unterminated at the end of the input.
                let line = format!("{{\"user_id\":\"{}", "y".repeat(len));
                assert_as_arrow_json(&s, line.as_bytes());
            }
        }
    }

    #[test]
    fn word_at_a_time_integers_match_arrow_json() {
        let s = schema();
        let mut numbers = vec![
            "0".to_string(),
            "-0".into(),
            "00".into(),
            "012345678".into(),
            "-".into(),
            "1-2".into(),
            "123456789012345678".into(),
            "999999999999999999".into(),
            "-999999999999999999".into(),
            "1234567890123456789".into(),
            "9223372036854775807".into(),
            "9223372036854775808".into(),
            "12345678a".into(),
            "1234567:".into(),
            "1e3".into(),
            "12345678.5".into(),
            "\"1710000000000\"".into(),
        ];
        for digits in 1..=19 {
            let n: String = (0..digits)
                .map(|i| char::from(b'1' + (i % 9) as u8))
                .collect();
            numbers.push(format!("-{n}"));
            numbers.push(n);
        }
        for n in numbers {
            for tail in ["}", " }", "}\n", ",\"ok\":true}\n"] {
                // Integer ends right at the end of the input, and with more bytes after it.
                assert_as_arrow_json(&s, format!("{{\"ts\":{n}{tail}").as_bytes());
                assert_as_arrow_json(&s, format!("{{\"ts\":{n}{tail}{{\"n\":1}}\n").as_bytes());
            }
        }
    }

    #[test]
    fn digit_words_are_read_exactly() {
        for text in [
            "0", "7", "42", "1234567", "12345678", "00000001", "99999999", "9876543x",
        ] {
            let mut bytes = text.as_bytes().to_vec();
            bytes.resize(8, b'}');
            let w = word(&bytes, 0);
            let n = digit_run(w);
            let digits: String = text.chars().take_while(char::is_ascii_digit).collect();
            assert_eq!(n, digits.len(), "{text}");
            assert_eq!(
                digits_value(w, n),
                digits.parse::<u64>().unwrap_or_else(|e| panic!("{e}")),
                "{text}"
            );
        }
        assert_eq!(digits_value(word(b"x1234567", 0), 0), 0);
        // Every byte value around the digits, in every position.
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut bytes = *b"12345678";
                bytes[at] = b;
                let n = digit_run(word(&bytes, 0));
                let expect = if b.is_ascii_digit() { 8 } else { at };
                assert_eq!(n, expect, "byte {b:#x} at {at}");
            }
        }
    }

    #[test]
    fn keys_out_of_order_missing_extra_or_spaced_decode_as_arrow_json() {
        let s = schema();
        let inputs: [&[u8]; 8] = [
            // The hint follows the first line's order; later lines change it.
            b"{\"user_id\":\"a\",\"ts\":1,\"n\":2,\"ok\":true}\n{\"ok\":false,\"n\":3,\"ts\":4,\"user_id\":\"b\"}\n{\"user_id\":\"c\",\"ts\":5}\n",
            // A key that is a prefix of another, and one that extends one.
            b"{\"user\":\"x\",\"user_id\":\"a\",\"user_id2\":\"z\",\"ts\":1}\n{\"user_id\":\"b\",\"user_idx\":2}\n",
            b"{\"user_id\" : \"a\" , \"ts\" :1}\n{\"user_id\":\"b\",\"ts\":2}\n",
            // Escaped keys are left to arrow-json.
            b"{\"user\\u005fid\":\"a\"}\n",
            b"{\"user_id\":null,\"ts\":null,\"n\":null,\"ok\":null}\n",
            b"{\"user_id\":\"a\"}\n{\"user_id\":\"a\",\"user_id\":\"b\"}\n",
            b"{\"ts\":\"12\",\"n\":\"7\"}\n",
            b"{\"user_id\":\"a\",\"ts\":1,}\n",
        ];
        for input in inputs {
            assert_as_arrow_json(&s, input);
        }
    }

    #[test]
    fn bad_lines_are_located_and_skipped_in_bulk_when_ignored() {
        let s = schema();
        let input =
            b"{\"n\":1}\n\n{\"n\":2}\n{\"n\":\n{\"n\":4}\nnot json\n{\"n\":\"x\"}\n{\"n\":7}\n";
        let mut strict =
            JsonDecoder::new(s.clone(), 1024, false, "t").unwrap_or_else(|e| panic!("{e}"));
        assert!(strict.decode_lines(input, &mut Vec::new()).is_err());
        let (line, at, _) = strict
            .first_bad_line(input)
            .unwrap_or_else(|| panic!("no bad line found"));
        assert_eq!((line, at), (3, 17));
        // The decoder is usable again after an error.
        let mut out = Vec::new();
        strict
            .decode_lines(b"{\"n\":9}\n", &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(out[0].column(2).as_primitive::<Int32Type>().values(), &[9]);

        let mut lenient =
            JsonDecoder::new(s.clone(), 1024, true, "t").unwrap_or_else(|e| panic!("{e}"));
        let mut out = Vec::new();
        lenient
            .decode_lines(input, &mut out)
            .unwrap_or_else(|e| panic!("{e}"));
        let ns: Vec<i32> = out
            .iter()
            .flat_map(|b| b.column(2).as_primitive::<Int32Type>().values().to_vec())
            .collect();
        assert_eq!(ns, [1, 2, 4, 7]);
        // Runs of good lines between bad ones make one batch each, not one per line.
        assert_eq!(out.len(), 3);
    }
}

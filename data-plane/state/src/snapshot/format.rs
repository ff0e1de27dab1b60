//! The canonical snapshot file, version 1. All integers little-endian; `varint` is LEB128 and `bytes`
//! is `varint(len) ‖ data`.
//!
//! ```text
//! header   "SLCSTATE" ‖ u32 version ‖ u16 max_parallelism ‖ u16 range_start ‖ u16 range_end
//!          ‖ varint state_count ‖ state_count × (u8 kind ‖ bytes name)
//! sections one per non-empty key group, ascending: a run of records (below)
//! index    varint section_count ‖ section_count × (u16 key_group ‖ u64 offset ‖ u64 len ‖ u32 crc32)
//! trailer  u64 index_offset ‖ "SLCSTEND"
//! records  1 ‖ varint state ‖ bytes key ‖ bytes namespace ‖ bytes value                  (value)
//!          2 ‖ varint state ‖ bytes key ‖ bytes namespace ‖ bytes user_key ‖ bytes value (map entry)
//!          3 ‖ varint state ‖ bytes key ‖ bytes namespace ‖ bytes framed_items           (whole list)
//!          4 ‖ u8 domain ‖ i64 time ‖ bytes key ‖ bytes namespace                         (timer)
//! ```
//! `state` indexes the header's state table; `framed_items` is the list framing of
//! [`crate::encoding::push_list_item`]. The index at the end lets a writer stream sections out as it
//! produces them and lets a reader fetch only the key groups it owns.

use std::io::{Read, Seek, SeekFrom, Write};

use crate::backend::{StateKind, TimeDomain};
use crate::encoding::{put_bytes, put_varint, take_bytes, take_varint};
use crate::error::{Result, StateError};
use crate::keygroup::KeyGroupRange;

pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"SLCSTATE";
const TRAILER_MAGIC: &[u8; 8] = b"SLCSTEND";
const TRAILER_LEN: u64 = 16;
const INDEX_ENTRY_LEN: usize = 2 + 8 + 8 + 4;

const TAG_VALUE: u8 = 1;
const TAG_MAP_ENTRY: u8 = 2;
const TAG_LIST: u8 = 3;
const TAG_TIMER: u8 = 4;

/// Encodes the records of one key group.
#[derive(Default)]
pub struct SectionWriter {
    buf: Vec<u8>,
    records: u64,
}

impl SectionWriter {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    pub fn records(&self) -> u64 {
        self.records
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.records = 0;
    }

    fn start(&mut self, tag: u8, state: u32, key: &[u8], namespace: &[u8]) {
        self.records += 1;
        self.buf.push(tag);
        put_varint(&mut self.buf, u64::from(state));
        put_bytes(&mut self.buf, key);
        put_bytes(&mut self.buf, namespace);
    }

    /// `state` is the index of the state in the header's table.
    pub fn value(&mut self, state: u32, key: &[u8], namespace: &[u8], value: &[u8]) {
        self.start(TAG_VALUE, state, key, namespace);
        put_bytes(&mut self.buf, value);
    }

    pub fn map_entry(
        &mut self,
        state: u32,
        key: &[u8],
        namespace: &[u8],
        user_key: &[u8],
        value: &[u8],
    ) {
        self.start(TAG_MAP_ENTRY, state, key, namespace);
        put_bytes(&mut self.buf, user_key);
        put_bytes(&mut self.buf, value);
    }

    /// `framed_items` in the list framing of [`crate::encoding::push_list_item`].
    pub fn list(&mut self, state: u32, key: &[u8], namespace: &[u8], framed_items: &[u8]) {
        self.start(TAG_LIST, state, key, namespace);
        put_bytes(&mut self.buf, framed_items);
    }

    pub fn timer(&mut self, domain: TimeDomain, time: i64, key: &[u8], namespace: &[u8]) {
        self.records += 1;
        self.buf.push(TAG_TIMER);
        self.buf.push(domain.tag());
        self.buf.extend_from_slice(&time.to_le_bytes());
        put_bytes(&mut self.buf, key);
        put_bytes(&mut self.buf, namespace);
    }
}

/// One record of a section, borrowing the section's bytes. `state` indexes the file's state table.
#[derive(Debug, Clone, Copy)]
pub enum RawRecord<'a> {
    Value {
        state: u32,
        key: &'a [u8],
        namespace: &'a [u8],
        value: &'a [u8],
    },
    MapEntry {
        state: u32,
        key: &'a [u8],
        namespace: &'a [u8],
        user_key: &'a [u8],
        value: &'a [u8],
    },
    List {
        state: u32,
        key: &'a [u8],
        namespace: &'a [u8],
        framed_items: &'a [u8],
    },
    Timer {
        domain: TimeDomain,
        time: i64,
        key: &'a [u8],
        namespace: &'a [u8],
    },
}

/// Decodes every record of a section (as returned by [`SnapshotReader::read_section`]).
pub fn decode_section(
    mut input: &[u8],
    visit: &mut dyn FnMut(RawRecord<'_>) -> Result<()>,
) -> Result<()> {
    const CTX: &str = "section record";
    while let Some((&tag, rest)) = input.split_first() {
        input = rest;
        if tag == TAG_TIMER {
            let (&domain, rest) = input
                .split_first()
                .ok_or_else(|| StateError::corrupt(CTX, "timer record without domain"))?;
            let domain = TimeDomain::from_tag(domain)
                .ok_or_else(|| StateError::corrupt(CTX, format!("unknown time domain {domain}")))?;
            let (time, rest) = rest
                .split_first_chunk::<8>()
                .ok_or_else(|| StateError::corrupt(CTX, "timer record without time"))?;
            let (key, rest) = take_bytes(rest, CTX)?;
            let (namespace, rest) = take_bytes(rest, CTX)?;
            input = rest;
            visit(RawRecord::Timer {
                domain,
                time: i64::from_le_bytes(*time),
                key,
                namespace,
            })?;
            continue;
        }
        let (state, rest) = take_varint(input, CTX)?;
        let state = u32::try_from(state)
            .map_err(|_| StateError::corrupt(CTX, format!("state index {state} too large")))?;
        let (key, rest) = take_bytes(rest, CTX)?;
        let (namespace, rest) = take_bytes(rest, CTX)?;
        let (first, rest) = take_bytes(rest, CTX)?;
        input = rest;
        let record = match tag {
            TAG_VALUE => RawRecord::Value {
                state,
                key,
                namespace,
                value: first,
            },
            TAG_LIST => RawRecord::List {
                state,
                key,
                namespace,
                framed_items: first,
            },
            TAG_MAP_ENTRY => {
                let (value, rest) = take_bytes(input, CTX)?;
                input = rest;
                RawRecord::MapEntry {
                    state,
                    key,
                    namespace,
                    user_key: first,
                    value,
                }
            }
            other => {
                return Err(StateError::corrupt(
                    CTX,
                    format!("unknown record tag {other}"),
                ));
            }
        };
        visit(record)?;
    }
    Ok(())
}

/// What a finished snapshot file holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// Size of the file.
    pub bytes: u64,
    /// Key groups with at least one record.
    pub key_groups: u32,
    pub records: u64,
}

struct IndexEntry {
    key_group: u16,
    offset: u64,
    len: u64,
    crc: u32,
}

/// Streams a snapshot file: header, then sections in ascending key-group order, then the index.
pub struct SnapshotFileWriter<'w> {
    out: &'w mut dyn Write,
    offset: u64,
    range: KeyGroupRange,
    index: Vec<IndexEntry>,
    records: u64,
}

impl<'w> SnapshotFileWriter<'w> {
    pub fn new(
        out: &'w mut dyn Write,
        max_parallelism: u16,
        range: KeyGroupRange,
        states: &[(String, StateKind)],
    ) -> Result<Self> {
        let mut header = Vec::with_capacity(64);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&max_parallelism.to_le_bytes());
        header.extend_from_slice(&range.start.to_le_bytes());
        header.extend_from_slice(&range.end.to_le_bytes());
        put_varint(&mut header, states.len() as u64);
        for (name, kind) in states {
            header.push(kind.tag());
            put_bytes(&mut header, name.as_bytes());
        }
        out.write_all(&header)
            .map_err(StateError::io("writing the snapshot header"))?;
        Ok(Self {
            out,
            offset: header.len() as u64,
            range,
            index: Vec::new(),
            records: 0,
        })
    }

    /// Appends the section of `key_group` (skipped when empty). Key groups must ascend.
    pub fn write_section(&mut self, key_group: u16, section: &SectionWriter) -> Result<()> {
        if section.is_empty() {
            return Ok(());
        }
        if !self.range.contains(key_group) {
            return Err(StateError::InvalidArgument(format!(
                "section for key group {key_group} outside the snapshot's range {}",
                self.range
            )));
        }
        if let Some(last) = self.index.last()
            && last.key_group >= key_group
        {
            return Err(StateError::InvalidArgument(format!(
                "snapshot sections must ascend: key group {key_group} after {}",
                last.key_group
            )));
        }
        let bytes = section.bytes();
        self.out
            .write_all(bytes)
            .map_err(StateError::io("writing a snapshot section"))?;
        self.index.push(IndexEntry {
            key_group,
            offset: self.offset,
            len: bytes.len() as u64,
            crc: crc32fast::hash(bytes),
        });
        self.offset += bytes.len() as u64;
        self.records += section.records();
        Ok(())
    }

    pub fn finish(self) -> Result<SnapshotSummary> {
        let mut tail = Vec::with_capacity(10 + self.index.len() * INDEX_ENTRY_LEN + 16);
        put_varint(&mut tail, self.index.len() as u64);
        for entry in &self.index {
            tail.extend_from_slice(&entry.key_group.to_le_bytes());
            tail.extend_from_slice(&entry.offset.to_le_bytes());
            tail.extend_from_slice(&entry.len.to_le_bytes());
            tail.extend_from_slice(&entry.crc.to_le_bytes());
        }
        tail.extend_from_slice(&self.offset.to_le_bytes());
        tail.extend_from_slice(TRAILER_MAGIC);
        self.out
            .write_all(&tail)
            .map_err(StateError::io("writing the snapshot index"))?;
        self.out
            .flush()
            .map_err(StateError::io("flushing the snapshot"))?;
        Ok(SnapshotSummary {
            bytes: self.offset + tail.len() as u64,
            key_groups: self.index.len() as u32,
            records: self.records,
        })
    }
}

/// Reads the header and index of a snapshot file and then any of its sections.
pub struct SnapshotReader<R> {
    inner: R,
    max_parallelism: u16,
    range: KeyGroupRange,
    states: Vec<(String, StateKind)>,
    index: Vec<IndexEntry>,
}

fn read_exact_at<R: Read + Seek>(
    r: &mut R,
    offset: u64,
    buf: &mut [u8],
    context: &'static str,
) -> Result<()> {
    r.seek(SeekFrom::Start(offset))
        .map_err(StateError::io(context))?;
    r.read_exact(buf).map_err(StateError::io(context))
}

fn le_u16(b: &[u8]) -> u16 {
    u16::from_le_bytes([b[0], b[1]])
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

impl<R: Read + Seek> SnapshotReader<R> {
    pub fn open(mut inner: R) -> Result<Self> {
        let len = inner
            .seek(SeekFrom::End(0))
            .map_err(StateError::io("seeking to the end of a snapshot"))?;
        if len < TRAILER_LEN + 18 {
            return Err(StateError::corrupt(
                "snapshot file",
                format!("{len} bytes is too short"),
            ));
        }
        let mut trailer = [0u8; TRAILER_LEN as usize];
        read_exact_at(
            &mut inner,
            len - TRAILER_LEN,
            &mut trailer,
            "reading the snapshot trailer",
        )?;
        if &trailer[8..] != TRAILER_MAGIC {
            return Err(StateError::corrupt(
                "snapshot trailer",
                "end marker missing (truncated or not a snapshot)",
            ));
        }
        let index_offset = le_u64(&trailer);
        let index_len = (len - TRAILER_LEN)
            .checked_sub(index_offset)
            .ok_or_else(|| StateError::corrupt("snapshot trailer", "index offset past the end"))?;
        let mut head = [0u8; 18];
        read_exact_at(&mut inner, 0, &mut head, "reading the snapshot header")?;
        if &head[..8] != MAGIC {
            return Err(StateError::corrupt(
                "snapshot header",
                "magic bytes missing (not a snapshot file)",
            ));
        }
        let version = le_u32(&head[8..]);
        if version != FORMAT_VERSION {
            return Err(StateError::UnsupportedSnapshotVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let max_parallelism = le_u16(&head[12..]);
        let range = KeyGroupRange::new(le_u16(&head[14..]), le_u16(&head[16..]))?;

        // The state table runs from byte 18 to the first section (or the index when there is none).
        let mut index_bytes = vec![0u8; index_len as usize];
        read_exact_at(
            &mut inner,
            index_offset,
            &mut index_bytes,
            "reading the snapshot index",
        )?;
        let (count, mut rest) = take_varint(&index_bytes, "snapshot index")?;
        let mut index = Vec::with_capacity(count.min(1 << 16) as usize);
        for _ in 0..count {
            if rest.len() < INDEX_ENTRY_LEN {
                return Err(StateError::corrupt("snapshot index", "truncated entry"));
            }
            let entry = IndexEntry {
                key_group: le_u16(rest),
                offset: le_u64(&rest[2..]),
                len: le_u64(&rest[10..]),
                crc: le_u32(&rest[18..]),
            };
            if entry.offset + entry.len > index_offset || !range.contains(entry.key_group) {
                return Err(StateError::corrupt(
                    "snapshot index",
                    format!("bad entry for key group {}", entry.key_group),
                ));
            }
            index.push(entry);
            rest = &rest[INDEX_ENTRY_LEN..];
        }
        let table_end = index.first().map_or(index_offset, |e| e.offset);
        let mut table = vec![0u8; table_end.saturating_sub(18) as usize];
        read_exact_at(
            &mut inner,
            18,
            &mut table,
            "reading the snapshot state table",
        )?;
        let (state_count, mut rest) = take_varint(&table, "snapshot state table")?;
        let mut states = Vec::new();
        for _ in 0..state_count {
            let (&tag, after) = rest
                .split_first()
                .ok_or_else(|| StateError::corrupt("snapshot state table", "truncated"))?;
            let kind = StateKind::from_tag(tag).ok_or_else(|| {
                StateError::corrupt("snapshot state table", format!("unknown state kind {tag}"))
            })?;
            let (name, after) = take_bytes(after, "snapshot state table")?;
            let name = std::str::from_utf8(name)
                .map_err(|_| StateError::corrupt("snapshot state table", "state name not UTF-8"))?;
            states.push((name.to_owned(), kind));
            rest = after;
        }
        Ok(Self {
            inner,
            max_parallelism,
            range,
            states,
            index,
        })
    }

    pub fn max_parallelism(&self) -> u16 {
        self.max_parallelism
    }

    /// The key groups of the backend that wrote the file.
    pub fn key_group_range(&self) -> KeyGroupRange {
        self.range
    }

    /// The file's state table: `RawRecord` state indexes point into it.
    pub fn states(&self) -> &[(String, StateKind)] {
        &self.states
    }

    /// Key groups that have a section, ascending.
    pub fn key_groups(&self) -> impl Iterator<Item = u16> + '_ {
        self.index.iter().map(|e| e.key_group)
    }

    /// Reads the section of `key_group` into `buf` after checking its CRC; `false` when it has none.
    pub fn read_section(&mut self, key_group: u16, buf: &mut Vec<u8>) -> Result<bool> {
        let Ok(at) = self.index.binary_search_by_key(&key_group, |e| e.key_group) else {
            return Ok(false);
        };
        let entry = &self.index[at];
        buf.clear();
        buf.resize(entry.len as usize, 0);
        read_exact_at(
            &mut self.inner,
            entry.offset,
            buf,
            "reading a snapshot section",
        )?;
        if crc32fast::hash(buf) != entry.crc {
            return Err(StateError::corrupt(
                "snapshot section",
                format!("checksum mismatch in key group {key_group}"),
            ));
        }
        Ok(true)
    }
}

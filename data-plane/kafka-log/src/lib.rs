//! Reads one Kafka partition's raw log over the wire protocol (Fetch v4,
//! `read_uncommitted`) and decodes record batches (format v2, uncompressed),
//! control records included, so each record's transaction is resolved through
//! the COMMIT or ABORT marker its producer wrote after it.
//!
//! Why not a `read_committed` consumer: brokers differ in what they hold back.
//! The tansu broker we test against commits transactions correctly but does
//! not filter aborted records for such consumers, and it applies offsets sent
//! to a transaction late. The exactly-once Kafka sink decides "was this
//! checkpoint committed?" from its commit markers' fates here, which only
//! needs the broker to write control records, as every Kafka broker must.
//! The tests use the same reader as their read-committed oracle.
//!
//! No dependencies: PLAINTEXT connections only (the caller finds the
//! partition leader and says which address to read from).
//!
//! Test: `dev/cargo test -p sluice-kafka-log` (decoding); against the real
//! broker through the Kafka connector's and the engine's tests.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// What went wrong, with the topic, partition and offset it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

fn bail<T>(m: String) -> Result<T> {
    Err(Error(m))
}

/// One data record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub offset: i64,
    pub producer_id: i64,
    pub transactional: bool,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// How a record's transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Not transactional, or its transaction committed: visible to read_committed.
    Committed,
    Aborted,
    /// Its transaction has no marker yet (read_committed consumers wait at it).
    Open,
}

/// A transaction marker (control record).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub offset: i64,
    pub producer_id: i64,
    pub commit: bool,
}

#[derive(Debug, Default, Clone)]
pub struct PartitionLog {
    /// Data records at or after the first offset read, in offset order, each
    /// with its fate.
    pub records: Vec<(LogRecord, Fate)>,
    pub markers: Vec<Marker>,
    /// The partition's high watermark when the read ended.
    pub high_watermark: i64,
}

impl PartitionLog {
    /// What a read_committed consumer of a correct broker delivers.
    pub fn committed(&self) -> Vec<&LogRecord> {
        self.with_fate(Fate::Committed)
    }

    pub fn with_fate(&self, fate: Fate) -> Vec<&LogRecord> {
        self.records
            .iter()
            .filter(|(_, f)| *f == fate)
            .map(|(r, _)| r)
            .collect()
    }
}

const FETCH: i16 = 1;
const FETCH_VERSION: i16 = 4;
const OFFSET_OUT_OF_RANGE: i16 = 1;

struct Conn {
    s: TcpStream,
    correlation: i32,
}

impl Conn {
    fn call(&mut self, api_key: i16, version: i16, body: &[u8]) -> Result<Vec<u8>> {
        self.correlation += 1;
        let client = b"sluice-kafka-log";
        let mut req = Vec::new();
        req.extend_from_slice(&api_key.to_be_bytes());
        req.extend_from_slice(&version.to_be_bytes());
        req.extend_from_slice(&self.correlation.to_be_bytes());
        req.extend_from_slice(&(client.len() as i16).to_be_bytes());
        req.extend_from_slice(client);
        req.extend_from_slice(body);
        let io = |what: &str, e: std::io::Error| Error(format!("{what}: {e}"));
        self.s
            .write_all(&(req.len() as i32).to_be_bytes())
            .and_then(|_| self.s.write_all(&req))
            .map_err(|e| io("sending a fetch request", e))?;
        let mut len = [0u8; 4];
        self.s
            .read_exact(&mut len)
            .map_err(|e| io("reading a fetch response", e))?;
        let mut resp = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
        self.s
            .read_exact(&mut resp)
            .map_err(|e| io("reading a fetch response", e))?;
        let mut r = Reader::new(&resp);
        let corr = r.i32()?;
        if corr != self.correlation {
            return bail(format!(
                "response correlation id {corr}, expected {}",
                self.correlation
            ));
        }
        Ok(resp[4..].to_vec())
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn new(b: &'a [u8]) -> Self {
        Reader { b, at: 0 }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let s = self
            .b
            .get(self.at..self.at + n)
            .ok_or_else(|| Error(format!("truncated at byte {} (wanted {n})", self.at)))?;
        self.at += n;
        Ok(s)
    }
    fn i8(&mut self) -> Result<i8> {
        Ok(self.take(1)?[0] as i8)
    }
    fn i16(&mut self) -> Result<i16> {
        let s = self.take(2)?;
        Ok(i16::from_be_bytes([s[0], s[1]]))
    }
    fn i32(&mut self) -> Result<i32> {
        let s = self.take(4)?;
        Ok(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn i64(&mut self) -> Result<i64> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(i64::from_be_bytes(a))
    }
    fn string(&mut self) -> Result<String> {
        let n = self.i16()?;
        if n < 0 {
            return Ok(String::new());
        }
        Ok(String::from_utf8_lossy(self.take(n as usize)?).into_owned())
    }
    /// Zigzag varint (record fields).
    fn varint(&mut self) -> Result<i64> {
        let mut v: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((v >> 1) as i64) ^ -((v & 1) as i64));
            }
        }
        bail("varint too long".into())
    }
    fn var_bytes(&mut self) -> Result<Option<Vec<u8>>> {
        let n = self.varint()?;
        if n < 0 {
            return Ok(None);
        }
        Ok(Some(self.take(n as usize)?.to_vec()))
    }
    fn left(&self) -> usize {
        self.b.len() - self.at
    }
}

enum Entry {
    Data(LogRecord),
    Control(Marker),
}

/// Decodes the record batches of a fetch's `records` bytes; a batch cut off
/// at the end (the fetch size limit) is left for the next fetch.
fn decode_batches(b: &[u8], out: &mut Vec<Entry>) -> Result<Option<i64>> {
    let mut r = Reader::new(b);
    let mut next = None;
    while r.left() >= 12 {
        let base = r.i64()?;
        let len = r.i32()? as usize;
        if r.left() < len {
            break;
        }
        let mut x = Reader::new(r.take(len)?);
        let _leader_epoch = x.i32()?;
        let magic = x.i8()?;
        if magic != 2 {
            return bail(format!(
                "record batch at offset {base} has magic {magic}; only v2 is decoded"
            ));
        }
        let _crc = x.i32()?;
        let attributes = x.i16()?;
        if attributes & 7 != 0 {
            return bail(format!(
                "record batch at offset {base} is compressed (codec {}); only uncompressed batches are decoded",
                attributes & 7
            ));
        }
        let transactional = attributes & 0x10 != 0;
        let control = attributes & 0x20 != 0;
        let last_delta = x.i32()?;
        let _base_ts = x.i64()?;
        let _max_ts = x.i64()?;
        let producer_id = x.i64()?;
        let _epoch = x.i16()?;
        let _seq = x.i32()?;
        let count = x.i32()?;
        for _ in 0..count {
            let rlen = x.varint()? as usize;
            let mut rec = Reader::new(x.take(rlen)?);
            let _attr = rec.i8()?;
            let _ts = rec.varint()?;
            let delta = rec.varint()?;
            let key = rec.var_bytes()?;
            let value = rec.var_bytes()?;
            let offset = base + delta;
            if control {
                let k =
                    key.ok_or_else(|| Error(format!("control record at {offset} has no key")))?;
                let mut kr = Reader::new(&k);
                let _version = kr.i16()?;
                let kind = kr.i16()?;
                out.push(Entry::Control(Marker {
                    offset,
                    producer_id,
                    commit: kind == 1,
                }));
            } else {
                out.push(Entry::Data(LogRecord {
                    offset,
                    producer_id,
                    transactional,
                    key,
                    value,
                }));
            }
        }
        next = Some(base + i64::from(last_delta) + 1);
    }
    Ok(next)
}

/// Reads partition `partition` of `topic` from offset `from` to its high
/// watermark, from the broker at `leader` (host:port; it must lead the
/// partition), and resolves every record's transaction. Records before `from`
/// in the first batch are left out; markers after `from` still resolve them
/// for nothing, so a transaction that began before `from` stays unseen.
pub fn read_partition(
    leader: &str,
    topic: &str,
    partition: i32,
    from: i64,
    timeout: Duration,
) -> Result<PartitionLog> {
    let at = |e: String| Error(format!("reading {topic}/{partition} from {leader}: {e}"));
    let addr = leader
        .to_socket_addrs()
        .map_err(|e| at(e.to_string()))?
        .next()
        .ok_or_else(|| at("the address resolves to nothing".into()))?;
    let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| at(e.to_string()))?;
    s.set_read_timeout(Some(timeout))
        .and_then(|_| s.set_write_timeout(Some(timeout)))
        .map_err(|e| at(e.to_string()))?;
    let mut c = Conn { s, correlation: 0 };
    let mut entries = Vec::new();
    let mut offset = from.max(0);
    let high = loop {
        let mut body = Vec::new();
        body.extend_from_slice(&(-1i32).to_be_bytes()); // replica_id
        // tansu answers min_bytes 0 with an empty response, not with the
        // partition's (empty) data and high watermark.
        body.extend_from_slice(&500i32.to_be_bytes()); // max_wait_ms
        body.extend_from_slice(&1i32.to_be_bytes()); // min_bytes
        body.extend_from_slice(&(32i32 << 20).to_be_bytes()); // max_bytes
        body.push(0); // isolation_level: read_uncommitted, the raw log
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&(topic.len() as i16).to_be_bytes());
        body.extend_from_slice(topic.as_bytes());
        body.extend_from_slice(&1i32.to_be_bytes());
        body.extend_from_slice(&partition.to_be_bytes());
        body.extend_from_slice(&offset.to_be_bytes());
        body.extend_from_slice(&(16i32 << 20).to_be_bytes());
        let resp = c.call(FETCH, FETCH_VERSION, &body).map_err(|e| at(e.0))?;
        let (code, high, records) = fetch_response(&resp, topic, partition).map_err(|e| at(e.0))?;
        match code {
            0 => {}
            OFFSET_OUT_OF_RANGE => {
                return Err(at(format!(
                    "offset {offset} is out of range (high watermark {high}): the log was truncated or recreated"
                )));
            }
            c => return Err(at(format!("fetch at offset {offset}: error code {c}"))),
        }
        match decode_batches(&records, &mut entries).map_err(|e| at(e.0))? {
            Some(next) if next > offset => offset = next,
            _ if offset >= high => break high,
            _ => {
                return Err(at(format!(
                    "fetch at offset {offset} (high watermark {high}) returned no whole batch"
                )));
            }
        }
        if offset >= high {
            break high;
        }
    };
    entries.retain(|e| match e {
        Entry::Data(r) => r.offset >= from,
        Entry::Control(m) => m.offset >= from,
    });
    let mut log = resolve(entries);
    log.high_watermark = high;
    Ok(log)
}

/// The error code, high watermark and record bytes of `topic`/`partition` in
/// a Fetch v4 response.
fn fetch_response(resp: &[u8], topic: &str, partition: i32) -> Result<(i16, i64, Vec<u8>)> {
    let mut r = Reader::new(resp);
    let _throttle = r.i32()?;
    let mut found = None;
    for _ in 0..r.i32()? {
        let t = r.string()?;
        for _ in 0..r.i32()? {
            let p = r.i32()?;
            let code = r.i16()?;
            let hw = r.i64()?;
            let _lso = r.i64()?;
            let n = r.i32()?;
            for _ in 0..n.max(0) {
                r.i64()?;
                r.i64()?;
            }
            let len = r.i32()?;
            let bytes = if len < 0 {
                Vec::new()
            } else {
                r.take(len as usize)?.to_vec()
            };
            if t == topic && p == partition {
                found = Some((code, hw, bytes));
            }
        }
    }
    found.ok_or_else(|| Error("the fetch response does not name the partition".into()))
}

fn resolve(entries: Vec<Entry>) -> PartitionLog {
    use std::collections::HashMap;
    let mut log = PartitionLog::default();
    let mut open: HashMap<i64, Vec<usize>> = HashMap::new();
    for e in entries {
        match e {
            Entry::Data(r) => {
                let i = log.records.len();
                if r.transactional {
                    open.entry(r.producer_id).or_default().push(i);
                    log.records.push((r, Fate::Open));
                } else {
                    log.records.push((r, Fate::Committed));
                }
            }
            Entry::Control(m) => {
                for i in open.remove(&m.producer_id).unwrap_or_default() {
                    log.records[i].1 = if m.commit {
                        Fate::Committed
                    } else {
                        Fate::Aborted
                    };
                }
                log.markers.push(m);
            }
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let b = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    type KeyValue<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

    /// One v2 batch with the given records (key, value) at `base`.
    fn batch(base: i64, pid: i64, attrs: i16, recs: &[KeyValue<'_>]) -> Vec<u8> {
        let mut rs = Vec::new();
        for (i, (k, v)) in recs.iter().enumerate() {
            let mut r = vec![0u8];
            varint(&mut r, 0);
            varint(&mut r, i as i64);
            for p in [k, v] {
                match p {
                    Some(b) => {
                        varint(&mut r, b.len() as i64);
                        r.extend_from_slice(b);
                    }
                    None => varint(&mut r, -1),
                }
            }
            varint(&mut r, 0);
            varint(&mut rs, r.len() as i64);
            rs.extend_from_slice(&r);
        }
        let mut body = Vec::new();
        body.extend_from_slice(&0i32.to_be_bytes());
        body.push(2);
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend_from_slice(&attrs.to_be_bytes());
        body.extend_from_slice(&(recs.len() as i32 - 1).to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend_from_slice(&0i64.to_be_bytes());
        body.extend_from_slice(&pid.to_be_bytes());
        body.extend_from_slice(&0i16.to_be_bytes());
        body.extend_from_slice(&0i32.to_be_bytes());
        body.extend_from_slice(&(recs.len() as i32).to_be_bytes());
        body.extend_from_slice(&rs);
        let mut b = base.to_be_bytes().to_vec();
        b.extend_from_slice(&(body.len() as i32).to_be_bytes());
        b.extend_from_slice(&body);
        b
    }

    #[test]
    fn transactions_resolve_through_their_markers() {
        let commit: &[u8] = &[0, 0, 0, 1];
        let abort: &[u8] = &[0, 0, 0, 0];
        let mut log = Vec::new();
        log.extend(batch(0, -1, 0, &[(None, Some(b"plain"))]));
        log.extend(batch(
            1,
            7,
            0x10,
            &[(None, Some(b"a1")), (None, Some(b"a2"))],
        ));
        log.extend(batch(3, 8, 0x10, &[(None, Some(b"b1"))]));
        log.extend(batch(4, 7, 0x30, &[(Some(abort), None)]));
        log.extend(batch(5, 8, 0x30, &[(Some(commit), None)]));
        log.extend(batch(6, 8, 0x10, &[(None, Some(b"b2"))]));
        // A batch cut off by the fetch limit is not decoded.
        let cut = batch(7, -1, 0, &[(None, Some(b"cut"))]);
        log.extend_from_slice(&cut[..cut.len() - 3]);
        let mut entries = Vec::new();
        let next = decode_batches(&log, &mut entries).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(next, Some(7));
        let l = resolve(entries);
        let vals = |f: Fate| -> Vec<Vec<u8>> {
            l.with_fate(f)
                .iter()
                .filter_map(|r| r.value.clone())
                .collect()
        };
        assert_eq!(
            vals(Fate::Committed),
            vec![b"plain".to_vec(), b"b1".to_vec()]
        );
        assert_eq!(vals(Fate::Aborted), vec![b"a1".to_vec(), b"a2".to_vec()]);
        assert_eq!(vals(Fate::Open), vec![b"b2".to_vec()]);
        assert_eq!(l.markers.len(), 2);
    }
}

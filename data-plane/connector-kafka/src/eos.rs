//! The exactly-once Kafka sink: write-ahead, because librdkafka cannot resume
//! a transaction that another producer (a crashed run) began.
//!
//! Records written between two barriers are kept in memory; `prepare_commit`
//! hands them over as the committable, so they are part of the checkpoint.
//! `commit` (after the checkpoint's `_metadata` exists, and again after a
//! restore) produces them in one transaction of the producer with
//! transactional id `{prefix}-{origin}` (`init_transactions` fences an older
//! producer with that id and aborts its open transaction), together with a
//! commit marker: a record on partition 0 of the marker topic
//! (`sink.commit-marker-topic`, default `{prefix}-commits`, created compacted
//! with one partition when missing), key `{sink_uid}/{origin}`, value the
//! commit's sequence in decimal (generation and checkpoint id, see
//! `PendingCommit::sequence`). The marker is committed exactly when the
//! records are.
//!
//! "Was this committable committed already?" is only asked of committables
//! restored from a checkpoint (those of the running attempt are committed
//! once, and the attempt remembers). It is answered from the marker log
//! itself: [`sluice_kafka_log`] reads the raw partition from the committable's
//! floor (the marker offset of its origin's last commit known when it was
//! made, so the read is a few records, not the whole history) and resolves
//! each marker through its transaction's control record, after the origin's
//! producer was initialised (which ends what a crashed attempt left open).
//! This needs nothing of the broker but correct control records — no
//! read_committed filtering and no offsets-in-transactions, which tansu
//! applies late (a dead producer's open transaction on the same partitions
//! holds them back, and an abort of that producer's next transaction can drop
//! them). The reader speaks PLAINTEXT and decodes uncompressed batches only,
//! so this mode rejects other `properties.security.protocol` and
//! `properties.compression.type` settings at start.
//!
//! `origin` is the subtask that wrote the records (kept in the committable),
//! so any subtask of a rescaled job can commit an old subtask's records under
//! the old transactional id and marker key.
//!
//! Committable (little-endian): `b"SKT2"`, `u32` origin subtask, `u32` record
//! count, `i64` floor, `u64` attempt (a random number per sink instance), then
//! per record `i32` partition (-1: librdkafka's partitioner, which is
//! deterministic for keyed records), `i32` key length (-1: null) and key,
//! `i32` value length (-1: null, a tombstone) and value. `b"SKT1"` (no floor
//! and attempt: read from offset 0) is still read. An empty committable means
//! no records.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use sluice_kafka_log::Fate;
use sluice_runtime::Result;
use sluice_sql::TableDef;

use crate::sink::{Ctx, send};
use crate::{block_on, client_config, err};

const T: Duration = Duration::from_secs(30);
const MAGIC_V1: &[u8; 4] = b"SKT1";
const MAGIC: &[u8; 4] = b"SKT2";
/// Magic, origin, count, floor, attempt.
const HEADER: usize = 4 + 4 + 4 + 8 + 8;
/// How long a marker in a transaction without an end may keep a commit waiting.
const OPEN_MARKER_WAIT: Duration = Duration::from_secs(20);

/// Records of the current epoch, already in the committable format.
pub(crate) struct Pending {
    buf: Vec<u8>,
    count: u32,
}

impl Pending {
    pub(crate) fn push(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) {
        if self.buf.is_empty() {
            self.buf.extend_from_slice(MAGIC);
            self.buf.extend_from_slice(&[0; HEADER - 4]);
        }
        self.buf.extend_from_slice(&(-1i32).to_le_bytes());
        for part in [key, value] {
            match part {
                Some(b) => {
                    self.buf.extend_from_slice(&(b.len() as i32).to_le_bytes());
                    self.buf.extend_from_slice(b);
                }
                None => self.buf.extend_from_slice(&(-1i32).to_le_bytes()),
            }
        }
        self.count += 1;
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The committable of what was pushed since the last call.
    fn take(&mut self, origin: usize, floor: i64, attempt: u64) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.buf);
        if !b.is_empty() {
            b[4..8].copy_from_slice(&(origin as u32).to_le_bytes());
            b[8..12].copy_from_slice(&self.count.to_le_bytes());
            b[12..20].copy_from_slice(&floor.to_le_bytes());
            b[20..28].copy_from_slice(&attempt.to_le_bytes());
        }
        self.count = 0;
        b
    }
}

pub struct Record<'a> {
    pub partition: i32,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// A decoded committable.
pub struct Committable<'a> {
    /// The subtask that wrote the records.
    pub origin: usize,
    /// No commit marker of `origin` that may be missing lies below this
    /// offset of the marker log.
    pub floor: i64,
    /// The sink instance that made it.
    pub attempt: u64,
    pub records: Vec<Record<'a>>,
}

/// Decodes a committable.
pub fn decode(c: &[u8]) -> std::result::Result<Committable<'_>, String> {
    fn take<'a>(c: &'a [u8], at: &mut usize, n: usize) -> std::result::Result<&'a [u8], String> {
        let b = c
            .get(*at..*at + n)
            .ok_or_else(|| format!("committable truncated at byte {at}"))?;
        *at += n;
        Ok(b)
    }
    fn i32_at(c: &[u8], at: &mut usize) -> std::result::Result<i32, String> {
        let b = take(c, at, 4)?;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64_at(c: &[u8], at: &mut usize) -> std::result::Result<u64, String> {
        let mut a = [0u8; 8];
        a.copy_from_slice(take(c, at, 8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes<'a>(c: &'a [u8], at: &mut usize) -> std::result::Result<Option<&'a [u8]>, String> {
        let n = i32_at(c, at)?;
        if n < 0 {
            return Ok(None);
        }
        take(c, at, n as usize).map(Some)
    }
    let v2 = match c.get(..4) {
        Some(m) if m == MAGIC => true,
        Some(m) if m == MAGIC_V1 => false,
        _ => return Err("not a Kafka exactly-once committable (bad magic)".into()),
    };
    let mut at = 4;
    let origin = i32_at(c, &mut at)? as u32 as usize;
    let count = i32_at(c, &mut at)? as u32 as usize;
    let (floor, attempt) = if v2 {
        (u64_at(c, &mut at)? as i64, u64_at(c, &mut at)?)
    } else {
        (0, 0)
    };
    let mut records = Vec::with_capacity(count);
    for _ in 0..count {
        let partition = i32_at(c, &mut at)?;
        let key = bytes(c, &mut at)?;
        let value = bytes(c, &mut at)?;
        records.push(Record {
            partition,
            key,
            value,
        });
    }
    if at != c.len() {
        return Err(format!("{} bytes after the last record", c.len() - at));
    }
    Ok(Committable {
        origin,
        floor,
        attempt,
        records,
    })
}

/// The marker topic of a sink table.
pub fn marker_topic(t: &TableDef, prefix: &str) -> String {
    match t.option("sink.commit-marker-topic") {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => format!("{prefix}-commits"),
    }
}

/// The key of an origin subtask's commit markers.
pub fn marker_key(sink_uid: &str, origin: usize) -> String {
    format!("{sink_uid}/{origin}")
}

/// The commit sequence a marker record's value holds.
pub fn marker_sequence(value: Option<&[u8]>) -> Option<u64> {
    std::str::from_utf8(value?).ok()?.parse().ok()
}

/// The highest committed sequence per marker key in a marker log, and the
/// offset of a marker whose transaction has no end yet, if any (per key).
pub fn committed_markers(
    log: &sluice_kafka_log::PartitionLog,
) -> HashMap<String, (Option<u64>, Option<i64>)> {
    let mut out: HashMap<String, (Option<u64>, Option<i64>)> = HashMap::new();
    for (r, fate) in &log.records {
        let Some(key) = r.key.as_deref().and_then(|k| std::str::from_utf8(k).ok()) else {
            continue;
        };
        let e = out.entry(key.to_string()).or_default();
        match (fate, marker_sequence(r.value.as_deref())) {
            (Fate::Committed, Some(s)) => e.0 = e.0.max(Some(s)),
            (Fate::Open, _) => e.1 = Some(r.offset),
            _ => {}
        }
    }
    out
}

struct Txn {
    producer: BaseProducer<Ctx>,
    marker_offset: Arc<Mutex<Option<i64>>>,
}

/// What is known of an origin's commits.
#[derive(Clone, Copy)]
struct Known {
    /// The highest committed sequence.
    sequence: Option<u64>,
    /// The marker log was read from this offset to learn it (`i64::MAX`: not
    /// read; only this attempt's own commits are known).
    read_from: i64,
}

pub(crate) struct Eos {
    topic: String,
    prefix: String,
    sink_uid: String,
    marker_topic: String,
    marker_topic_ready: bool,
    pub(crate) subtask: usize,
    pub(crate) pending: Pending,
    attempt: u64,
    /// Initialised transactional producers by origin subtask.
    txns: HashMap<usize, Txn>,
    known: HashMap<usize, Known>,
    /// The floor of this subtask's next committable: the marker offset of its
    /// last commit, or the marker log's end before its first one.
    floor: Option<i64>,
    /// The attempt was cancelled: a commit in progress stops.
    cancelled: Arc<AtomicBool>,
}

impl Eos {
    pub(crate) fn new(
        t: &TableDef,
        prefix: &str,
        sink_uid: &str,
        subtask: usize,
        cancelled: Arc<AtomicBool>,
    ) -> Result<Self> {
        if let Some(p) = t.option("properties.security.protocol")
            && !p.eq_ignore_ascii_case("plaintext")
        {
            return Err(err(
                t,
                format!(
                    "'properties.security.protocol' = '{p}': the exactly-once Kafka sink reads its commit markers over PLAINTEXT only"
                ),
            ));
        }
        for k in [
            "properties.compression.type",
            "properties.compression.codec",
        ] {
            if let Some(c) = t.option(k)
                && !c.eq_ignore_ascii_case("none")
            {
                return Err(err(
                    t,
                    format!(
                        "'{k}' = '{c}': the exactly-once Kafka sink reads its commit markers from uncompressed batches only"
                    ),
                ));
            }
        }
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        h.write_u32(std::process::id());
        h.write_usize(subtask);
        Ok(Eos {
            topic: t.option("topic").unwrap_or_default().to_string(),
            prefix: prefix.to_string(),
            sink_uid: sink_uid.to_string(),
            marker_topic: marker_topic(t, prefix),
            marker_topic_ready: false,
            subtask,
            pending: Pending {
                buf: Vec::new(),
                count: 0,
            },
            // Never 0, which stands for "made by a version without attempts".
            attempt: h.finish() | 1,
            txns: HashMap::new(),
            known: HashMap::new(),
            floor: None,
            cancelled,
        })
    }

    fn txn(&mut self, t: &TableDef, origin: usize) -> Result<&Txn> {
        if !self.txns.contains_key(&origin) {
            let id = format!("{}-{origin}", self.prefix);
            let mut cfg = client_config(t);
            cfg.set("transactional.id", &id)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5");
            let ctx = Ctx {
                marker_topic: Some(self.marker_topic.as_str().into()),
                ..Ctx::default()
            };
            let marker_offset = ctx.marker_offset.clone();
            let producer: BaseProducer<Ctx> = cfg
                .create_with_context(ctx)
                .map_err(|e| err(t, format!("creating the producer '{id}': {e}")))?;
            producer
                .init_transactions(T)
                .map_err(|e| err(t, format!("init_transactions of '{id}': {e}")))?;
            self.txns.insert(
                origin,
                Txn {
                    producer,
                    marker_offset,
                },
            );
        }
        self.txns
            .get(&origin)
            .ok_or_else(|| err(t, "transactional producer vanished".into()))
    }

    /// Creates the marker topic (compacted, one partition) unless it exists.
    fn ensure_marker_topic(&mut self, t: &TableDef) -> Result<()> {
        if self.marker_topic_ready {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> = client_config(t)
            .create()
            .map_err(|e| err(t, format!("creating an admin client: {e}")))?;
        // -1: the broker's default replication factor.
        let topic = NewTopic::new(&self.marker_topic, 1, TopicReplication::Fixed(-1))
            .set("cleanup.policy", "compact");
        let res = block_on(admin.create_topics(
            [&topic],
            &AdminOptions::new().operation_timeout(Some(Timeout::After(T))),
        ))
        .map_err(|e| {
            err(
                t,
                format!(
                    "creating the commit marker topic '{}': {e}",
                    self.marker_topic
                ),
            )
        })?;
        for r in res {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, e)) => {
                    return Err(err(
                        t,
                        format!("creating the commit marker topic '{name}': {e}"),
                    ));
                }
            }
        }
        self.marker_topic_ready = true;
        Ok(())
    }

    /// host:port of the broker leading the marker partition.
    fn marker_leader(&self, t: &TableDef, p: &BaseProducer<Ctx>) -> Result<String> {
        let what = |e: String| {
            err(
                t,
                format!(
                    "finding the leader of '{}' partition 0: {e}",
                    self.marker_topic
                ),
            )
        };
        let md = p
            .client()
            .fetch_metadata(Some(&self.marker_topic), T)
            .map_err(|e| what(e.to_string()))?;
        let topic = md
            .topics()
            .iter()
            .find(|x| x.name() == self.marker_topic)
            .ok_or_else(|| what("the topic is not in the metadata".into()))?;
        if let Some(e) = topic.error() {
            return Err(what(format!("{:?}", RDKafkaErrorCode::from(e))));
        }
        let leader = topic
            .partitions()
            .iter()
            .find(|x| x.id() == 0)
            .map(|x| x.leader())
            .ok_or_else(|| what("no partition 0".into()))?;
        md.brokers()
            .iter()
            .find(|b| b.id() == leader)
            .map(|b| format!("{}:{}", b.host(), b.port()))
            .ok_or_else(|| what(format!("leader {leader} is not among the brokers")))
    }

    /// The highest committed sequence of `origin`, read from the marker log
    /// from offset `from`. The origin's producer is initialised first, so no
    /// transaction of a crashed attempt is left open.
    fn read_committed(&mut self, t: &TableDef, origin: usize, from: i64) -> Result<Option<u64>> {
        self.txn(t, origin)?;
        let txn = self
            .txns
            .get(&origin)
            .ok_or_else(|| err(t, "transactional producer vanished".into()))?;
        let leader = self.marker_leader(t, &txn.producer)?;
        let key = marker_key(&self.sink_uid, origin);
        let deadline = Instant::now() + OPEN_MARKER_WAIT;
        loop {
            let log = sluice_kafka_log::read_partition(&leader, &self.marker_topic, 0, from, T)
                .map_err(|e| err(t, format!("reading commit markers: {e}")))?;
            let (sequence, open) = committed_markers(&log).remove(&key).unwrap_or_default();
            tracing::debug!(
                "kafka sink {}: markers of subtask {origin} from offset {from} to {}: committed {:?}, open at {open:?}",
                self.sink_uid,
                log.high_watermark,
                sequence.map(|s| format!("{s:#x}"))
            );
            let Some(open) = open else {
                return Ok(sequence);
            };
            // Initialising the producer ended its transactions; a broker that
            // writes the abort marker late is waited for, never guessed at.
            if Instant::now() >= deadline || self.cancelled.load(Ordering::Relaxed) {
                return Err(err(
                    t,
                    format!(
                        "the commit marker at offset {open} of '{}' (key {key}) is in a transaction that has not ended {} s after its producer was initialised",
                        self.marker_topic,
                        OPEN_MARKER_WAIT.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Initialises the transactional producers of `origins` and of this subtask:
    /// `init_transactions` aborts what a crashed producer with that id left open.
    pub(crate) fn fence(&mut self, t: &TableDef, origins: &[usize]) -> Result<()> {
        let mut all = origins.to_vec();
        all.push(self.subtask);
        all.sort_unstable();
        all.dedup();
        for o in all {
            self.txn(t, o)?;
            tracing::debug!(
                "kafka sink {}: fenced subtask {o}'s producer",
                self.sink_uid
            );
        }
        Ok(())
    }

    /// The committable of the records written since the last one.
    pub(crate) fn take(&mut self, t: &TableDef) -> Result<Vec<u8>> {
        if self.pending.is_empty() {
            return Ok(Vec::new());
        }
        let floor = match self.floor {
            Some(f) => f,
            None => {
                self.ensure_marker_topic(t)?;
                let own = self.subtask;
                let topic = self.marker_topic.clone();
                let (_, high) = self
                    .txn(t, own)?
                    .producer
                    .client()
                    .fetch_watermarks(&topic, 0, T)
                    .map_err(|e| {
                        err(t, format!("reading the end of '{topic}' partition 0: {e}"))
                    })?;
                self.floor = Some(high);
                high
            }
        };
        Ok(self.pending.take(self.subtask, floor, self.attempt))
    }

    /// End of input: what was written since the last checkpoint, in a
    /// transaction without a marker.
    pub(crate) fn finish(&mut self, t: &TableDef) -> Result<()> {
        let c = self.pending.take(self.subtask, 0, self.attempt);
        self.commit(t, None, &c)
    }

    /// Produces the committable's records in one transaction; with a
    /// sequence, writes the commit marker in it and skips a committable
    /// that is committed already.
    pub(crate) fn commit(
        &mut self,
        t: &TableDef,
        sequence: Option<u64>,
        committable: &[u8],
    ) -> Result<()> {
        if committable.is_empty() {
            return Ok(());
        }
        let c = decode(committable).map_err(|e| err(t, e))?;
        let res = self.commit_records(t, &c, sequence);
        if res.is_err() {
            // A producer in an unknown transaction state is not reused: the
            // next attempt makes a new one, whose init_transactions aborts
            // it, and reads the markers again.
            self.txns.remove(&c.origin);
            self.known.remove(&c.origin);
        }
        res
    }

    fn commit_records(
        &mut self,
        t: &TableDef,
        c: &Committable<'_>,
        sequence: Option<u64>,
    ) -> Result<()> {
        let origin = c.origin;
        if let Some(seq) = sequence {
            self.ensure_marker_topic(t)?;
            let known = self.known.get(&origin).copied();
            let done = match known {
                // Made by this attempt: committed here or not at all.
                _ if c.attempt == self.attempt => known.and_then(|k| k.sequence),
                Some(k) if k.read_from <= c.floor => k.sequence,
                _ => {
                    let s = self.read_committed(t, origin, c.floor)?;
                    let s = s.max(known.and_then(|k| k.sequence));
                    self.known.insert(
                        origin,
                        Known {
                            sequence: s,
                            read_from: c.floor,
                        },
                    );
                    s
                }
            };
            tracing::debug!(
                "kafka sink {}: commit {seq:#x} of subtask {origin}, {} records, committed up to {:?}",
                self.sink_uid,
                c.records.len(),
                done.map(|d| format!("{d:#x}"))
            );
            if done.is_some_and(|d| d >= seq) {
                return Ok(());
            }
        }
        let topic = self.topic.clone();
        let marker_topic = self.marker_topic.clone();
        let key = marker_key(&self.sink_uid, origin);
        self.txn(t, origin)?;
        let txn = self
            .txns
            .get(&origin)
            .ok_or_else(|| err(t, "transactional producer vanished".into()))?;
        let p = &txn.producer;
        let fail = |what: &str, e: String| {
            // The producer is dropped after any error; a failed abort is told
            // too, and the next init_transactions aborts in its place.
            let aborted = match p.abort_transaction(T) {
                Ok(()) => String::new(),
                Err(a) => format!("; aborting it failed too: {a}"),
            };
            err(
                t,
                format!(
                    "{what} (transaction of '{}-{origin}'): {e}{aborted}",
                    self.prefix
                ),
            )
        };
        *txn.marker_offset.lock().unwrap_or_else(|p| p.into_inner()) = None;
        p.begin_transaction()
            .map_err(|e| err(t, format!("begin_transaction: {e}")))?;
        for r in &c.records {
            // A big commit is not finished when the attempt is cancelled meanwhile: it is
            // aborted, and the restore commits the same records again.
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(fail("producing", "the attempt was cancelled".into()));
            }
            send(p, &topic, r.partition, r.key, r.value).map_err(|e| fail("producing", e))?;
        }
        if let Some(seq) = sequence {
            let v = seq.to_string();
            send(
                p,
                &marker_topic,
                0,
                Some(key.as_bytes()),
                Some(v.as_bytes()),
            )
            .map_err(|e| fail("producing the commit marker", e))?;
        }
        p.commit_transaction(T)
            .map_err(|e| fail("commit_transaction", e.to_string()))?;
        let marker_offset = *txn.marker_offset.lock().unwrap_or_else(|p| p.into_inner());
        tracing::debug!(
            "kafka sink {}: committed {:?} of subtask {origin}, {} records, marker at offset {marker_offset:?}",
            self.sink_uid,
            sequence.map(|s| format!("{s:#x}")),
            c.records.len()
        );
        if let Some(seq) = sequence {
            let k = self.known.entry(origin).or_insert(Known {
                sequence: None,
                read_from: i64::MAX,
            });
            k.sequence = k.sequence.max(Some(seq));
            if origin == self.subtask
                && let Some(o) = marker_offset
            {
                // Every later commit of this subtask's records lands above it.
                self.floor = Some(o);
            }
        }
        Ok(())
    }
}

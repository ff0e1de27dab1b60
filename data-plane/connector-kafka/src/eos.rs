//! The exactly-once Kafka sink: write-ahead, because librdkafka cannot resume
//! a transaction that another producer (a crashed run) began.
//!
//! Records written between two barriers are kept in memory; `prepare_commit`
//! hands them over as the committable, so they are part of the checkpoint.
//! `commit` (after the checkpoint's `_metadata` exists, and again after a
//! restore) produces them in one transaction of the producer with
//! transactional id `{prefix}-{subtask}` (`init_transactions` fences an older
//! producer with that id and aborts its open transaction). The same
//! transaction moves a marker: the committed offset of consumer group
//! `{prefix}-{sink_uid}-{subtask}-commits` on partition 0 of the sink topic is
//! set to the checkpoint's commit sequence (generation and checkpoint id, see
//! `PendingCommit::sequence`) with `send_offsets_to_transaction`. Before
//! producing, `commit` reads that offset and skips a checkpoint it already
//! covers, so a repeated commit never duplicates.
//!
//! The marker can only be trusted once no transaction of a crashed attempt is
//! open on the sink's partitions: tansu applies a committed transaction's
//! offsets only when every other transaction on the same partitions has ended
//! (a dead producer's open transaction holds them back until its transactional
//! id is initialised again). So after a restore, `recover` initialises the
//! producers of every origin subtask it takes over (which aborts what they
//! left open), and the task layer re-commits restored committables only with
//! the attempt's first completed checkpoint, when every sink subtask has done
//! that. `subtask` is the one that
//! wrote the records (kept in the committable), so any subtask of a rescaled
//! job can commit an old subtask's records under the old marker.
//!
//! Committable (little-endian): `b"SKT1"`, `u32` origin subtask, `u32` record
//! count, then per record `i32` partition (-1: librdkafka's partitioner, which
//! is deterministic for keyed records), `i32` key length (-1: null) and key,
//! `i32` value length (-1: null, a tombstone) and value. An empty committable
//! means no records.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_runtime::Result;
use sluice_sql::TableDef;

use crate::sink::{Ctx, send};
use crate::{client_config, err};

const T: Duration = Duration::from_secs(30);
const MAGIC: &[u8; 4] = b"SKT1";

/// Records of the current epoch, already in the committable format.
pub(crate) struct Pending {
    buf: Vec<u8>,
    count: u32,
}

impl Pending {
    pub(crate) fn push(&mut self, key: Option<&[u8]>, value: Option<&[u8]>) {
        if self.buf.is_empty() {
            self.buf.extend_from_slice(MAGIC);
            self.buf.extend_from_slice(&[0; 8]);
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

    /// The committable of what was pushed since the last call.
    pub(crate) fn take(&mut self, subtask: usize) -> Vec<u8> {
        let mut b = std::mem::take(&mut self.buf);
        if !b.is_empty() {
            b[4..8].copy_from_slice(&(subtask as u32).to_le_bytes());
            b[8..12].copy_from_slice(&self.count.to_le_bytes());
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

/// Decodes a committable: origin subtask and records.
pub fn decode(c: &[u8]) -> std::result::Result<(usize, Vec<Record<'_>>), String> {
    fn i32_at(c: &[u8], at: &mut usize) -> std::result::Result<i32, String> {
        let b = c
            .get(*at..*at + 4)
            .ok_or_else(|| format!("committable truncated at byte {at}"))?;
        *at += 4;
        Ok(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn bytes<'a>(c: &'a [u8], at: &mut usize) -> std::result::Result<Option<&'a [u8]>, String> {
        let n = i32_at(c, at)?;
        if n < 0 {
            return Ok(None);
        }
        let b = c
            .get(*at..*at + n as usize)
            .ok_or_else(|| format!("committable truncated at byte {at}"))?;
        *at += n as usize;
        Ok(Some(b))
    }
    if c.get(..4) != Some(MAGIC.as_slice()) {
        return Err("not a Kafka exactly-once committable (bad magic)".into());
    }
    let mut at = 4;
    let subtask = i32_at(c, &mut at)? as u32 as usize;
    let count = i32_at(c, &mut at)? as u32 as usize;
    let mut recs = Vec::with_capacity(count);
    for _ in 0..count {
        let partition = i32_at(c, &mut at)?;
        let key = bytes(c, &mut at)?;
        let value = bytes(c, &mut at)?;
        recs.push(Record {
            partition,
            key,
            value,
        });
    }
    if at != c.len() {
        return Err(format!("{} bytes after the last record", c.len() - at));
    }
    Ok((subtask, recs))
}

/// The marker group of an origin subtask.
pub fn marker_group(prefix: &str, sink_uid: &str, subtask: usize) -> String {
    format!("{prefix}-{sink_uid}-{subtask}-commits")
}

struct Txn {
    producer: BaseProducer<Ctx>,
    marker: BaseConsumer,
}

pub(crate) struct Eos {
    topic: String,
    prefix: String,
    sink_uid: String,
    pub(crate) subtask: usize,
    pub(crate) pending: Pending,
    /// Initialised transactional producers by origin subtask.
    txns: HashMap<usize, Txn>,
    /// The attempt was cancelled: a commit in progress stops.
    cancelled: Arc<AtomicBool>,
}

impl Eos {
    pub(crate) fn new(
        topic: &str,
        prefix: &str,
        sink_uid: &str,
        subtask: usize,
        cancelled: Arc<AtomicBool>,
    ) -> Self {
        Eos {
            topic: topic.to_string(),
            prefix: prefix.to_string(),
            sink_uid: sink_uid.to_string(),
            subtask,
            pending: Pending {
                buf: Vec::new(),
                count: 0,
            },
            txns: HashMap::new(),
            cancelled,
        }
    }

    fn txn(&mut self, t: &TableDef, origin: usize) -> Result<&Txn> {
        if !self.txns.contains_key(&origin) {
            let id = format!("{}-{origin}", self.prefix);
            let mut cfg = client_config(t);
            cfg.set("transactional.id", &id)
                .set("enable.idempotence", "true")
                .set("linger.ms", "5");
            let producer: BaseProducer<Ctx> = cfg
                .create_with_context(Ctx::default())
                .map_err(|e| err(t, format!("creating the producer '{id}': {e}")))?;
            producer
                .init_transactions(T)
                .map_err(|e| err(t, format!("init_transactions of '{id}': {e}")))?;
            let group = marker_group(&self.prefix, &self.sink_uid, origin);
            let mut ccfg = client_config(t);
            ccfg.set("group.id", &group)
                .set("enable.auto.commit", "false")
                .set("isolation.level", "read_committed");
            let marker: BaseConsumer = ccfg
                .create()
                .map_err(|e| err(t, format!("creating the marker consumer '{group}': {e}")))?;
            self.txns.insert(origin, Txn { producer, marker });
        }
        self.txns
            .get(&origin)
            .ok_or_else(|| err(t, "transactional producer vanished".into()))
    }

    /// Checkpoint id of the last commit of `origin`'s records (-1: none).
    fn committed(&self, t: &TableDef, txn: &Txn) -> Result<i64> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(&self.topic, 0);
        let got = txn
            .marker
            .committed_offsets(tpl, T)
            .map_err(|e| err(t, format!("reading the commit marker: {e}")))?;
        Ok(
            match got.find_partition(&self.topic, 0).map(|e| e.offset()) {
                Some(Offset::Offset(o)) => o,
                _ => -1,
            },
        )
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

    /// Produces the committable's records in one transaction; with a
    /// checkpoint id, moves the marker in it and skips if it is there already.
    pub(crate) fn commit(
        &mut self,
        t: &TableDef,
        sequence: Option<u64>,
        committable: &[u8],
    ) -> Result<()> {
        if committable.is_empty() {
            return Ok(());
        }
        let (origin, recs) = decode(committable).map_err(|e| err(t, e))?;
        let res = self.commit_records(t, origin, sequence, &recs);
        if res.is_err() {
            // A producer in an unknown transaction state is not reused: the
            // next attempt makes a new one, whose init_transactions aborts it.
            self.txns.remove(&origin);
        }
        res
    }

    fn commit_records(
        &mut self,
        t: &TableDef,
        origin: usize,
        sequence: Option<u64>,
        recs: &[Record<'_>],
    ) -> Result<()> {
        let topic = self.topic.clone();
        // Created on first use, then looked up again so `self` stays free
        // for `committed`.
        self.txn(t, origin)?;
        let txn = self
            .txns
            .get(&origin)
            .ok_or_else(|| err(t, "transactional producer vanished".into()))?;
        if let Some(cp) = sequence {
            let marker = self.committed(t, txn)?;
            tracing::debug!(
                "kafka sink {}: commit {cp:#x} of subtask {origin}, {} records, marker at {marker:#x}",
                self.sink_uid,
                recs.len()
            );
            if marker >= cp as i64 {
                return Ok(());
            }
        }
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
        p.begin_transaction()
            .map_err(|e| err(t, format!("begin_transaction: {e}")))?;
        for r in recs {
            // A big commit is not finished when the attempt is cancelled meanwhile: it is
            // aborted, and the restore commits the same records again.
            if self.cancelled.load(Ordering::Relaxed) {
                return Err(fail("producing", "the attempt was cancelled".into()));
            }
            send(p, &topic, r.partition, r.key, r.value).map_err(|e| fail("producing", e))?;
        }
        if let Some(cp) = sequence {
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition_offset(&topic, 0, Offset::Offset(cp as i64))
                .map_err(|e| fail("marker offset", e.to_string()))?;
            let meta = txn
                .marker
                .group_metadata()
                .ok_or_else(|| fail("marker group", "no consumer group metadata".into()))?;
            p.send_offsets_to_transaction(&tpl, &meta, T)
                .map_err(|e| fail("send_offsets_to_transaction", e.to_string()))?;
        }
        p.commit_transaction(T)
            .map_err(|e| fail("commit_transaction", e.to_string()))?;
        tracing::debug!(
            "kafka sink {}: committed {:?} of subtask {origin}, {} records",
            self.sink_uid,
            sequence.map(|s| format!("{s:#x}")),
            recs.len()
        );
        Ok(())
    }
}

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::RecordBatch;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sluice_connectors::json::JsonDecoder;
use sluice_runtime::Result;
use sluice_runtime::connector::{PollStatus, SourceContext, SourceOutput, SourceReader};
use sluice_sql::TableDef;

use crate::{client_config, err};

const T: Duration = Duration::from_secs(15);
const MAX_POLL: usize = 8192;

/// Keeps the high watermark of each partition of the topic from librdkafka's
/// statistics; the source turns them into its pending records (Flink's
/// `pendingRecords`): high watermark minus its own position, summed.
struct LagContext {
    topic: String,
    high: Mutex<HashMap<i32, i64>>,
}

impl ClientContext for LagContext {
    // Only the few fields needed, read from the raw JSON: the full
    // `Statistics` type fails to decode when a broker leaves fields out.
    fn stats_raw(&self, statistics: &[u8]) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(statistics) else {
            return;
        };
        let Some(parts) = v
            .get("topics")
            .and_then(|t| t.get(&self.topic))
            .and_then(|t| t.get("partitions"))
            .and_then(|p| p.as_object())
        else {
            return;
        };
        let mut high = self.high.lock().unwrap_or_else(|p| p.into_inner());
        for (id, p) in parts {
            // Partition -1 is librdkafka's internal "unassigned" one; a negative
            // offset is not known yet.
            if let (Ok(id), Some(h)) = (
                id.parse::<i32>(),
                p.get("hi_offset").and_then(|h| h.as_i64()),
            ) && id >= 0
                && h >= 0
            {
                high.insert(id, h);
            }
        }
    }
}

impl ConsumerContext for LagContext {}

struct Part {
    id: i32,
    /// Next offset to read (the position kept in checkpoints).
    next: i64,
    /// Bounded mode: the broker said this partition is caught up (partition EOF).
    at_eof: bool,
    buf: Vec<u8>,
}

pub struct KafkaSource {
    table: TableDef,
    topic: String,
    consumer: BaseConsumer<LagContext>,
    parts: Vec<Part>,
    decoder: JsonDecoder,
    decoded: Vec<RecordBatch>,
    bounded: bool,
    pending: Arc<AtomicI64>,
}

/// Union of the restored positions of all old subtasks: partition → next
/// offset; `None` on a fresh start.
fn restored_offsets(ctx: &SourceContext, topic: &str) -> Result<Option<HashMap<i32, i64>>> {
    if ctx.restore.is_empty() {
        return Ok(None);
    }
    let t = &ctx.table;
    let mut m = HashMap::new();
    for pos in &ctx.restore {
        let v: serde_json::Value = serde_json::from_slice(pos)
            .map_err(|e| err(t, format!("restored position is not JSON: {e}")))?;
        let (Some(tp), Some(parts)) = (
            v.pointer("/kafka/topic").and_then(|x| x.as_str()),
            v.pointer("/kafka/partitions").and_then(|x| x.as_object()),
        ) else {
            return Err(err(
                t,
                format!("restored position {v} is not a Kafka position"),
            ));
        };
        if tp != topic {
            // The table now reads another topic: its old offsets mean nothing here.
            continue;
        }
        for (k, o) in parts {
            match (k.parse::<i32>(), o.as_i64()) {
                (Ok(p), Some(o)) => {
                    m.insert(p, o);
                }
                _ => {
                    return Err(err(
                        t,
                        format!("bad partition offset {k}: {o} in restored position"),
                    ));
                }
            }
        }
    }
    Ok(Some(m))
}

impl KafkaSource {
    pub fn new(ctx: &SourceContext) -> Result<Self> {
        let t = &ctx.table;
        let topic = t.option("topic").unwrap_or_default().to_string();
        let mut cfg = client_config(t);
        if t.option("properties.group.id").is_none() {
            cfg.set("group.id", format!("sluice-{}", t.name));
        }
        cfg.set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true");
        if t.option("properties.statistics.interval.ms").is_none() {
            cfg.set("statistics.interval.ms", "1000");
        }
        let ctx_lag = LagContext {
            topic: topic.clone(),
            high: Mutex::default(),
        };
        let consumer: BaseConsumer<LagContext> = cfg
            .create_with_context(ctx_lag)
            .map_err(|e| err(t, format!("creating the consumer: {e}")))?;
        let md = consumer
            .fetch_metadata(Some(&topic), T)
            .map_err(|e| err(t, format!("metadata of topic '{topic}': {e}")))?;
        let mut ids: Vec<i32> = md
            .topics()
            .iter()
            .filter(|x| x.name() == topic)
            .flat_map(|x| x.partitions().iter().map(|p| p.id()))
            .collect();
        ids.sort_unstable();
        if ids.is_empty() {
            return Err(err(
                t,
                format!("topic '{topic}' does not exist or has no partitions"),
            ));
        }
        let mine: Vec<i32> = ids
            .into_iter()
            .filter(|p| (*p as usize) % ctx.parallelism == ctx.subtask)
            .collect();
        let restored = restored_offsets(ctx, &topic)?;
        // A restored position overrides the startup mode; partitions it does
        // not name (added since) start at the earliest offset, as in Flink.
        let mode = if restored.is_some() {
            "restored"
        } else {
            t.option("scan.startup.mode").unwrap_or("group-offsets")
        };
        let bounded = t.option("scan.bounded.mode") == Some("latest-offset");
        let mut parts = Vec::new();
        let mut committed = None;
        if mode == "group-offsets" && !mine.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for p in &mine {
                tpl.add_partition(&topic, *p);
            }
            committed = Some(
                consumer
                    .committed_offsets(tpl, T)
                    .map_err(|e| err(t, format!("committed offsets: {e}")))?,
            );
        }
        let mut by_time = None;
        if mode == "timestamp" {
            let ts: i64 = t
                .option("scan.startup.timestamp-millis")
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| {
                    err(
                        t,
                        "scan.startup.mode 'timestamp' needs 'scan.startup.timestamp-millis'"
                            .into(),
                    )
                })?;
            let mut tpl = TopicPartitionList::new();
            for p in &mine {
                tpl.add_partition_offset(&topic, *p, Offset::Offset(ts))
                    .map_err(|e| err(t, format!("{e}")))?;
            }
            by_time = Some(
                consumer
                    .offsets_for_times(tpl, T)
                    .map_err(|e| err(t, format!("offsets for timestamp {ts}: {e}")))?,
            );
        }
        for p in mine {
            let (low, high) = consumer
                .fetch_watermarks(&topic, p, T)
                .map_err(|e| err(t, format!("offsets of {topic}/{p}: {e}")))?;
            let start = match mode {
                "restored" => restored
                    .as_ref()
                    .and_then(|r| r.get(&p).copied())
                    .unwrap_or(low),
                "earliest-offset" => low,
                "latest-offset" => high,
                "timestamp" => match by_time
                    .as_ref()
                    .and_then(|l| l.find_partition(&topic, p))
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => high,
                },
                _ => match committed
                    .as_ref()
                    .and_then(|l| l.find_partition(&topic, p))
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => o,
                    _ => low,
                },
            };
            parts.push(Part {
                id: p,
                next: start,
                at_eof: false,
                buf: Vec::new(),
            });
        }
        let mut tpl = TopicPartitionList::new();
        for p in &parts {
            tpl.add_partition_offset(&topic, p.id, Offset::Offset(p.next))
                .map_err(|e| err(t, format!("{e}")))?;
        }
        consumer
            .assign(&tpl)
            .map_err(|e| err(t, format!("assigning partitions: {e}")))?;
        let ignore = t
            .option("json.ignore-parse-errors")
            .or(t.option("value.json.ignore-parse-errors"))
            .map(|v| v == "true")
            .unwrap_or(false);
        Ok(KafkaSource {
            table: t.clone(),
            topic,
            consumer,
            parts,
            decoder: JsonDecoder::new(
                ctx.schema.clone(),
                MAX_POLL,
                ignore,
                &format!("table '{}'", t.name),
            )?,
            decoded: Vec::new(),
            bounded,
            pending: ctx.pending_records.clone(),
        })
    }

    fn publish_pending(&self) {
        let high = self
            .consumer
            .context()
            .high
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut sum = 0;
        let mut known = false;
        for p in &self.parts {
            if let Some(h) = high.get(&p.id) {
                sum += (h - p.next).max(0);
                known = true;
            }
        }
        if known {
            self.pending.store(sum, Ordering::Relaxed);
        }
    }

    /// A bounded partition ends when the consumer reaches the end of the log
    /// (partition EOF, from the fetch's high watermark), not at the end offset
    /// listed at start: the tansu broker we test against answers
    /// ListOffsets(latest) with a wrong offset (1).
    fn done(&self, p: &Part) -> bool {
        self.bounded && p.at_eof
    }
}

impl SourceReader for KafkaSource {
    fn splits(&self) -> usize {
        self.parts.len()
    }

    fn poll(&mut self, out: &mut SourceOutput) -> Result<PollStatus> {
        if self.parts.is_empty() && !self.bounded {
            // More subtasks than partitions: this one has nothing to read, but it
            // stays (as Flink's idle source readers do), so checkpoints go on; with
            // no splits its watermark holds nothing back.
            std::thread::sleep(Duration::from_millis(100));
            return Ok(PollStatus::Idle);
        }
        if self.parts.is_empty() || (self.bounded && self.parts.iter().all(|p| self.done(p))) {
            for i in 0..self.parts.len() {
                out.finished_splits.push(i);
            }
            return Ok(PollStatus::Finished);
        }
        let mut got = 0;
        let mut timeout = Duration::from_millis(100);
        while got < MAX_POLL {
            let Some(m) = self.consumer.poll(timeout) else {
                break;
            };
            timeout = Duration::ZERO;
            let m = match m {
                Ok(m) => m,
                Err(KafkaError::PartitionEOF(part)) => {
                    if let Some(p) = self.parts.iter_mut().find(|p| p.id == part) {
                        p.at_eof = true;
                    }
                    continue;
                }
                Err(e) => return Err(err(&self.table, format!("consuming: {e}"))),
            };
            let Some(i) = self.parts.iter().position(|p| p.id == m.partition()) else {
                continue;
            };
            let p = &mut self.parts[i];
            p.at_eof = false;
            p.next = m.offset() + 1;
            if let Some(payload) = m.payload() {
                p.buf.extend_from_slice(payload);
                p.buf.push(b'\n');
                got += 1;
            }
        }
        for (i, p) in self.parts.iter_mut().enumerate() {
            if !p.buf.is_empty() {
                let buf = std::mem::take(&mut p.buf);
                self.decoder.decode_lines(&buf, &mut self.decoded)?;
                out.batches.extend(self.decoded.drain(..).map(|b| (i, b)));
                p.buf = buf;
                p.buf.clear();
            }
        }
        for i in 0..self.parts.len() {
            if self.done(&self.parts[i]) {
                out.finished_splits.push(i);
            }
        }
        self.publish_pending();
        Ok(if got == 0 {
            PollStatus::Idle
        } else {
            PollStatus::Active
        })
    }

    fn position(&self) -> Vec<u8> {
        let parts: serde_json::Map<String, serde_json::Value> = self
            .parts
            .iter()
            .map(|p| (p.id.to_string(), p.next.into()))
            .collect();
        serde_json::json!({"kafka": {"topic": self.topic, "partitions": parts}})
            .to_string()
            .into_bytes()
    }
}

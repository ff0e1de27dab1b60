use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int8Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientContext, Message};
use sluice_connectors::json::encode_rows;
use sluice_runtime::connector::{SinkContext, SinkWriter};
use sluice_runtime::{Result, RowKind};
use sluice_sql::TableDef;

use crate::eos::Eos;
use crate::{client_config, err};

/// Remembers the first failed delivery so the job fails instead of losing
/// records, and the offset of the last record delivered to `marker_topic`
/// (the exactly-once sink's commit markers).
#[derive(Clone, Default)]
pub(crate) struct Ctx {
    pub(crate) failed: Arc<Mutex<Option<String>>>,
    pub(crate) marker_topic: Option<Arc<str>>,
    pub(crate) marker_offset: Arc<Mutex<Option<i64>>>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Err((e, _)) => {
                let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
                if f.is_none() {
                    *f = Some(e.to_string());
                }
            }
            Ok(m) => {
                if self.marker_topic.as_deref() == Some(m.topic()) {
                    *self.marker_offset.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(m.offset());
                }
            }
        }
    }
}

pub struct KafkaSink {
    table: TableDef,
    topic: String,
    /// At-least-once: records go straight to this producer.
    producer: Option<BaseProducer<Ctx>>,
    /// Exactly-once: records are kept for the checkpoint (write-ahead).
    eos: Option<Eos>,
    ctx: Ctx,
    value_cols: Vec<usize>,
    key_cols: Vec<usize>,
    key_raw: bool,
    updating: bool,
    upsert: bool,
    buf: Vec<u8>,
    ends: Vec<usize>,
    kbuf: Vec<u8>,
    kends: Vec<usize>,
}

impl KafkaSink {
    pub fn new(sc: &SinkContext) -> Result<Self> {
        let t = &sc.table;
        let names: Vec<String> = t.physical.iter().map(|c| c.name.clone()).collect();
        let find = |n: &str| {
            names
                .iter()
                .position(|x| x.eq_ignore_ascii_case(n.trim()))
                .ok_or_else(|| err(t, format!("key.fields names unknown column '{}'", n.trim())))
        };
        let upsert = t.connector == "upsert-kafka";
        let key_cols: Vec<usize> = if upsert {
            t.primary_key.clone()
        } else {
            match t.option("key.fields") {
                Some(v) => v
                    .split(';')
                    .flat_map(|s| s.split(','))
                    .filter(|s| !s.trim().is_empty())
                    .map(find)
                    .collect::<Result<_>>()?,
                None => Vec::new(),
            }
        };
        let except_key = t.option("value.fields-include") == Some("EXCEPT_KEY");
        let value_cols = (0..names.len())
            .filter(|i| !(except_key && key_cols.contains(i)))
            .collect();
        let ctx = Ctx::default();
        let topic = t.option("topic").unwrap_or_default().to_string();
        // The job's mode and the table's wish together (the task layer may
        // pass the job's mode alone).
        let (producer, eos) = if sc.exactly_once
            && sluice_runtime::connector::sink_wants_exactly_once(t)
        {
            let prefix = t
                .option("sink.transactional-id-prefix")
                .filter(|p| !p.is_empty())
                .ok_or_else(|| {
                    err(
                        t,
                        "'sink.delivery-guarantee' = 'exactly-once' needs 'sink.transactional-id-prefix'"
                            .into(),
                    )
                })?;
            (
                None,
                Some(Eos::new(
                    t,
                    prefix,
                    &sc.sink_uid,
                    sc.subtask,
                    sc.cancelled.clone(),
                )?),
            )
        } else {
            let mut cfg = client_config(t);
            cfg.set("linger.ms", "5");
            let producer: BaseProducer<Ctx> = cfg
                .create_with_context(ctx.clone())
                .map_err(|e| err(t, format!("creating the producer: {e}")))?;
            (Some(producer), None)
        };
        Ok(KafkaSink {
            table: t.clone(),
            topic,
            producer,
            eos,
            ctx,
            value_cols,
            key_raw: t.option("key.format") == Some("raw"),
            key_cols,
            updating: sc.updating,
            upsert,
            buf: Vec::new(),
            ends: Vec::new(),
            kbuf: Vec::new(),
            kends: Vec::new(),
        })
    }

    fn check_failed(&self) -> Result<()> {
        match self
            .ctx
            .failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        {
            Some(e) => Err(err(
                &self.table,
                format!("delivery to topic '{}' failed: {e}", self.topic),
            )),
            None => Ok(()),
        }
    }

    fn project(batch: &RecordBatch, cols: &[usize]) -> Result<RecordBatch> {
        let schema = batch.schema();
        let fields: Vec<Field> = cols.iter().map(|&c| schema.field(c).clone()).collect();
        let arrays: Vec<ArrayRef> = cols.iter().map(|&c| batch.column(c).clone()).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)
            .map_err(|e| sluice_runtime::RuntimeError::Plan(format!("kafka sink: {e}")))
    }
}

impl SinkWriter for KafkaSink {
    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.check_failed()?;
        let v = Self::project(batch, &self.value_cols)?;
        self.buf.clear();
        self.ends.clear();
        encode_rows(&v, v.num_columns(), &mut self.buf, &mut self.ends, false)?;
        self.kbuf.clear();
        self.kends.clear();
        if !self.key_cols.is_empty() {
            let k = Self::project(batch, &self.key_cols)?;
            if self.key_raw && k.num_columns() == 1 {
                for r in 0..k.num_rows() {
                    if !k.column(0).is_null(r) {
                        let s = arrow_cast_string(k.column(0), r);
                        self.kbuf.extend_from_slice(s.as_bytes());
                    }
                    self.kends.push(self.kbuf.len());
                }
            } else {
                encode_rows(&k, k.num_columns(), &mut self.kbuf, &mut self.kends, false)?;
            }
        }
        let kinds = self.updating.then(|| {
            batch
                .column(batch.num_columns() - 1)
                .as_primitive::<Int8Type>()
                .clone()
        });
        let mut start = 0;
        let mut kstart = 0;
        for r in 0..batch.num_rows() {
            let payload = &self.buf[start..self.ends[r]];
            start = self.ends[r];
            let key = if self.key_cols.is_empty() {
                None
            } else {
                let k = &self.kbuf[kstart..self.kends[r]];
                kstart = self.kends[r];
                Some(k)
            };
            let kind = kinds
                .as_ref()
                .map(|k| RowKind::from_i8(k.value(r)))
                .unwrap_or(RowKind::Insert);
            if kind == RowKind::UpdateBefore && self.upsert {
                continue;
            }
            let tombstone = self.upsert && kind == RowKind::Delete;
            let value = (!tombstone).then_some(payload);
            if let Some(eos) = self.eos.as_mut() {
                eos.pending.push(key, value);
                continue;
            }
            let Some(producer) = self.producer.as_ref() else {
                continue;
            };
            send(producer, &self.topic, -1, key, value).map_err(|e| err(&self.table, e))?;
        }
        if let Some(p) = self.producer.as_ref() {
            p.poll(Duration::ZERO);
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        // Exactly-once: nothing leaves before commit; pending records are in memory.
        if let Some(p) = self.producer.as_ref() {
            p.flush(Duration::from_secs(60)).map_err(|e| {
                err(
                    &self.table,
                    format!("flushing to topic '{}': {e}", self.topic),
                )
            })?;
        }
        self.check_failed()
    }

    /// End of input. Exactly-once: what was written since the last
    /// checkpoint is committed in a transaction of its own, without a marker
    /// (the task layer takes a final checkpoint first, which leaves nothing).
    fn finish(&mut self) -> Result<()> {
        if let Some(eos) = self.eos.as_mut() {
            eos.finish(&self.table)?;
        }
        self.flush()
    }

    fn prepare_commit(&mut self, checkpoint_id: u64) -> Result<Vec<u8>> {
        let _ = checkpoint_id;
        match self.eos.as_mut() {
            Some(eos) => eos.take(&self.table),
            None => {
                self.flush()?;
                Ok(Vec::new())
            }
        }
    }

    fn recover(&mut self, origins: &[usize]) -> Result<()> {
        match self.eos.as_mut() {
            Some(eos) => eos.fence(&self.table, origins),
            None => Ok(()),
        }
    }

    fn commit(&mut self, sequence: u64, committable: &[u8]) -> Result<()> {
        match self.eos.as_mut() {
            Some(eos) => eos.commit(&self.table, Some(sequence), committable),
            None if committable.is_empty() => Ok(()),
            None => Err(err(
                &self.table,
                format!(
                    "commit {sequence:#x} holds an exactly-once committable but the sink is not exactly-once now ('sink.delivery-guarantee' changed?)"
                ),
            )),
        }
    }
}

/// Produces one record, waiting while librdkafka's queue is full.
pub(crate) fn send<C: ProducerContext<DeliveryOpaque = ()>>(
    producer: &BaseProducer<C>,
    topic: &str,
    partition: i32,
    key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> std::result::Result<(), String> {
    loop {
        let mut rec: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(topic);
        if partition >= 0 {
            rec = rec.partition(partition);
        }
        if let Some(v) = value {
            rec = rec.payload(v);
        }
        if let Some(k) = key {
            rec = rec.key(k);
        }
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                // Backpressure from librdkafka's queue: let deliveries complete.
                producer.poll(Duration::from_millis(50));
            }
            Err((e, _)) => return Err(format!("producing to topic '{topic}': {e}")),
        }
    }
}

fn arrow_cast_string(a: &ArrayRef, r: usize) -> String {
    match a.as_string_opt::<i32>() {
        Some(s) => s.value(r).to_string(),
        None => format!("{:?}", a.slice(r, 1)),
    }
}

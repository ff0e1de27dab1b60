use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow_array::cast::AsArray;
use arrow_array::types::Int8Type;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{Field, Schema};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use sluice_connectors::json::encode_rows;
use sluice_runtime::connector::{SinkContext, SinkWriter};
use sluice_runtime::{Result, RowKind};
use sluice_sql::TableDef;

use crate::{client_config, err};

/// Remembers the first failed delivery so the job fails instead of losing records.
#[derive(Clone, Default)]
struct Ctx {
    failed: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();

    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        if let Err((e, _)) = r {
            let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                *f = Some(e.to_string());
            }
        }
    }
}

pub struct KafkaSink {
    table: TableDef,
    topic: String,
    producer: BaseProducer<Ctx>,
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
        let mut cfg = client_config(t);
        cfg.set("linger.ms", "5");
        let producer: BaseProducer<Ctx> = cfg
            .create_with_context(ctx.clone())
            .map_err(|e| err(t, format!("creating the producer: {e}")))?;
        Ok(KafkaSink {
            table: t.clone(),
            topic: t.option("topic").unwrap_or_default().to_string(),
            producer,
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
            loop {
                let mut rec: BaseRecord<'_, [u8], [u8], ()> = BaseRecord::to(&self.topic);
                if !tombstone {
                    rec = rec.payload(payload);
                }
                if let Some(k) = key {
                    rec = rec.key(k);
                }
                match self.producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // Backpressure from librdkafka's queue: let deliveries complete.
                        self.producer.poll(Duration::from_millis(50));
                    }
                    Err((e, _)) => {
                        return Err(err(
                            &self.table,
                            format!("producing to topic '{}': {e}", self.topic),
                        ));
                    }
                }
            }
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.producer.flush(Duration::from_secs(60)).map_err(|e| {
            err(
                &self.table,
                format!("flushing to topic '{}': {e}", self.topic),
            )
        })?;
        self.check_failed()
    }

    fn finish(&mut self) -> Result<()> {
        self.flush()
    }
}

fn arrow_cast_string(a: &ArrayRef, r: usize) -> String {
    match a.as_string_opt::<i32>() {
        Some(s) => s.value(r).to_string(),
        None => format!("{:?}", a.slice(r, 1)),
    }
}

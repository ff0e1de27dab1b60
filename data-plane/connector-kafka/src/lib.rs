//! `'connector' = 'kafka'` and `'upsert-kafka'` for the Sluice engine, over
//! rdkafka (bundled librdkafka 2.12). At-least-once: the sink flushes on
//! barriers and at the end; exactly-once is the cluster's (two-phase) sink.
//!
//! Source: the topic's partitions are spread over subtasks (partition `p` to
//! subtask `p % parallelism`), assigned directly (no consumer-group
//! rebalancing) so each partition is a split with its own watermark; the next
//! offset of each partition is the reader's position (kept in checkpoints).
//! `scan.startup.mode`: `earliest-offset`, `latest-offset`, `group-offsets`
//! (default, as Flink; falls back to earliest), `timestamp`
//! (`scan.startup.timestamp-millis`). `scan.bounded.mode = 'latest-offset'`
//! stops at the end offsets seen at start.
//!
//! Sink: value in `json`; optional key from `key.fields` (`key.format` json or
//! raw); `upsert-kafka` keys by the primary key, skips `-U` and writes `-D` as
//! a tombstone. Delivery failures fail the job.
//!
//! Tests: the seed job runs against the real broker in `sluice-engine`'s tests.

mod sink;
mod source;

use std::sync::Arc;

use rdkafka::ClientConfig;
use sluice_runtime::connector::{
    ConnectorFactory, Connectors, SinkContext, SinkWriter, SourceContext, SourceReader,
};
use sluice_runtime::{Result, RuntimeError};
use sluice_sql::TableDef;

pub(crate) fn err(table: &TableDef, message: String) -> RuntimeError {
    RuntimeError::Connector {
        connector: table.connector.clone(),
        table: table.name.clone(),
        message,
    }
}

/// Client configuration from the table's `properties.*` options.
pub(crate) fn client_config(table: &TableDef) -> ClientConfig {
    let mut c = ClientConfig::new();
    for (k, v) in &table.options {
        if let Some(p) = k.strip_prefix("properties.") {
            c.set(p, v);
        }
    }
    c
}

struct Kafka;

impl ConnectorFactory for Kafka {
    fn create_source(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>> {
        Ok(Box::new(source::KafkaSource::new(ctx)?))
    }

    fn create_sink(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(sink::KafkaSink::new(ctx)?))
    }
}

pub fn register(c: &mut Connectors) {
    c.register("kafka", Arc::new(Kafka));
    c.register("upsert-kafka", Arc::new(Kafka));
}

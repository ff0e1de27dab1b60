//! `'connector' = 'kafka'` and `'upsert-kafka'` for the Sluice engine, over
//! rdkafka (bundled librdkafka 2.12).
//!
//! Source: the topic's partitions are spread over subtasks (partition `p` to
//! subtask `p % parallelism`), assigned directly (no consumer-group
//! rebalancing) so each partition is a split with its own watermark. The
//! position (kept in checkpoints) is the next offset of each partition:
//! `{"kafka":{"topic":"t","partitions":{"0":42,"2":17}}}`. A restore takes the
//! union of all old subtasks' positions, so partitions may move to other
//! subtasks when the parallelism changes; a partition it does not name starts
//! at the earliest offset. `scan.startup.mode` only applies without a restored
//! position: `earliest-offset`, `latest-offset`, `group-offsets` (default, as
//! Flink; falls back to earliest), `timestamp`
//! (`scan.startup.timestamp-millis`). `scan.bounded.mode = 'latest-offset'`
//! stops at the end of the log.
//!
//! Sink: value in `json`; optional key from `key.fields` (`key.format` json or
//! raw); `upsert-kafka` keys by the primary key, skips `-U` and writes `-D` as
//! a tombstone. Delivery failures fail the job. At-least-once by default
//! (flush on barriers and at the end). `'sink.delivery-guarantee' =
//! 'exactly-once'` (with `'sink.transactional-id-prefix'`, optionally
//! `'sink.commit-marker-topic'`) in an exactly-once job: a write-ahead
//! two-phase sink whose commit markers are records read back from the raw log,
//! see [`eos`].
//!
//! Tests (real tansu broker through `sluice-test-support`):
//! `dev/cargo test -p sluice-connector-kafka` — source restore at another
//! parallelism, and the exactly-once sink through every crash window, checked
//! on the raw log with `sluice_test_support::kafka_log` (the same reader,
//! `sluice-kafka-log`, that the sink uses for its markers).

pub mod eos;
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

/// Waits for one of rdkafka's admin futures (they complete on librdkafka's
/// own thread, so polling them needs no async runtime).
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    use std::time::Duration;
    struct W(std::thread::Thread);
    impl Wake for W {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(W(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
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

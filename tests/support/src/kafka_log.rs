//! The read-committed oracle for Kafka output: a partition's whole raw log,
//! each record resolved through its transaction's marker
//! ([`sluice_kafka_log`], the reader the exactly-once sink uses for its
//! commit markers). The tansu broker we test against does not filter aborted
//! records for read_committed consumers, so tests read the log this way.

use std::time::Duration;

use anyhow::{Context, Result};
pub use sluice_kafka_log::{Fate, LogRecord, Marker, PartitionLog};

/// Reads partition `partition` of `topic` from offset 0 to its high
/// watermark from the first bootstrap broker (the single-broker test service
/// leads every partition).
pub fn read_partition(bootstrap: &str, topic: &str, partition: i32) -> Result<PartitionLog> {
    let addr = bootstrap.split(',').next().unwrap_or(bootstrap).trim();
    sluice_kafka_log::read_partition(addr, topic, partition, 0, Duration::from_secs(30))
        .with_context(|| format!("reading the log of {topic}/{partition}"))
}

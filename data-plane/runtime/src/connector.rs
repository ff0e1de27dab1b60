//! What a connector implements. Connector crates register factories by
//! connector name (Flink's `'connector' = '…'`); the executor asks them for
//! one reader or writer per subtask.
//!
//! Exactly-once contract: a source's `position` is kept in each checkpoint
//! and the union of all subtasks' positions comes back in
//! `SourceContext::restore`; a sink seals its epoch in `prepare_commit`
//! (the committable goes into the checkpoint) and makes it visible in
//! `commit` after the checkpoint completed — again after a restore, so
//! commit is idempotent and a committable names the subtask that wrote it
//! (any subtask of a rescaled job may commit it). Checkpoint ids must grow
//! across restores: transactional sinks skip ids they already committed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use arrow_array::RecordBatch;
use arrow_schema::{Field, Schema, SchemaRef};
use sluice_sql::TableDef;

use crate::error::{Result, RuntimeError};

/// Arrow schema of a table's physical columns: what a source produces and a sink receives.
pub fn physical_schema(table: &TableDef) -> SchemaRef {
    Arc::new(Schema::new(
        table
            .physical
            .iter()
            .map(|c| Field::new(&c.name, c.ty.clone(), true))
            .collect::<Vec<_>>(),
    ))
}

#[derive(Debug, Clone)]
pub struct SourceContext {
    pub table: TableDef,
    pub schema: SchemaRef,
    pub subtask: usize,
    pub parallelism: usize,
    /// Positions of ALL subtasks of the restored snapshot (empty = fresh
    /// start); a reader keeps what belongs to its splits, so a restore may
    /// change the parallelism.
    pub restore: Vec<Vec<u8>>,
    /// Records the reader knows are waiting for it at the source (Kafka: the
    /// consumer lag summed over its partitions; Flink's `pendingRecords`), or
    /// -1 when it does not know. Exported as `sluice_source_pending_records`.
    pub pending_records: Arc<AtomicI64>,
}

/// What one `poll` produced: batches tagged with the split (partition, file)
/// they came from, so watermarks are kept per split, and splits that ended.
#[derive(Default)]
pub struct SourceOutput {
    pub batches: Vec<(usize, RecordBatch)>,
    pub finished_splits: Vec<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollStatus {
    /// More may come right away.
    Active,
    /// Nothing now (the reader already waited a little).
    Idle,
    /// Bounded input exhausted.
    Finished,
}

pub trait SourceReader: Send {
    /// Number of splits this reader owns; batches name them by index. Zero: the
    /// reader has nothing to read (its watermark then holds nobody back).
    fn splits(&self) -> usize;
    fn poll(&mut self, out: &mut SourceOutput) -> Result<PollStatus>;
    /// Position to resume from, for checkpoints. Self-describing (split →
    /// offset) so that a reader at another parallelism can take the splits
    /// it owns from the union of all old positions.
    fn position(&self) -> Vec<u8>;
}

#[derive(Debug, Clone)]
pub struct SinkContext {
    pub table: TableDef,
    /// Physical columns of the sink (plus `$op` last when `updating`).
    pub schema: SchemaRef,
    pub updating: bool,
    pub subtask: usize,
    pub parallelism: usize,
    pub job_id: String,
    /// Stable per pipeline across restores: `"{pipeline}-{sink table}"`.
    pub sink_uid: String,
    /// The job checkpoints exactly-once and the sink asked for it.
    pub exactly_once: bool,
    /// Set when this attempt is cancelled: a sink that waits on something outside
    /// (a Kafka commit marker) stops waiting.
    pub cancelled: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Whether a sink table asks for exactly-once delivery when the job checkpoints
/// exactly-once (`SinkContext::exactly_once = job_exactly_once && this`):
/// Kafka only with `'sink.delivery-guarantee' = 'exactly-once'`; filesystem
/// and jdbc always; the others (print, blackhole) never.
pub fn sink_wants_exactly_once(table: &TableDef) -> bool {
    match table.connector.as_str() {
        "kafka" | "upsert-kafka" => table.option("sink.delivery-guarantee") == Some("exactly-once"),
        "filesystem" | "jdbc" => true,
        _ => false,
    }
}

pub trait SinkWriter: Send {
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Makes everything written so far durable (at-least-once: on barriers).
    fn flush(&mut self) -> Result<()>;
    /// End of input: flush and commit.
    fn finish(&mut self) -> Result<()>;
    /// Phase 1 at barrier `checkpoint_id`: seal what was written since the
    /// last call; returns the committable stored in the checkpoint. Nothing
    /// of it is visible yet (exactly-once).
    fn prepare_commit(&mut self, checkpoint_id: u64) -> Result<Vec<u8>> {
        let _ = checkpoint_id;
        self.flush()?;
        Ok(Vec::new())
    }
    /// Phase 2, after the checkpoint's `_metadata` is written. Idempotent:
    /// it is called again with the same committable after a restore (the
    /// crash may have come before or after the first commit). `sequence` is
    /// the checkpoint's [`PendingCommit::sequence`](crate::task::PendingCommit::sequence),
    /// which grows across restores (checkpoint ids do not): the number to keep
    /// as a commit marker.
    fn commit(&mut self, sequence: u64, committable: &[u8]) -> Result<()> {
        let _ = (sequence, committable);
        Ok(())
    }
    /// After a restore, before anything is committed: fence whatever the crashed
    /// attempt's subtasks `origins` (whose committables this subtask now owns) may have
    /// left half-done, so that what the external system reports as committed is settled
    /// when the restored committables are re-committed.
    fn recover(&mut self, origins: &[usize]) -> Result<()> {
        let _ = origins;
        Ok(())
    }
}

pub trait ConnectorFactory: Send + Sync {
    fn create_source(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>>;
    fn create_sink(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>>;
}

#[derive(Default, Clone)]
pub struct Connectors {
    map: BTreeMap<String, Arc<dyn ConnectorFactory>>,
}

impl Connectors {
    pub fn register(&mut self, name: &str, f: Arc<dyn ConnectorFactory>) {
        self.map.insert(name.to_string(), f);
    }

    pub fn get(&self, table: &TableDef) -> Result<&Arc<dyn ConnectorFactory>> {
        self.map
            .get(&table.connector)
            .ok_or_else(|| RuntimeError::Connector {
                connector: table.connector.clone(),
                table: table.name.clone(),
                message: format!(
                    "no such connector in this engine build (available: {})",
                    self.map.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            })
    }
}

//! What a connector implements. Connector crates register factories by
//! connector name (Flink's `'connector' = '…'`); the executor asks them for
//! one reader or writer per subtask.

use std::collections::BTreeMap;
use std::sync::Arc;

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
    /// Number of splits this reader owns; batches name them by index.
    fn splits(&self) -> usize;
    fn poll(&mut self, out: &mut SourceOutput) -> Result<PollStatus>;
    /// Position to resume from (offsets per split), for checkpoints.
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
}

pub trait SinkWriter: Send {
    fn write(&mut self, batch: &RecordBatch) -> Result<()>;
    /// Makes everything written so far durable (at-least-once: on barriers).
    fn flush(&mut self) -> Result<()>;
    /// End of input: flush and commit.
    fn finish(&mut self) -> Result<()>;
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

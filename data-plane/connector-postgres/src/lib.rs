//! `'connector' = 'jdbc'` for PostgreSQL: a sink with Flink's JDBC option
//! names — `url` (`jdbc:postgresql://host:port/db`, `postgres://…` also
//! accepted), `table-name`, `username`, `password`,
//! `sink.buffer-flush.max-rows` (default 100).
//!
//! Append mode without a primary key; upsert mode when the sink table has
//! `PRIMARY KEY (…) NOT ENFORCED`: `+I`/`+U` become `INSERT … ON CONFLICT (pk)
//! DO UPDATE`, `-D` deletes, `-U` is ignored. Within one flush only the last
//! change of a key is written (PostgreSQL refuses to touch a row twice in one
//! `ON CONFLICT` statement, and the result is the same). Identifiers follow
//! PostgreSQL's rules as Flink passes them unquoted: lowercased unless written
//! in double quotes. Values travel as text arrays (`UNNEST($1::text[], …)`)
//! cast to the column's SQL type, one statement per flush.
//!
//! At-least-once (the job does not checkpoint exactly-once): rows are written
//! when `sink.buffer-flush.max-rows` are buffered, on barriers and at the end.
//! Exactly-once, write-ahead: rows of an epoch stay in memory;
//! `prepare_commit` returns them as the committable
//! (`{"jdbc":{"subtask":s,"rows":[["+I"|"-D",[v…]],…]}}`, values as text or
//! null); `commit` writes them and moves the marker row `(job_id, sink_uid,
//! subtask) → checkpoint_id` of table `sluice_sink_commits` (created on first
//! use, in the sink's database) in ONE transaction, and does nothing when the
//! marker already holds this or a newer checkpoint, so repeating a commit
//! after a restore never duplicates. The marker subtask is the one that wrote
//! the rows, so a rescaled job commits old committables under old markers.
//! Checkpoint ids must grow across restores of the same job.
//!
//! The writer runs its queries on a current-thread tokio runtime of its own:
//! call it from a plain thread, not from inside an async task.
//!
//! [`register`] adds the connector to a `Connectors` registry. Test (needs
//! PostgreSQL through `sluice-test-support`):
//! `dev/cargo test -p sluice-connector-postgres`.

mod sink;

use std::sync::Arc;

use sluice_runtime::connector::{
    ConnectorFactory, Connectors, SinkContext, SinkWriter, SourceContext, SourceReader,
};
use sluice_runtime::{Result, RuntimeError};

pub use sink::{MARKER_TABLE, pg_connect_url};

struct Jdbc;

impl ConnectorFactory for Jdbc {
    fn create_source(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>> {
        Err(RuntimeError::Connector {
            connector: "jdbc".into(),
            table: ctx.table.name.clone(),
            message: "the jdbc connector is a sink only in this engine".into(),
        })
    }

    fn create_sink(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        Ok(Box::new(sink::JdbcSink::new(ctx)?))
    }
}

pub fn register(c: &mut Connectors) {
    c.register("jdbc", Arc::new(Jdbc));
}

//! Built-in connectors of the Sluice engine, with Flink's option names:
//! `datagen`, `filesystem` (JSON lines, atomic part-file commit; two-phase
//! exactly-once sink), `print`, `blackhole`; and the `json` format used by
//! them and by the Kafka connector. Sources keep self-describing JSON
//! positions that a restore at another parallelism re-spreads (see
//! [`datagen`] and [`filesystem`]).
//!
//! [`register`] adds them to a [`Connectors`] registry. Test (no services
//! needed): `dev/cargo test -p sluice-connectors` — includes restores at
//! another parallelism and the filesystem sink's crash windows.

pub mod datagen;
pub mod filesystem;
pub mod json;
pub mod print;

use std::sync::Arc;

use sluice_runtime::connector::{
    ConnectorFactory, Connectors, SinkContext, SinkWriter, SourceContext, SourceReader,
};
use sluice_runtime::{Result, RuntimeError};

struct Builtin(&'static str);

fn unreadable(ctx_table: &str, connector: &str, what: &str) -> RuntimeError {
    RuntimeError::Connector {
        connector: connector.into(),
        table: ctx_table.into(),
        message: format!("connector cannot be used as a {what}"),
    }
}

impl ConnectorFactory for Builtin {
    fn create_source(&self, ctx: &SourceContext) -> Result<Box<dyn SourceReader>> {
        match self.0 {
            "datagen" => datagen::create(ctx),
            "filesystem" => filesystem::create_source(ctx),
            other => Err(unreadable(&ctx.table.name, other, "source")),
        }
    }

    fn create_sink(&self, ctx: &SinkContext) -> Result<Box<dyn SinkWriter>> {
        match self.0 {
            "filesystem" => filesystem::create_sink(ctx),
            "print" => print::create_print(ctx),
            "blackhole" => Ok(Box::new(print::BlackholeSink)),
            other => Err(unreadable(&ctx.table.name, other, "sink")),
        }
    }
}

pub fn register(c: &mut Connectors) {
    for name in ["datagen", "filesystem", "print", "blackhole"] {
        c.register(name, Arc::new(Builtin(name)));
    }
}

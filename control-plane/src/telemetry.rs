//! Structured logs through tracing.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber. `RUST_LOG`, when set, wins over the configured filter.
pub fn init(cfg: &LogConfig) -> anyhow::Result<()> {
    let directives = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => v,
        _ => cfg.filter.clone(),
    };
    let mut filter = EnvFilter::try_new(&directives)
        .map_err(|e| anyhow::anyhow!("log filter '{directives}': {e}"))?;
    use std::io::IsTerminal;
    // sqlx reports PostgreSQL NOTICEs (e.g. "relation already exists, skipping"
    // on every start) at INFO: noise, not news.
    // An explicit sqlx directive of the operator wins.
    if !directives.contains("sqlx") {
        filter = filter.add_directive("sqlx::postgres::notice=warn".parse()?);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let res = match cfg.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.try_init(),
    };
    res.map_err(|e| anyhow::anyhow!("install the log subscriber: {e}"))
}

//! The `sluice-engine` binary end to end: the seed job against the real
//! Kafka-compatible broker, and jobs over JSON files.

mod checkpoint;
mod cluster;
mod files;
mod incremental;
mod join;
mod kill_campaign;
mod seed_kafka;

use std::path::Path;
use std::process::Command;

/// Runs `sluice-engine run JOB --json` and returns its summary.
pub fn run_engine(job: &Path, parallelism: usize) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-engine"))
        .args([
            "run",
            &job.to_string_lossy(),
            "--json",
            "--progress-ms",
            "0",
            "-p",
            &parallelism.to_string(),
        ])
        .output()
        .expect("starting sluice-engine");
    assert!(
        out.status.success(),
        "sluice-engine failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    if std::env::var_os("TEST_LOG").is_some() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("summary {line:?}: {e}"))
}

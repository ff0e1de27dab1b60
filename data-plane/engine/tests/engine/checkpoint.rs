//! `sluice-engine run --checkpoint-dir … --checkpoint-interval-ms …` and
//! `--restore latest`: checkpoints land under a claimed generation, and a
//! second run resumes from the newest one instead of starting over.

use std::process::Command;

const ROWS: u64 = 60_000;

fn job(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("job.sql");
    std::fs::write(
        &path,
        format!(
            "CREATE TABLE src (
  id BIGINT,
  ts_ms BIGINT,
  ts AS TO_TIMESTAMP_LTZ(ts_ms, 3),
  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND
) WITH ('connector' = 'datagen', 'number-of-rows' = '{ROWS}', 'rows-per-second' = '40000',
  'fields.id.kind' = 'sequence', 'fields.id.start' = '0', 'fields.id.end' = '{last}',
  'fields.ts_ms.kind' = 'sequence', 'fields.ts_ms.start' = '0', 'fields.ts_ms.end' = '{last}');
CREATE TABLE snk (ws TIMESTAMP(3), we TIMESTAMP(3), n BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO snk SELECT window_start, window_end, COUNT(*)
  FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '1' SECOND)) GROUP BY window_start, window_end;
",
            last = ROWS - 1
        ),
    )
    .expect("job file");
    path
}

fn run(args: &[&str]) -> (serde_json::Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-engine"))
        .args(args)
        .args(["--json", "--progress-ms", "0"])
        .output()
        .expect("starting sluice-engine");
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "sluice-engine failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    (
        serde_json::from_str(line).unwrap_or_else(|e| panic!("summary {line:?}: {e}")),
        stderr,
    )
}

#[test]
fn run_checkpoints_and_restores_latest_at_another_parallelism_and_backend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = job(dir.path());
    let ck = format!("file://{}/ck", dir.path().display());
    let (first, err) = run(&[
        "run",
        &job.to_string_lossy(),
        "-p",
        "2",
        "--checkpoint-dir",
        &ck,
        "--checkpoint-interval-ms",
        "100",
        "--checkpoints-retained",
        "2",
    ]);
    assert_eq!(first["records_in"], ROWS);
    assert!(err.contains("checkpoints: "), "{err}");
    let gen1 = dir.path().join("ck/gen-0000000001");
    let mut chks: Vec<_> = std::fs::read_dir(&gen1)
        .expect("generation 1")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("chk-"))
        .collect();
    chks.sort();
    assert!(
        (1..=2).contains(&chks.len()),
        "retention keeps at most 2: {chks:?} ({err})"
    );
    for c in &chks {
        assert!(gen1.join(c).join("_metadata").exists(), "{c} committed");
    }
    let (second, err) = run(&[
        "run",
        &job.to_string_lossy(),
        "-p",
        "3",
        "--state-backend",
        "rocksdb",
        "--checkpoint-dir",
        &ck,
        "--restore",
        "latest",
    ]);
    assert!(err.contains("restoring from checkpoint "), "{err}");
    assert!(dir.path().join("ck/gen-0000000002/_generation").exists());
    let resumed = second["records_in"].as_u64().expect("records_in");
    assert!(
        resumed < ROWS,
        "the restored run read {resumed} rows: it must resume, not start over"
    );
}

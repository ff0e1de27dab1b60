//! Jobs over JSON-lines files: the filesystem source and sink (atomic part
//! files), a window aggregation and a late record.

use sluice_connectors::filesystem::committed_files;

#[test]
fn tumbling_window_over_json_files_drops_late_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("in");
    let output = dir.path().join("out");
    std::fs::create_dir_all(&input).expect("mkdir");
    // Minute windows; the watermark trails by 5 s. The record at 00:00:30 arrives after
    // the watermark passed 00:01:00 (a record at 00:01:10 was seen), so it is late.
    let lines = [
        r#"{"user_id":"a","event_time_ms":1000}"#,
        r#"{"user_id":"b","event_time_ms":2000}"#,
        r#"{"user_id":"a","event_time_ms":59000}"#,
        r#"{"user_id":"a","event_time_ms":70000}"#,
    ];
    std::fs::write(input.join("part-0.json"), lines.join("\n") + "\n").expect("write");
    std::fs::write(input.join("part-1.json"), "{\"user_id\":\"a\",\"event_time_ms\":30000}\n{\"user_id\":\"b\",\"event_time_ms\":125000}\n").expect("write");
    let job = dir.path().join("job.sql");
    std::fs::write(
        &job,
        format!(
            "CREATE TABLE src (user_id STRING, event_time_ms BIGINT,\n  ts AS TO_TIMESTAMP_LTZ(event_time_ms, 3),\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\n\
             CREATE TABLE snk (user_id STRING, window_start TIMESTAMP(3), window_end TIMESTAMP(3), n BIGINT)\n  WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');\n\
             INSERT INTO snk SELECT user_id, window_start, window_end, COUNT(*) FROM TABLE(TUMBLE(TABLE src, DESCRIPTOR(ts), INTERVAL '1' MINUTE)) GROUP BY user_id, window_start, window_end;",
            input.display(),
            output.display()
        ),
    )
    .expect("write job");
    let summary = crate::run_engine(&job, 1);
    assert_eq!(summary["records_in"], 6, "{summary}");
    assert_eq!(summary["pipelines"][0]["late_dropped"], 1, "{summary}");
    let mut rows: Vec<String> = Vec::new();
    for f in committed_files(&output).expect("list output") {
        rows.extend(
            std::fs::read_to_string(&f)
                .expect("read")
                .lines()
                .map(str::to_string),
        );
    }
    rows.sort();
    assert_eq!(
        rows,
        [
            r#"{"user_id":"a","window_start":"1970-01-01 00:00:00.000","window_end":"1970-01-01 00:01:00.000","n":2}"#,
            r#"{"user_id":"a","window_start":"1970-01-01 00:01:00.000","window_end":"1970-01-01 00:02:00.000","n":1}"#,
            r#"{"user_id":"b","window_start":"1970-01-01 00:00:00.000","window_end":"1970-01-01 00:01:00.000","n":1}"#,
            r#"{"user_id":"b","window_start":"1970-01-01 00:02:00.000","window_end":"1970-01-01 00:03:00.000","n":1}"#,
        ]
    );
    // Nothing is left in progress.
    let hidden = std::fs::read_dir(&output)
        .expect("list")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .count();
    assert_eq!(hidden, 0);
}

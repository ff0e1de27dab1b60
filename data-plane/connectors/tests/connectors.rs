//! Datagen's Flink options and the JSON format, through the public connector API.

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use sluice_connectors::json::{JsonDecoder, encode_rows};
use sluice_runtime::connector::{
    Connectors, PollStatus, SinkContext, SourceContext, SourceOutput, physical_schema,
};

fn table(sql: &str) -> sluice_sql::TableDef {
    let full = format!(
        "{sql};\nCREATE TABLE snk (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO snk SELECT id FROM src;"
    );
    let plan = sluice_sql::plan(&full).unwrap_or_else(|e| panic!("{e:?}"));
    plan.tables["src"].clone()
}

fn drain(
    t: &sluice_sql::TableDef,
    subtask: usize,
    parallelism: usize,
) -> Vec<arrow_array::RecordBatch> {
    let mut c = Connectors::default();
    sluice_connectors::register(&mut c);
    let ctx = SourceContext {
        table: t.clone(),
        schema: physical_schema(t),
        subtask,
        parallelism,
        restore: Vec::new(),
        pending_records: Default::default(),
    };
    let mut r = c
        .get(t)
        .and_then(|f| f.create_source(&ctx))
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    loop {
        let mut o = SourceOutput::default();
        let s = r.poll(&mut o).unwrap_or_else(|e| panic!("{e}"));
        out.extend(o.batches.into_iter().map(|(_, b)| b));
        if s == PollStatus::Finished {
            return out;
        }
    }
}

#[test]
fn datagen_sequence_is_split_over_subtasks_without_overlap() {
    let t = table(
        "CREATE TABLE src (id BIGINT, s STRING, n INT) WITH ('connector' = 'datagen', 'rows-per-second' = '1000000',
           'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '1001',
           'fields.s.length' = '4', 'fields.n.min' = '5', 'fields.n.max' = '7')",
    );
    let mut ids = Vec::new();
    for st in 0..3 {
        for b in drain(&t, st, 3) {
            ids.extend(
                b.column(0)
                    .as_primitive::<Int64Type>()
                    .values()
                    .iter()
                    .copied(),
            );
            assert!(
                b.column(1)
                    .as_string::<i32>()
                    .iter()
                    .all(|s| s.map(|s| s.len()) == Some(4))
            );
            let n = b.column(2).as_primitive::<arrow_array::types::Int32Type>();
            assert!(
                n.values().iter().all(|v| (5..=7).contains(v)),
                "n out of [5, 7]"
            );
        }
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=1001).collect::<Vec<i64>>());
}

#[test]
fn datagen_number_of_rows_bounds_random_data() {
    let t = table(
        "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'number-of-rows' = '25000', 'rows-per-second' = '100000000')",
    );
    let rows: usize = (0..2)
        .flat_map(|st| drain(&t, st, 2))
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 25000);
}

#[test]
fn json_round_trip_keeps_values_and_nulls() {
    let t = table(
        "CREATE TABLE src (id BIGINT, name STRING, ts TIMESTAMP(3)) WITH ('connector' = 'datagen')",
    );
    let schema = physical_schema(&t);
    let mut d = JsonDecoder::new(schema, 1024, false, "test").unwrap_or_else(|e| panic!("{e}"));
    let input =
        b"{\"id\":1,\"name\":\"a \\\"q\\\"\",\"ts\":\"2024-03-09 16:00:00.250\"}\n{\"id\":2}\n";
    let mut batches = Vec::new();
    d.decode_lines(input, &mut batches)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(batches.len(), 1);
    let mut out = Vec::new();
    let mut ends = Vec::new();
    encode_rows(&batches[0], 3, &mut out, &mut ends, true).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        String::from_utf8_lossy(&out),
        "{\"id\":1,\"name\":\"a \\\"q\\\"\",\"ts\":\"2024-03-09 16:00:00.250\"}\n{\"id\":2,\"name\":null,\"ts\":null}\n"
    );
    assert_eq!(ends.len(), 2);
    assert!(batches[0].column(1).is_null(1));
}

#[test]
fn bad_json_is_an_error_naming_the_table_unless_ignored() {
    let t = table("CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen')");
    let mut strict = JsonDecoder::new(physical_schema(&t), 1024, false, "table 'src'")
        .unwrap_or_else(|e| panic!("{e}"));
    let err = strict
        .decode_lines(b"{\"id\":1}\n{\"id\":\n", &mut Vec::new())
        .expect_err("truncated JSON");
    assert!(err.to_string().contains("table 'src'"), "{err}");
    let mut lenient = JsonDecoder::new(physical_schema(&t), 1024, true, "table 'src'")
        .unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    lenient
        .decode_lines(b"{\"id\":1}\nnot json\n{\"id\":3}\n", &mut out)
        .unwrap_or_else(|e| panic!("{e}"));
    let ids: Vec<i64> = out
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect();
    assert_eq!(ids, [1, 3]);
}

// ---- positions, restore and the exactly-once filesystem sink ----

fn int_ids(batches: &[arrow_array::RecordBatch]) -> Vec<i64> {
    batches
        .iter()
        .flat_map(|b| b.column(0).as_primitive::<Int64Type>().values().to_vec())
        .collect()
}

fn source(
    t: &sluice_sql::TableDef,
    subtask: usize,
    parallelism: usize,
    restore: &[Vec<u8>],
) -> Box<dyn sluice_runtime::connector::SourceReader> {
    let mut c = Connectors::default();
    sluice_connectors::register(&mut c);
    let ctx = SourceContext {
        table: t.clone(),
        schema: physical_schema(t),
        subtask,
        parallelism,
        restore: restore.to_vec(),
        pending_records: Default::default(),
    };
    c.get(t)
        .and_then(|f| f.create_source(&ctx))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Polls `n` times (or to the end); returns the ids emitted.
fn poll_n(r: &mut dyn sluice_runtime::connector::SourceReader, n: usize) -> (Vec<i64>, bool) {
    let mut ids = Vec::new();
    for _ in 0..n {
        let mut o = SourceOutput::default();
        let s = r.poll(&mut o).unwrap_or_else(|e| panic!("{e}"));
        ids.extend(int_ids(
            &o.batches.into_iter().map(|(_, b)| b).collect::<Vec<_>>(),
        ));
        if s == PollStatus::Finished {
            return (ids, true);
        }
    }
    (ids, false)
}

fn assert_exactly(mut ids: Vec<i64>, want: std::ops::RangeInclusive<i64>) {
    ids.sort_unstable();
    let n = ids.len();
    ids.dedup();
    assert_eq!(n, ids.len(), "{} ids emitted twice", n - ids.len());
    assert_eq!(ids, want.collect::<Vec<_>>());
}

#[test]
fn datagen_restores_its_sequence_at_another_parallelism() {
    let t = table(
        "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '100000000',
           'fields.id.kind' = 'sequence', 'fields.id.start' = '1', 'fields.id.end' = '50000')",
    );
    // Two subtasks read part of their slices, then the job "fails" at a
    // checkpoint taken there and comes back with three subtasks.
    let mut before = Vec::new();
    let mut positions = Vec::new();
    for (st, polls) in [(0, 2), (1, 1)] {
        let mut r = source(&t, st, 2, &[]);
        let (ids, done) = poll_n(r.as_mut(), polls);
        assert!(!done);
        before.extend(ids);
        positions.push(r.position());
    }
    assert!(!before.is_empty());
    let mut after = Vec::new();
    for st in 0..3 {
        let mut r = source(&t, st, 3, &positions);
        let (ids, done) = poll_n(r.as_mut(), 1000);
        assert!(done);
        after.extend(ids);
        assert_eq!(r.position(), br#"{"datagen":{"ranges":[]}}"#.to_vec());
    }
    before.extend(after);
    assert_exactly(before, 1..=50000);
}

#[test]
fn filesystem_source_resumes_mid_file_and_skips_finished_files() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // a.json is larger than one 4 MiB read, so a position lands inside it.
    let mut big = String::new();
    for i in 1..=400_000 {
        big.push_str(&format!("{{\"id\":{i}}}\n"));
    }
    std::fs::write(dir.path().join("a.json"), big).unwrap_or_else(|e| panic!("{e}"));
    let small = |from: i64| {
        (from..from + 10)
            .map(|i| format!("{{\"id\":{i}}}\n"))
            .collect::<String>()
    };
    std::fs::write(dir.path().join("b.json"), small(400_001)).unwrap_or_else(|e| panic!("{e}"));
    // No newline at the end of the last file: its last line still counts.
    std::fs::write(dir.path().join("c.json"), small(400_011).trim_end())
        .unwrap_or_else(|e| panic!("{e}"));
    let t = table(&format!(
        "CREATE TABLE src (id BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json')",
        dir.path().display()
    ));
    // Parallelism 2: subtask 0 reads a and c, subtask 1 reads b.
    let mut r0 = source(&t, 0, 2, &[]);
    let (mut before, done0) = poll_n(r0.as_mut(), 1);
    assert!(!done0 && !before.is_empty() && before.len() < 400_000);
    let mut r1 = source(&t, 1, 2, &[]);
    let (ids1, done1) = poll_n(r1.as_mut(), 10);
    assert!(done1);
    before.extend(ids1);
    let positions = vec![r0.position(), r1.position()];
    // Restore at parallelism 1: the rest of a, then c; b is done.
    let mut r = source(&t, 0, 1, &positions);
    let (after, done) = poll_n(r.as_mut(), 100);
    assert!(done);
    before.extend(after);
    assert_exactly(before, 1..=400_020);
}

fn fs_sink(
    dir: &std::path::Path,
    subtask: usize,
    exactly_once: bool,
) -> Box<dyn sluice_runtime::connector::SinkWriter> {
    let full = format!(
        "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen');
         CREATE TABLE snk (id BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json');
         INSERT INTO snk SELECT id FROM src;",
        dir.display()
    );
    let plan = sluice_sql::plan(&full).unwrap_or_else(|e| panic!("{e:?}"));
    let t = plan.tables["snk"].clone();
    let ctx = SinkContext {
        schema: physical_schema(&t),
        table: t.clone(),
        updating: false,
        subtask,
        parallelism: 2,
        job_id: "job-1".into(),
        sink_uid: "0-snk".into(),
        exactly_once,
        cancelled: Default::default(),
    };
    let mut c = Connectors::default();
    sluice_connectors::register(&mut c);
    c.get(&t)
        .and_then(|f| f.create_sink(&ctx))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn id_batch(ids: std::ops::RangeInclusive<i64>) -> arrow_array::RecordBatch {
    let schema = std::sync::Arc::new(arrow_schema::Schema::new(vec![arrow_schema::Field::new(
        "id",
        arrow_schema::DataType::Int64,
        true,
    )]));
    arrow_array::RecordBatch::try_new(
        schema,
        vec![std::sync::Arc::new(
            arrow_array::Int64Array::from_iter_values(ids),
        )],
    )
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Ids in the files a reader sees (the filesystem source skips hidden files).
fn visible_ids(dir: &std::path::Path) -> Vec<i64> {
    let t = table(&format!(
        "CREATE TABLE src (id BIGINT) WITH ('connector' = 'filesystem', 'path' = '{}', 'format' = 'json')",
        dir.display()
    ));
    let (ids, done) = poll_n(source(&t, 0, 1, &[]).as_mut(), 1000);
    assert!(done);
    ids
}

#[test]
fn filesystem_sink_exactly_once_survives_every_crash_window() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let d = dir.path();
    let mut a = fs_sink(d, 0, true);
    a.write(&id_batch(1..=10)).unwrap_or_else(|e| panic!("{e}"));
    a.flush().unwrap_or_else(|e| panic!("{e}"));
    assert!(visible_ids(d).is_empty(), "flush must not publish");
    let c1 = a.prepare_commit(1).unwrap_or_else(|e| panic!("{e}"));
    assert!(visible_ids(d).is_empty(), "prepare_commit must not publish");
    a.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(visible_ids(d), 1..=10);
    a.write(&id_batch(11..=20))
        .unwrap_or_else(|e| panic!("{e}"));
    let c2 = a.prepare_commit(2).unwrap_or_else(|e| panic!("{e}"));
    // Written after the last barrier: lost with the crash, replayed by the source.
    a.write(&id_batch(21..=25))
        .unwrap_or_else(|e| panic!("{e}"));
    // Crash after checkpoint 2 completed, before its commit.
    drop(a);
    assert_exactly(visible_ids(d), 1..=10);

    // Restore (into another subtask, as after a rescale): re-commit both
    // checkpoints' committables, twice; the first is already done.
    let mut b = fs_sink(d, 1, true);
    for _ in 0..2 {
        b.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
        b.commit(2, &c2).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_exactly(visible_ids(d), 1..=20);
    b.write(&id_batch(21..=30))
        .unwrap_or_else(|e| panic!("{e}"));
    let c3 = b.prepare_commit(3).unwrap_or_else(|e| panic!("{e}"));
    b.commit(3, &c3).unwrap_or_else(|e| panic!("{e}"));
    // Crash after the commit: the restore commits checkpoint 3 again.
    drop(b);
    let mut c = fs_sink(d, 0, true);
    c.commit(3, &c3).unwrap_or_else(|e| panic!("{e}"));
    // An epoch without rows has nothing to commit.
    let empty = c.prepare_commit(4).unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.is_empty());
    c.commit(4, &empty).unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(visible_ids(d), 1..=30);
    // The files left hidden are the crash's in-progress file only.
    let hidden: Vec<String> = std::fs::read_dir(d)
        .unwrap_or_else(|e| panic!("{e}"))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.starts_with('.'))
        .collect();
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    assert!(hidden[0].ends_with(".inprogress"), "{hidden:?}");
    // A committable whose files vanished is an error, not silent data loss.
    let lost = String::from_utf8_lossy(&c3).replace("cp3", "cp9");
    assert!(c.commit(9, lost.as_bytes()).is_err());
}

#[test]
fn filesystem_sink_without_exactly_once_publishes_on_flush() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let mut a = fs_sink(dir.path(), 0, false);
    a.write(&id_batch(1..=5)).unwrap_or_else(|e| panic!("{e}"));
    assert!(visible_ids(dir.path()).is_empty());
    a.flush().unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(visible_ids(dir.path()), 1..=5);
    a.write(&id_batch(6..=7)).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        a.prepare_commit(1)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_empty()
    );
    a.finish().unwrap_or_else(|e| panic!("{e}"));
    assert_exactly(visible_ids(dir.path()), 1..=7);
}

//! Datagen's Flink options and the JSON format, through the public connector API.

use arrow_array::Array;
use arrow_array::cast::AsArray;
use arrow_array::types::Int64Type;
use sluice_connectors::json::{JsonDecoder, encode_rows};
use sluice_runtime::connector::{
    Connectors, PollStatus, SourceContext, SourceOutput, physical_schema,
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

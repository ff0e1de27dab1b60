//! The jdbc sink against a real PostgreSQL (a fresh database per test):
//! append and upsert writes, and the exactly-once commit protocol through
//! every crash window (writer dropped before commit, commit repeated after a
//! restore, commit of another subtask's committable after a rescale).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, Int8Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use sluice_runtime::connector::{Connectors, SinkContext, SinkWriter, physical_schema};
use sluice_sql::{Column, TableDef};
use sqlx::Connection;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh database with `ddl` run in it; returns its URL in JDBC form.
fn database(ddl: &str) -> (String, String) {
    let rt = rt();
    let url = rt
        .block_on(sluice_test_support::postgres().fresh_database())
        .unwrap_or_else(|e| panic!("{e:#}"));
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::raw_sql(sqlx::AssertSqlSafe(ddl.to_string()))
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
    // The sink takes Flink's JDBC form; the user travels in `username`.
    let rest = url
        .strip_prefix("postgres://postgres@")
        .unwrap_or_else(|| panic!("unexpected admin URL {url}"));
    (format!("jdbc:postgresql://{rest}"), url)
}

fn query(url: &str, sql: &str) -> Vec<(i64, Option<String>)> {
    rt().block_on(async {
        let mut c = sqlx::PgConnection::connect(url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query_as::<_, (i64, Option<String>)>(sqlx::AssertSqlSafe(sql.to_string()))
            .fetch_all(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    })
}

fn table(jdbc_url: &str, pk: bool, max_rows: usize) -> TableDef {
    let mut options = BTreeMap::new();
    options.insert("connector".to_string(), "jdbc".to_string());
    options.insert("url".to_string(), jdbc_url.to_string());
    options.insert("table-name".to_string(), "Public.Out".to_string());
    options.insert("username".to_string(), "postgres".to_string());
    options.insert(
        "sink.buffer-flush.max-rows".to_string(),
        max_rows.to_string(),
    );
    TableDef {
        name: "out".into(),
        connector: "jdbc".into(),
        options,
        physical: vec![
            Column {
                name: "ID".into(),
                ty: DataType::Int64,
            },
            Column {
                name: "name".into(),
                ty: DataType::Utf8,
            },
        ],
        computed: Vec::new(),
        watermark: None,
        proctime: None,
        primary_key: if pk { vec![0] } else { Vec::new() },
    }
}

fn sink(t: &TableDef, updating: bool, subtask: usize, exactly_once: bool) -> Box<dyn SinkWriter> {
    let mut schema = physical_schema(t);
    if updating {
        let mut f: Vec<Field> = schema.fields().iter().map(|x| x.as_ref().clone()).collect();
        f.push(Field::new("$op", DataType::Int8, false));
        schema = Arc::new(Schema::new(f));
    }
    let ctx = SinkContext {
        table: t.clone(),
        schema,
        updating,
        subtask,
        parallelism: 2,
        job_id: "job-1".into(),
        sink_uid: "0-out".into(),
        exactly_once,
        cancelled: Default::default(),
    };
    let mut c = Connectors::default();
    sluice_connector_postgres::register(&mut c);
    c.get(t)
        .and_then(|f| f.create_sink(&ctx))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Rows `(id, name, op)`; `op` is the changelog kind (0 +I, 1 -U, 2 +U, 3 -D) or None for append.
fn batch(rows: &[(i64, Option<&str>, Option<i8>)]) -> RecordBatch {
    let mut fields = vec![
        Field::new("ID", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.1))),
    ];
    if rows.iter().any(|r| r.2.is_some()) {
        fields.push(Field::new("$op", DataType::Int8, false));
        cols.push(Arc::new(Int8Array::from_iter_values(
            rows.iter().map(|r| r.2.unwrap_or(0)),
        )));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap_or_else(|e| panic!("{e}"))
}

fn ids(from: i64, to: i64) -> Vec<(i64, Option<&'static str>, Option<i8>)> {
    (from..=to).map(|i| (i, Some("x"), None)).collect()
}

const ALL: &str = "SELECT id, name FROM public.out ORDER BY id, name";

fn all_ids(url: &str) -> Vec<i64> {
    query(url, ALL).into_iter().map(|r| r.0).collect()
}

#[test]
fn append_writes_when_the_buffer_fills_and_on_flush() {
    let (jdbc, url) = database("CREATE TABLE out (id bigint, name text)");
    let t = table(&jdbc, false, 3);
    let mut s = sink(&t, false, 0, false);
    s.write(&batch(&[(1, Some("a"), None), (2, None, None)]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(all_ids(&url).is_empty(), "2 rows stay below max-rows 3");
    s.write(&batch(&[(3, Some("it's"), None)]))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        query(&url, ALL),
        vec![(1, Some("a".into())), (2, None), (3, Some("it's".into()))]
    );
    s.write(&batch(&[(3, Some("dup"), None)]))
        .unwrap_or_else(|e| panic!("{e}"));
    s.flush().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        all_ids(&url),
        vec![1, 2, 3, 3],
        "append mode keeps duplicates"
    );
}

#[test]
fn upsert_applies_the_changelog_by_primary_key() {
    let (jdbc, url) = database("CREATE TABLE out (id bigint PRIMARY KEY, name text)");
    let t = table(&jdbc, true, 1000);
    let mut s = sink(&t, true, 0, false);
    s.write(&batch(&[
        (1, Some("a"), Some(0)),
        (2, Some("b"), Some(0)),
        (3, Some("c"), Some(0)),
        // The same key twice in one flush: the last change wins.
        (1, Some("a"), Some(1)),
        (1, Some("a2"), Some(2)),
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    s.flush().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        query(&url, ALL),
        vec![
            (1, Some("a2".into())),
            (2, Some("b".into())),
            (3, Some("c".into()))
        ]
    );
    s.write(&batch(&[
        (2, Some("b"), Some(3)),
        (3, Some("c"), Some(1)),
        (3, Some("c2"), Some(2)),
        (4, Some("d"), Some(0)),
        (4, Some("d"), Some(3)),
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    s.finish().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        query(&url, ALL),
        vec![(1, Some("a2".into())), (3, Some("c2".into()))]
    );
}

fn marker(url: &str, subtask: i32) -> Vec<(i64, Option<String>)> {
    query(
        url,
        &format!(
            "SELECT checkpoint_id, sink_uid FROM sluice_sink_commits WHERE job_id = 'job-1' AND subtask = {subtask}"
        ),
    )
}

#[test]
fn exactly_once_append_survives_every_crash_window() {
    let (jdbc, url) = database("CREATE TABLE out (id bigint, name text)");
    // max-rows 5 is ignored for exactly-once: nothing is written before commit.
    let t = table(&jdbc, false, 5);
    let mut a = sink(&t, false, 0, true);
    a.write(&batch(&ids(1, 10)))
        .unwrap_or_else(|e| panic!("{e}"));
    a.flush().unwrap_or_else(|e| panic!("{e}"));
    let c1 = a.prepare_commit(1).unwrap_or_else(|e| panic!("{e}"));
    assert!(all_ids(&url).is_empty(), "nothing visible before commit");
    a.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all_ids(&url), (1..=10).collect::<Vec<_>>());
    assert_eq!(marker(&url, 0), vec![(1, Some("0-out".into()))]);
    a.write(&batch(&ids(11, 20)))
        .unwrap_or_else(|e| panic!("{e}"));
    let c2 = a.prepare_commit(2).unwrap_or_else(|e| panic!("{e}"));
    a.write(&batch(&ids(21, 25)))
        .unwrap_or_else(|e| panic!("{e}"));
    // Crash after checkpoint 2 completed, before its commit.
    drop(a);
    assert_eq!(all_ids(&url), (1..=10).collect::<Vec<_>>());

    // Restore into subtask 1 (a rescale): it commits subtask 0's
    // committables under subtask 0's marker, each twice.
    let mut b = sink(&t, false, 1, true);
    for _ in 0..2 {
        b.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
        b.commit(2, &c2).unwrap_or_else(|e| panic!("{e}"));
    }
    assert_eq!(all_ids(&url), (1..=20).collect::<Vec<_>>());
    assert_eq!(marker(&url, 0), vec![(2, Some("0-out".into()))]);
    assert!(marker(&url, 1).is_empty());
    // The replayed rows 21..30 are subtask 1's own from now on.
    b.write(&batch(&ids(21, 30)))
        .unwrap_or_else(|e| panic!("{e}"));
    let c3 = b.prepare_commit(3).unwrap_or_else(|e| panic!("{e}"));
    b.commit(3, &c3).unwrap_or_else(|e| panic!("{e}"));
    // Crash after the commit: the restore repeats it.
    drop(b);
    let mut c = sink(&t, false, 0, true);
    c.commit(3, &c3).unwrap_or_else(|e| panic!("{e}"));
    // An older committable arriving late changes nothing either.
    c.commit(2, &c2).unwrap_or_else(|e| panic!("{e}"));
    let empty = c.prepare_commit(4).unwrap_or_else(|e| panic!("{e}"));
    assert!(empty.is_empty());
    c.commit(4, &empty).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all_ids(&url), (1..=30).collect::<Vec<_>>());
    assert_eq!(marker(&url, 1), vec![(3, Some("0-out".into()))]);
}

#[test]
fn exactly_once_upsert_commits_rows_and_marker_atomically() {
    let (jdbc, url) = database("CREATE TABLE out (id bigint PRIMARY KEY, name text)");
    let t = table(&jdbc, true, 100);
    let mut a = sink(&t, true, 0, true);
    a.write(&batch(&[
        (1, Some("a"), Some(0)),
        (2, Some("b"), Some(0)),
        (2, Some("b"), Some(1)),
        (2, Some("b2"), Some(2)),
    ]))
    .unwrap_or_else(|e| panic!("{e}"));
    let c1 = a.prepare_commit(1).unwrap_or_else(|e| panic!("{e}"));
    a.commit(1, &c1).unwrap_or_else(|e| panic!("{e}"));
    a.write(&batch(&[(1, Some("a"), Some(3)), (3, Some("c"), Some(0))]))
        .unwrap_or_else(|e| panic!("{e}"));
    let c2 = a.prepare_commit(2).unwrap_or_else(|e| panic!("{e}"));
    drop(a);
    // A commit whose transaction fails leaves neither rows nor marker; the
    // failure comes from a constraint that refuses one of its rows.
    let rt = rt();
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("ALTER TABLE out ADD CONSTRAINT no_c CHECK (name <> 'c')")
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
    let mut b = sink(&t, true, 0, true);
    assert!(b.commit(2, &c2).is_err());
    assert_eq!(
        query(&url, ALL),
        vec![(1, Some("a".into())), (2, Some("b2".into()))]
    );
    assert_eq!(marker(&url, 0), vec![(1, Some("0-out".into()))]);
    rt.block_on(async {
        let mut c = sqlx::PgConnection::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        sqlx::query("ALTER TABLE out DROP CONSTRAINT no_c")
            .execute(&mut c)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    });
    // The next attempt (same writer: it reconnects) goes through once.
    b.commit(2, &c2).unwrap_or_else(|e| panic!("{e}"));
    b.commit(2, &c2).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        query(&url, ALL),
        vec![(2, Some("b2".into())), (3, Some("c".into()))]
    );
    assert_eq!(marker(&url, 0), vec![(2, Some("0-out".into()))]);
}

#[test]
fn an_updating_query_needs_a_primary_key() {
    let (jdbc, _) = database("CREATE TABLE out (id bigint, name text)");
    let t = table(&jdbc, false, 10);
    let ctx = SinkContext {
        schema: physical_schema(&t),
        table: t.clone(),
        updating: true,
        subtask: 0,
        parallelism: 1,
        job_id: "j".into(),
        sink_uid: "0-out".into(),
        exactly_once: false,
        cancelled: Default::default(),
    };
    let mut c = Connectors::default();
    sluice_connector_postgres::register(&mut c);
    let e = c
        .get(&t)
        .and_then(|f| f.create_sink(&ctx))
        .err()
        .unwrap_or_else(|| panic!("accepted an updating query without a primary key"));
    assert!(e.to_string().contains("PRIMARY KEY"), "{e}");
}

//! The lifecycle end to end through the typed client, with real engine processes, the
//! Kafka-compatible broker and the S3-compatible store: create → start → records in the
//! output topic → change the SQL (state carried by the savepoint) → scale 1 → 3 → stop →
//! start from the stop savepoint → delete, after which no process, no port and no object
//! under the application's prefix remain. The ledger has one closed span per run.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use sluice_api_types::{
    Admission, CheckpointMode, CheckpointSpec, CreateApplication, CreateComputePool, DesiredState,
    OperationState, RestoreSpec, StopRequest, UpdateApplication,
};
use sluice_client::{Client, ListApplicationEventsQuery, ListSavepointsQuery};

use crate::admission::{wait_phase, wait_status};
use crate::cluster::{Storage, clusters, engine_app};

pub(crate) fn job_sql(bootstrap: &str, input: &str, output: &str, tag: &str) -> String {
    format!(
        "CREATE TABLE clicks (\n  user_id BIGINT,\n  url STRING,\n  ts TIMESTAMP(3),\n  WATERMARK FOR ts AS ts - INTERVAL '1' SECOND\n) WITH ('connector' = 'kafka', 'topic' = '{input}', 'properties.bootstrap.servers' = '{bootstrap}', 'properties.group.id' = 'g-{input}', 'scan.startup.mode' = 'earliest-offset', 'format' = 'json');\n\
         CREATE TABLE enriched (user_id BIGINT, url STRING, tag STRING, n BIGINT) WITH ('connector' = 'kafka', 'topic' = '{output}', 'properties.bootstrap.servers' = '{bootstrap}', 'format' = 'json');\n\
         INSERT INTO enriched\nSELECT user_id, url, '{tag}',\n  COUNT(*) OVER (PARTITION BY user_id ORDER BY ts ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)\nFROM clicks;\n"
    )
}

pub(crate) const USERS: i64 = 3;

type At = chrono::DateTime<chrono::Utc>;
/// run_id, kpu_milli, started_at, ended_at, closed_by.
type SpanRow = (String, i64, At, Option<At>, Option<String>);

/// The broker does not create topics on first use.
pub(crate) async fn create_topics(bootstrap: &str, topics: &[&str]) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        // Three partitions, each written (user = partition): an empty partition would hold
        // the event-time watermark back, and at parallelism 3 a source subtask without a
        // partition finishes, after which the engine takes no savepoint.
        .map(|t| NewTopic::new(t, 3, TopicReplication::Fixed(1)))
        .collect();
    for r in admin
        .create_topics(&new, &AdminOptions::new())
        .await
        .unwrap()
    {
        r.unwrap();
    }
}

/// Clicks `from..to` (ids), round-robin over the users, event time increasing.
pub(crate) fn produce(bootstrap: &str, topic: &str, from: i64, to: i64) {
    let p: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    for i in from..to {
        let body = serde_json::json!({
            "user_id": i % USERS, "url": format!("/page/{i}"),
            "ts": format!("2026-01-01 00:{:02}:{:02}.000", i / 60, i % 60)
        })
        .to_string();
        let key = (i % USERS).to_string();
        p.send(
            BaseRecord::to(topic)
                .key(&key)
                .payload(&body)
                .partition((i % USERS) as i32),
        )
        .unwrap();
    }
    p.flush(Duration::from_secs(10)).unwrap();
}

/// Reads the output topic until every (user, n) of the first `rows` clicks is there but
/// the last few (the watermark trails the newest event by a second, so the OVER
/// aggregation holds those back until more input comes); returns (user, n) → tags seen.
fn consume_until(
    bootstrap: &str,
    topic: &str,
    rows: i64,
) -> BTreeMap<(i64, i64), BTreeSet<String>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", sluice_test_support::unique_name("check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let want: BTreeSet<(i64, i64)> = (0..rows - 6).map(|i| (i % USERS, i / USERS + 1)).collect();
    let allowed: BTreeSet<(i64, i64)> = (0..rows).map(|i| (i % USERS, i / USERS + 1)).collect();
    let mut seen: BTreeMap<(i64, i64), BTreeSet<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !want.iter().all(|k| seen.contains_key(k)) {
        assert!(
            Instant::now() < deadline,
            "output incomplete: {} of {} (user, n) pairs; missing e.g. {:?}",
            want.iter().filter(|k| seen.contains_key(k)).count(),
            want.len(),
            want.iter().find(|k| !seen.contains_key(k))
        );
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or(b"{}")).unwrap();
            let k = (v["user_id"].as_i64().unwrap(), v["n"].as_i64().unwrap());
            seen.entry(k)
                .or_default()
                .insert(v["tag"].as_str().unwrap_or("").to_owned());
        }
    }
    let extra: Vec<_> = seen.keys().filter(|k| !allowed.contains(k)).collect();
    assert!(extra.is_empty(), "counts that no input explains: {extra:?}");
    seen
}

pub(crate) async fn op_done(client: &Client, op: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let o = client.get_operation(op).await.unwrap();
        match o.state {
            OperationState::Succeeded => return,
            OperationState::Failed => panic!("operation {op} failed: {:?}", o.error),
            OperationState::InProgress => {}
        }
        assert!(
            Instant::now() < deadline,
            "operation {op} still in progress"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_application_runs_updates_scales_stops_restarts_and_is_deleted_without_a_trace() {
    let c = clusters(Storage::S3).await;
    let app = engine_app(&c, None).await;
    let org = app.new_org("e2e").await;
    let client = Client::new(&app.base).with_token(&org.admin);
    let bootstrap = sluice_test_support::kafka().bootstrap_servers.clone();
    let input = sluice_test_support::unique_name("clicks");
    let output = sluice_test_support::unique_name("enriched");
    create_topics(&bootstrap, &[&input, &output]).await;

    let pool = client
        .create_compute_pool(
            &CreateComputePool {
                name: "e2e".into(),
                region: "local".into(),
                max_kpu: 8,
                admission: Admission::Reject,
            },
            None,
        )
        .await
        .unwrap()
        .value;
    let created = client
        .create_application(
            &CreateApplication {
                name: "rolling-count".into(),
                compute_pool_id: pool.id.clone(),
                sql: job_sql(&bootstrap, &input, &output, "v1"),
                parallelism: 1,
                parallelism_per_kpu: 1,
                checkpoint: CheckpointSpec {
                    interval_ms: 1000,
                    min_pause_ms: 0,
                    mode: CheckpointMode::ExactlyOnce,
                },
                state_backend: Default::default(),
                desired_state: DesiredState::Stopped,
                restore: RestoreSpec::default(),
                upgrade_mode: Default::default(),
                config: BTreeMap::new(),
                restart_nonce: 0,
            },
            None,
        )
        .await
        .unwrap()
        .value;
    let id = created.id.to_string();

    // Start: STARTING → RUNNING, the operation SUCCEEDED.
    let t0 = Instant::now();
    let op = client.start_application(&id, None, None).await.unwrap();
    op_done(&client, op.id.as_str()).await;
    let running = wait_phase(&app, &org.admin, &id, "RUNNING").await;
    eprintln!("start → RUNNING in {:?}", t0.elapsed());
    assert_eq!(running["generation"], 1);
    assert_eq!(running["current_kpu_milli"], 1250);
    produce(&bootstrap, &input, 0, 30);
    let out = consume_until(&bootstrap, &output, 30);
    assert!(out.values().all(|t| t.contains("v1")));
    let metrics = client.get_application_metrics(&id).await.unwrap();
    assert_eq!(metrics.job_state, "RUNNING");

    // Change the SQL: UPDATING through a savepoint; the counts go on from the state.
    let cur = client.get_application(&id).await.unwrap();
    client
        .update_application(
            &id,
            &UpdateApplication {
                sql: Some(job_sql(&bootstrap, &input, &output, "v2")),
                ..Default::default()
            },
            cur.etag.as_deref(),
        )
        .await
        .unwrap();
    let s = wait_status(&app, &org.admin, &id, "RUNNING", |s| s["generation"] == 2).await;
    assert_eq!(s["observed_version"], 3, "{s}");
    produce(&bootstrap, &input, 30, 60);
    let out = consume_until(&bootstrap, &output, 60);
    for i in 30..54 {
        let k = (i % USERS, i / USERS + 1);
        assert!(
            out[&k].contains("v2"),
            "{k:?} after the update: {:?}",
            out[&k]
        );
    }

    // Scale 1 → 3: SCALING, three TaskManagers.
    let cur = client.get_application(&id).await.unwrap();
    client
        .update_application(
            &id,
            &UpdateApplication {
                parallelism: Some(3),
                ..Default::default()
            },
            cur.etag.as_deref(),
        )
        .await
        .unwrap();
    let s = wait_status(&app, &org.admin, &id, "RUNNING", |s| s["generation"] == 3).await;
    assert_eq!(s["current_kpu_milli"], 3250, "{s}");
    let obs = c
        .engine
        .provisioner
        .as_ref()
        .unwrap()
        .observe(&sluice_provisioner::ClusterId {
            org_id: org.id.clone(),
            application_id: id.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        obs.processes
            .iter()
            .filter(
                |p| p.exited_at.is_none() && p.role == sluice_provisioner::ProcessRole::Taskmanager
            )
            .count(),
        3
    );
    produce(&bootstrap, &input, 60, 90);
    consume_until(&bootstrap, &output, 90);

    // Stop with a savepoint, start again from it.
    let op = client
        .stop_application(&id, Some(&StopRequest { force: false }), None, None)
        .await
        .unwrap();
    op_done(&client, op.id.as_str()).await;
    wait_phase(&app, &org.admin, &id, "STOPPED").await;
    let events = client
        .list_application_events(
            &id,
            &ListApplicationEventsQuery {
                page_size: Some(200),
                page_token: None,
            },
        )
        .await
        .unwrap();
    let stop_savepoint = events
        .items
        .iter()
        .rev()
        .find(|e| e.event_type == "savepoint_completed")
        .and_then(|e| e.message.clone())
        .expect("the stop took a savepoint");
    // The reconciler's own savepoints are savepoint resources like the others: listed,
    // billed and under retention.
    let savepoints = client
        .list_savepoints(
            &id,
            &ListSavepointsQuery {
                page_size: Some(50),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .items;
    let origins: Vec<(&str, &str)> = savepoints
        .iter()
        .map(|s| (s.origin.as_str(), s.status.as_str()))
        .collect();
    let on_stop = savepoints
        .iter()
        .find(|s| s.location.as_deref() == Some(stop_savepoint.as_str()))
        .unwrap_or_else(|| panic!("no record of the stop savepoint: {origins:?}"));
    assert_eq!(
        (on_stop.origin.as_str(), on_stop.status.as_str()),
        ("on_stop", "COMPLETED")
    );
    assert!(on_stop.size_bytes.unwrap_or(0) > 0, "{on_stop:?}");
    assert_eq!(
        origins
            .iter()
            .filter(|o| **o == ("pre_upgrade", "COMPLETED"))
            .count(),
        2,
        "the SQL change and the scale each took one: {origins:?}"
    );
    produce(&bootstrap, &input, 90, 120);
    let op = client.start_application(&id, None, None).await.unwrap();
    op_done(&client, op.id.as_str()).await;
    wait_status(&app, &org.admin, &id, "RUNNING", |s| s["generation"] == 4).await;
    let db = app.db().await;
    let restore: String =
        sqlx::query_scalar("SELECT restore FROM runs WHERE application_id = $1 AND generation = 4")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        restore, stop_savepoint,
        "the start restored the stop savepoint"
    );
    consume_until(&bootstrap, &output, 120);

    // Delete: no process, no port, no object under the prefix.
    let live: Vec<(u32, Option<String>)> = c
        .engine
        .provisioner
        .as_ref()
        .unwrap()
        .observe(&sluice_provisioner::ClusterId {
            org_id: org.id.clone(),
            application_id: id.clone(),
        })
        .await
        .map(|o| {
            o.processes
                .iter()
                .filter(|p| p.exited_at.is_none())
                .filter_map(|p| p.pid)
                .map(|pid| (pid, o.rest_url.clone()))
                .collect()
        })
        .unwrap();
    assert!(!live.is_empty());
    let op = client.delete_application(&id, None).await.unwrap();
    op_done(&client, op.id.as_str()).await;
    assert!(client.get_application(&id).await.is_err());
    for (pid, rest) in &live {
        assert!(
            sluice_provisioner::local::proc_start_ticks(*pid).is_none(),
            "pid {pid} still runs"
        );
        if let Some(rest) = rest {
            assert!(
                reqwest::get(format!("{rest}/overview")).await.is_err(),
                "{rest} still answers"
            );
        }
    }
    let prefix = sluice_blob::BlobPath::new(format!("{}/{id}", org.id)).unwrap();
    let left = c.blobs.list_all(Some(&prefix)).await.unwrap();
    assert!(left.is_empty(), "objects left under the prefix: {left:?}");

    // The ledger: one closed span per run, from observed start to observed exit.
    let spans: Vec<SpanRow> = sqlx::query_as(
        "SELECT s.run_id, s.kpu_milli, s.started_at, s.ended_at, s.closed_by FROM usage_spans s
             JOIN runs r ON r.id = s.run_id WHERE s.application_id = $1 ORDER BY r.generation",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(spans.len(), 4, "{spans:?}");
    let closers: Vec<&str> = spans.iter().map(|s| s.4.as_deref().unwrap()).collect();
    assert_eq!(closers, ["updated", "updated", "stopped", "deleted"]);
    assert_eq!(
        spans.iter().map(|s| s.1).collect::<Vec<_>>(),
        [1250, 1250, 3250, 3250]
    );
    for w in spans.windows(2) {
        assert!(w[0].3.unwrap() <= w[1].2, "spans overlap: {w:?}");
    }
    let runs_open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM runs WHERE application_id = $1 AND ended_at IS NULL",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(runs_open, 0);
    db.close().await;
}

//! Starting from a chosen older savepoint, with real engine processes, the Kafka-compatible
//! broker and the S3-compatible store: a rolling count per user runs; savepoint A after
//! batch 1, savepoint B after batch 2; stop; start with `restore: {mode: savepoint,
//! savepoint_id: A}`. The restored job's counts continue from A's: it counts batch 2
//! again on top of batch 1 (A's source offsets are before batch 2) and then batch 3, and
//! never recounts batch 1. From B it would not have emitted batch 2's counts at all. A
//! savepoint of another application, or one not COMPLETED, fails the start by name.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use sluice_api_types::{
    Admission, CheckpointMode, CheckpointSpec, CreateApplication, CreateComputePool,
    CreateSavepoint, DesiredState, RestoreMode, RestoreSpec, RollbackRequest, SavepointId,
    StopRequest, UpdateApplication,
};
use sluice_client::Client;

use crate::admission::{wait_phase, wait_status};
use crate::cluster::{Storage, clusters, engine_app};
use crate::lifecycle::{USERS, create_topics, job_sql, op_done, produce};

/// (user, n) of click `i`: the clicks go round-robin over the users, so the i-th click is
/// its user's (i / USERS + 1)-th.
fn key(i: i64) -> (i64, i64) {
    (i % USERS, i / USERS + 1)
}

/// Reads the whole output topic until `done` holds for (user, n) → tags seen and then
/// nothing more comes for two seconds (two checkpoint intervals, so two transaction
/// commits): the partitions are read side by side, and `done` can hold before every
/// record of a slower partition is in.
fn read_until(
    bootstrap: &str,
    topic: &str,
    what: &str,
    done: impl Fn(&BTreeMap<(i64, i64), BTreeSet<String>>) -> bool,
) -> BTreeMap<(i64, i64), BTreeSet<String>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", sluice_test_support::unique_name("check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    // Assigned, not subscribed: no consumer-group rebalance to wait for.
    let mut parts = rdkafka::TopicPartitionList::new();
    for p in 0..3 {
        parts
            .add_partition_offset(topic, p, rdkafka::Offset::Beginning)
            .unwrap();
    }
    c.assign(&parts).unwrap();
    let mut seen: BTreeMap<(i64, i64), BTreeSet<String>> = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = Instant::now();
    while !done(&seen) || last.elapsed() < Duration::from_secs(2) {
        assert!(Instant::now() < deadline, "{what}: output so far {seen:?}");
        if let Some(Ok(m)) = c.poll(Duration::from_millis(200)) {
            last = Instant::now();
            let v: serde_json::Value =
                serde_json::from_slice(m.payload().unwrap_or(b"{}")).unwrap();
            seen.entry((v["user_id"].as_i64().unwrap(), v["n"].as_i64().unwrap()))
                .or_default()
                .insert(v["tag"].as_str().unwrap_or("").to_owned());
        }
    }
    seen
}

fn has(
    seen: &BTreeMap<(i64, i64), BTreeSet<String>>,
    ids: std::ops::Range<i64>,
    tag: &str,
) -> bool {
    ids.into_iter()
        .all(|i| seen.get(&key(i)).is_some_and(|t| t.contains(tag)))
}

async fn create_app(client: &Client, pool: &str, name: &str, sql: String) -> String {
    client
        .create_application(
            &CreateApplication {
                name: name.into(),
                compute_pool_id: pool.parse().unwrap(),
                sql,
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
        .value
        .id
        .to_string()
}

/// Sets `restore: {mode: savepoint, savepoint_id: sp}` (and the SQL, if given).
async fn restore_from(client: &Client, id: &str, sp: &SavepointId, sql: Option<String>) {
    let cur = client.get_application(id).await.unwrap();
    client
        .update_application(
            id,
            &UpdateApplication {
                sql,
                restore: Some(RestoreSpec {
                    mode: RestoreMode::Savepoint,
                    savepoint_id: Some(sp.clone()),
                    allow_non_restored_state: false,
                }),
                ..Default::default()
            },
            cur.etag.as_deref(),
        )
        .await
        .unwrap();
}

/// Waits until the savepoint reaches `status` (panics on another final one).
async fn wait_savepoint(
    client: &Client,
    sp: &SavepointId,
    status: &str,
) -> sluice_api_types::Savepoint {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = client.get_savepoint(sp.as_str()).await.unwrap().value;
        if s.status.as_str() == status {
            return s;
        }
        assert!(
            Instant::now() < deadline && !matches!(s.status.as_str(), "COMPLETED" | "FAILED"),
            "savepoint {sp} did not become {status}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn take_savepoint(client: &Client, id: &str, label: &str) -> sluice_api_types::Savepoint {
    let sp = client
        .create_savepoint(
            id,
            &CreateSavepoint {
                label: Some(label.into()),
                ..Default::default()
            },
            None,
        )
        .await
        .unwrap()
        .value;
    wait_savepoint(client, &sp.id, "COMPLETED").await
}

#[tokio::test]
async fn a_start_from_a_chosen_older_savepoint_continues_that_savepoints_counts() {
    let c = clusters(Storage::S3).await;
    let app = engine_app(&c, None).await;
    let org = app.new_org("restore").await;
    let client = Client::new(&app.base).with_token(&org.admin);
    let bootstrap = sluice_test_support::kafka().bootstrap_servers.clone();
    let input = sluice_test_support::unique_name("clicks");
    let output = sluice_test_support::unique_name("counts");
    create_topics(&bootstrap, &[&input, &output]).await;
    let pool = client
        .create_compute_pool(
            &CreateComputePool {
                name: "restore".into(),
                region: "local".into(),
                max_kpu: 8,
                admission: Admission::Reject,
            },
            None,
        )
        .await
        .unwrap()
        .value
        .id
        .to_string();
    let id = create_app(
        &client,
        &pool,
        "rolling-count",
        job_sql(&bootstrap, &input, &output, "v1"),
    )
    .await;
    let op = client.start_application(&id, None, None).await.unwrap();
    op_done(&client, op.id.as_str()).await;
    wait_phase(&app, &org.admin, &id, "RUNNING").await;

    // Batch 1 (clicks 0..30) → A. The counts of clicks 0..24 are committed before A is
    // requested, so A's state holds them; the last few wait for the watermark.
    produce(&bootstrap, &input, 0, 30);
    read_until(&bootstrap, &output, "batch 1", |s| has(s, 0..24, "v1"));
    let a = take_savepoint(&client, &id, "A").await;
    // Batch 2 (30..60) → B.
    produce(&bootstrap, &input, 30, 60);
    read_until(&bootstrap, &output, "batch 2", |s| has(s, 30..54, "v1"));
    let b = take_savepoint(&client, &id, "B").await;
    assert_ne!(a.location, b.location);
    let op = client
        .stop_application(&id, Some(&StopRequest { force: false }), None, None)
        .await
        .unwrap();
    op_done(&client, op.id.as_str()).await;
    wait_phase(&app, &org.admin, &id, "STOPPED").await;

    // A savepoint of another application: the start fails and names it.
    let other = create_app(
        &client,
        &pool,
        "other",
        job_sql(&bootstrap, &input, &output, "other"),
    )
    .await;
    restore_from(&client, &other, &a.id, None).await;
    client.start_application(&other, None, None).await.unwrap();
    let s = wait_phase(&app, &org.admin, &other, "FAILED").await;
    assert_eq!(s["reason"], "savepoint_unavailable", "{s}");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(a.id.as_str()) && msg.contains("another application"),
        "{s}"
    );
    // One of its own that is not COMPLETED (taken while stopped, so FAILED): the same.
    let third = create_app(
        &client,
        &pool,
        "third",
        job_sql(&bootstrap, &input, &output, "third"),
    )
    .await;
    let failed = client
        .create_savepoint(&third, &CreateSavepoint::default(), None)
        .await
        .unwrap()
        .value;
    wait_savepoint(&client, &failed.id, "FAILED").await;
    restore_from(&client, &third, &failed.id, None).await;
    client.start_application(&third, None, None).await.unwrap();
    let s = wait_phase(&app, &org.admin, &third, "FAILED").await;
    assert_eq!(s["reason"], "savepoint_unavailable", "{s}");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains(failed.id.as_str()) && msg.contains("not COMPLETED"),
        "{s}"
    );

    // Start the first from A, tagging what the restored job writes.
    restore_from(
        &client,
        &id,
        &a.id,
        Some(job_sql(&bootstrap, &input, &output, "from-a")),
    )
    .await;
    let op = client.start_application(&id, None, None).await.unwrap();
    op_done(&client, op.id.as_str()).await;
    wait_status(&app, &org.admin, &id, "RUNNING", |s| s["generation"] == 2).await;
    let db = app.db().await;
    let restore: String =
        sqlx::query_scalar("SELECT restore FROM runs WHERE application_id = $1 AND generation = 2")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    assert_eq!(Some(restore), a.location, "the run restored A's location");

    // Batch 3 (60..90).
    produce(&bootstrap, &input, 60, 90);
    let seen = read_until(&bootstrap, &output, "batch 3 after restoring A", |s| {
        has(s, 0..24, "v1")
            && has(s, 30..54, "v1")
            && has(s, 30..54, "from-a")
            && has(s, 60..84, "from-a")
    });
    let tags = |i: i64| -> Vec<&str> { seen[&key(i)].iter().map(String::as_str).collect() };
    for i in 0..24 {
        // Counted once, before A: the restored job started from those counts.
        assert_eq!(tags(i), ["v1"], "click {i} {:?}", key(i));
    }
    for i in 30..54 {
        // Counted before B and again after the restore, each time on top of batch 1 only.
        assert_eq!(tags(i), ["from-a", "v1"], "click {i} {:?}", key(i));
    }
    for i in 60..84 {
        // Batch 3 continues from A + batch 2: user u's k-th click of 90 is n = k.
        assert_eq!(tags(i), ["from-a"], "click {i} {:?}", key(i));
    }
    let most = seen.keys().map(|k| k.1).max().unwrap();
    assert!(most <= 90 / USERS, "a count above 90 clicks' worth: {most}");

    // Roll back to version 1 (the "v1" SQL, restore `latest`): ROLLING_BACK stops the running
    // job with a savepoint and starts the old spec from it, so the counts go on from A +
    // batches 2 and 3 rather than from A again or from nothing.
    let op = client
        .rollback_application(
            &id,
            Some(&RollbackRequest {
                to_version: Some(1),
            }),
            None,
            None,
        )
        .await
        .unwrap();
    op_done(&client, op.id.as_str()).await;
    wait_status(&app, &org.admin, &id, "RUNNING", |s| s["generation"] == 3).await;
    produce(&bootstrap, &input, 90, 120);
    let seen = read_until(&bootstrap, &output, "batch 4 after the rollback", |s| {
        has(s, 90..114, "v1")
    });
    for i in 90..114 {
        assert_eq!(
            seen[&key(i)].iter().map(String::as_str).collect::<Vec<_>>(),
            ["v1"],
            "click {i} {:?}",
            key(i)
        );
    }
    let most = seen.keys().map(|k| k.1).max().unwrap();
    assert!(
        most <= 120 / USERS,
        "a count above 120 clicks' worth: {most}"
    );
}

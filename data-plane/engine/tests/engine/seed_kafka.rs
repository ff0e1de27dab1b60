//! The seed job: JSON events from Kafka → 10 s bounded out-of-orderness →
//! per-user rolling count (OVER … ROWS UNBOUNDED PRECEDING) → enriched JSON
//! back to Kafka, run by the real binary against the real broker (tansu).
//! Every output record must carry the count Flink would give it: the rank of
//! the event among its user's events in (event time, arrival) order, and each
//! user's records must come out in event-time order.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::util::Timeout;
use sluice_test_support::{kafka, unique_name};

const T: Duration = Duration::from_secs(15);

pub(crate) fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let rt = sluice_connector_kafka::block_on(admin.create_topics(
        &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
        &AdminOptions::new().operation_timeout(Some(Timeout::After(T))),
    ));
    for r in rt.expect("create_topics") {
        r.unwrap_or_else(|(t, e)| panic!("create topic {t}: {e}"));
    }
}

struct Event {
    id: u64,
    user: String,
    ts: i64,
}

#[test]
fn seed_job_rolling_count_through_kafka() {
    let k = kafka();
    let bootstrap = k.bootstrap_servers.clone();
    let input = unique_name("events-");
    let output = unique_name("enriched-");
    create_topic(&bootstrap, &input, 3);
    create_topic(&bootstrap, &output, 1);

    // 12 users, 3000 events, timestamps advancing 7 ms per event with up to 9 s of
    // disorder (below the 10 s bound), so no event is late and the order must be rebuilt.
    let mut events = Vec::new();
    let mut x: u64 = 12345;
    for i in 0..3000u64 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let user = format!("u{}", (x >> 33) % 12);
        let jitter = ((x >> 20) % 9000) as i64;
        events.push(Event {
            id: i,
            user,
            ts: 1_710_000_000_000 + i as i64 * 7 - jitter,
        });
    }
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("producer");
    for e in &events {
        let payload = format!(
            "{{\"event_id\":{},\"user_id\":\"{}\",\"event\":\"click\",\"event_time_ms\":{}}}",
            e.id, e.user, e.ts
        );
        // Keyed by user: one user's events stay in one partition, in production order.
        producer
            .send(BaseRecord::to(&input).key(&e.user).payload(&payload))
            .map_err(|(e, _)| e)
            .expect("send");
    }
    producer.flush(T).expect("flush input");

    let dir = tempfile::tempdir().expect("tempdir");
    let job = dir.path().join("seed.sql");
    std::fs::write(
        &job,
        format!(
            r#"
CREATE TABLE events (
  event_id BIGINT,
  user_id STRING,
  event STRING,
  event_time_ms BIGINT,
  event_time AS TO_TIMESTAMP_LTZ(event_time_ms, 3),
  WATERMARK FOR event_time AS event_time - INTERVAL '10' SECOND
) WITH (
  'connector' = 'kafka',
  'topic' = '{input}',
  'properties.bootstrap.servers' = '{bootstrap}',
  'scan.startup.mode' = 'earliest-offset',
  'scan.bounded.mode' = 'latest-offset',
  'format' = 'json'
);
CREATE TABLE enriched (
  event_id BIGINT,
  user_id STRING,
  event STRING,
  event_time_ms BIGINT,
  user_event_count BIGINT
) WITH (
  'connector' = 'kafka',
  'topic' = '{output}',
  'properties.bootstrap.servers' = '{bootstrap}',
  'key.fields' = 'user_id',
  'key.format' = 'raw',
  'format' = 'json'
);
INSERT INTO enriched
SELECT event_id, user_id, UPPER(event), event_time_ms,
  COUNT(*) OVER (PARTITION BY user_id ORDER BY event_time
                 ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS user_event_count
FROM events;
"#
        ),
    )
    .expect("write job");
    let summary = crate::run_engine(&job, 2);
    assert_eq!(summary["records_in"], 3000, "{summary}");
    assert_eq!(summary["pipelines"][0]["records_out"], 3000, "{summary}");
    assert_eq!(summary["pipelines"][0]["late_dropped"], 0, "{summary}");

    // Expected count: rank in (event time, production order) within the user.
    let mut per_user: HashMap<&str, Vec<&Event>> = HashMap::new();
    for e in &events {
        per_user.entry(e.user.as_str()).or_default().push(e);
    }
    let mut expected: HashMap<u64, u64> = HashMap::new();
    for list in per_user.values_mut() {
        list.sort_by_key(|e| (e.ts, e.id));
        for (i, e) in list.iter().enumerate() {
            expected.insert(e.id, i as u64 + 1);
        }
    }

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", unique_name("check-"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&output]).expect("subscribe");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen: HashMap<u64, u64> = HashMap::new();
    let mut last_ts: HashMap<String, i64> = HashMap::new();
    while seen.len() < 3000 {
        assert!(
            std::time::Instant::now() < deadline,
            "only {} of 3000 output records within 60 s",
            seen.len()
        );
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.expect("consume");
        let v: serde_json::Value =
            serde_json::from_slice(m.payload().expect("payload")).expect("output JSON");
        let id = v["event_id"].as_u64().expect("event_id");
        let user = v["user_id"].as_str().expect("user_id").to_string();
        assert_eq!(m.key(), Some(user.as_bytes()), "record key is the user id");
        assert_eq!(v["event"], "CLICK");
        let ts = v["event_time_ms"].as_i64().expect("event_time_ms");
        let prev = last_ts.insert(user.clone(), ts).unwrap_or(i64::MIN);
        assert!(
            ts >= prev,
            "user {user}: record at {ts} came after one at {prev}"
        );
        let count = v["user_event_count"].as_u64().expect("count");
        assert_eq!(
            Some(&count),
            expected.get(&id),
            "count of event {id} ({user} at {ts})"
        );
        assert!(seen.insert(id, count).is_none(), "event {id} written twice");
    }
}

//! The exchange over real loopback TCP: order per channel, backpressure by credits, and a
//! connection that dies before the end fails the receiving gate.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use arrow_array::{Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema};

use super::*;

fn batch(v: i64) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
    RecordBatch::try_new(schema, vec![Arc::new(Int64Array::from(vec![v]))]).expect("batch")
}

fn value(m: &Message) -> i64 {
    match m {
        Message::Data(b) => b
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("int64")
            .value(0),
        m => panic!("expected data, got {m:?}"),
    }
}

fn key(channel: usize) -> ChannelKey {
    ChannelKey {
        attempt: 1,
        vertex: 1,
        subtask: 0,
        channel,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_and_remote_channels_keep_order_and_apply_backpressure() {
    let server = DataServer::bind("127.0.0.1:0".parse().expect("addr"), Some("tok".into()))
        .await
        .expect("bind");
    let cancel = Arc::new(AtomicBool::new(false));
    let (mut gate, mut locals) = server.gate(
        vec![InputSource::Local, InputSource::Remote(key(1))],
        2,
        &cancel,
    );
    let local = locals.remove(&0).expect("local output");
    let remote = connect_remote(
        &tokio::runtime::Handle::current(),
        server.addr(),
        key(1),
        Some("tok".into()),
        Duration::from_secs(5),
        &cancel,
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let s = sent.clone();
    let producer = std::thread::spawn(move || {
        for i in 0..50 {
            local
                .send_message(Message::Data(batch(i)))
                .expect("local send");
            remote
                .send_message(Message::Data(batch(1000 + i)))
                .expect("remote send");
            s.fetch_add(1, Ordering::SeqCst);
        }
        local.send_message(Message::End).expect("local end");
        remote.send_message(Message::End).expect("remote end");
    });
    // Nothing is consumed yet: the producer stops after the 2 credits of each channel.
    sluice_wait(|| sent.load(Ordering::SeqCst) == 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sent.load(Ordering::SeqCst), 2, "sent past its credits");

    let got = tokio::task::spawn_blocking(move || {
        let mut per = vec![Vec::new(), Vec::new()];
        let mut ended = 0;
        while ended < 2 {
            let env = gate
                .next_message(Duration::from_secs(10))
                .expect("recv")
                .expect("a message within 10 s");
            match env.message {
                Message::End => ended += 1,
                m => per[env.channel].push(value(&m)),
            }
        }
        per
    })
    .await
    .expect("consumer");
    producer.join().expect("producer");
    assert_eq!(got[0], (0..50).collect::<Vec<_>>());
    assert_eq!(got[1], (1000..1050).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_token_or_a_dead_sender_fails_the_channel() {
    let server = DataServer::bind("127.0.0.1:0".parse().expect("addr"), Some("tok".into()))
        .await
        .expect("bind");
    let cancel = Arc::new(AtomicBool::new(false));
    let (mut gate, _) = server.gate(vec![InputSource::Remote(key(0))], 4, &cancel);
    let bad = connect_remote(
        &tokio::runtime::Handle::current(),
        server.addr(),
        key(0),
        Some("nope".into()),
        Duration::from_secs(5),
        &cancel,
    );
    // Refused before any credit: the send fails once the server hangs up.
    let res = tokio::task::spawn_blocking(move || bad.send_message(Message::Watermark(1)))
        .await
        .expect("join");
    assert!(res.is_err(), "a sender with a wrong token got credit");

    let good = connect_remote(
        &tokio::runtime::Handle::current(),
        server.addr(),
        key(0),
        Some("tok".into()),
        Duration::from_secs(5),
        &cancel,
    );
    good.send_message(Message::Watermark(5)).expect("send");
    // Dropping the output without End closes the connection mid-stream.
    drop(good);
    let err = tokio::task::spawn_blocking(move || {
        let first = gate.next_message(Duration::from_secs(10)).expect("recv");
        assert!(matches!(
            first.map(|e| e.message),
            Some(Message::Watermark(5))
        ));
        match gate.next_message(Duration::from_secs(10)) {
            Ok(Some(m)) => panic!("unexpected {m:?}"),
            Ok(None) => panic!("no failure within 10 s"),
            Err(e) => e.to_string(),
        }
    })
    .await
    .expect("join");
    assert!(
        err.contains("closed the connection before the end"),
        "{err}"
    );
}

async fn sluice_wait(mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

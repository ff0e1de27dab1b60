//! Load benchmark of the public API (issue 3): authenticated
//! `GET /v1/applications/{id}` and `POST /v1/compute-pools`, server and load
//! generator in one process on loopback, against a throwaway PostgreSQL.
//!
//! Run (release; the figures mean nothing in a debug build):
//!   dev/cargo run --release -p sluice-control-plane --example load -- [seconds] [connections]
//! Defaults: 10 s per phase, 64 concurrent connections.

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark program: any failure ends the run"
)]

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice_control_plane::config::Config;
use sluice_control_plane::server;

const ADMIN: &str = "bench-platform-operator-token-000000";

struct Phase {
    name: &'static str,
    ok: usize,
    errors: usize,
    latencies_us: Vec<u64>,
    elapsed: Duration,
}

impl Phase {
    fn report(&mut self) {
        self.latencies_us.sort_unstable();
        let p = |q: f64| {
            let i = ((self.latencies_us.len() as f64 - 1.0) * q).round() as usize;
            self.latencies_us.get(i).copied().unwrap_or(0) as f64 / 1000.0
        };
        println!(
            "{:<28} {:>8.0} req/s  ok {:>7}  errors {:>5}  p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
            self.name,
            self.ok as f64 / self.elapsed.as_secs_f64(),
            self.ok,
            self.errors,
            p(0.50),
            p(0.99),
            p(1.0)
        );
    }
}

async fn run_phase<F, Fut>(name: &'static str, secs: u64, conns: usize, make: F) -> Phase
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for worker in 0..conns {
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut lat) = (0usize, 0usize, Vec::with_capacity(100_000));
            let mut i = 0;
            while Instant::now() < deadline {
                let t = Instant::now();
                if make(worker, i).await {
                    ok += 1;
                    lat.push(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
                i += 1;
            }
            (ok, errors, lat)
        }));
    }
    let mut phase = Phase {
        name,
        ok: 0,
        errors: 0,
        latencies_us: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (ok, errors, lat) = t.await.unwrap();
        phase.ok += ok;
        phase.errors += errors;
        phase.latencies_us.extend(lat);
    }
    phase.elapsed = start.elapsed();
    phase
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let secs: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let conns: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(64);

    let url = sluice_test_support::postgres()
        .fresh_database()
        .await
        .unwrap();
    let mut cfg = Config::load(None, [("SLUICE_DATABASE__URL".to_string(), url)]).unwrap();
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.database.max_connections = 32;
    cfg.auth.admin_token = ADMIN.into();
    cfg.limits.requests_per_second = 1_000_000;
    cfg.limits.burst = 1_000_000;
    let running = server::start(cfg).await.unwrap();
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(conns)
        .build()
        .unwrap();

    let org: Value = http
        .post(format!("{base}/admin/v1/organizations"))
        .bearer_auth(ADMIN)
        .json(&json!({ "name": "bench", "admin": { "email": "bench@example.com", "name": "B", "password": "benchmark password" } }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(org["organization"]["id"].is_string(), "{org}");
    let login: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "email": "bench@example.com", "password": "benchmark password" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["access_token"].as_str().unwrap().to_owned();
    let pool: Value = http
        .post(format!("{base}/v1/compute-pools"))
        .bearer_auth(&token)
        .json(&json!({ "name": "main", "region": "local", "max_kpu": 100 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sql = "CREATE TABLE s (a INT) WITH ('connector' = 'datagen');\nCREATE TABLE t (a INT) WITH ('connector' = 'blackhole');\nINSERT INTO t SELECT a FROM s;";
    let app: Value = http
        .post(format!("{base}/v1/applications"))
        .bearer_auth(&token)
        .json(&json!({ "name": "bench", "compute_pool_id": pool["id"], "sql": sql }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let app_url = format!("{base}/v1/applications/{}", app["id"].as_str().unwrap());
    println!(
        "sluice API load, {secs} s per phase, {conns} connections, server and client in one process on loopback"
    );

    // The ceiling of HTTP + client on this machine: no auth, no database.
    let (h, b) = (http.clone(), base.clone());
    let mut health = run_phase("GET /healthz (reference)", secs, conns, move |_, _| {
        let (h, b) = (h.clone(), b.clone());
        async move {
            h.get(format!("{b}/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    health.report();

    let (h, t, u) = (http.clone(), token.clone(), app_url.clone());
    let mut get = run_phase("GET /v1/applications/{id}", secs, conns, move |_, _| {
        let (h, t, u) = (h.clone(), t.clone(), u.clone());
        async move {
            h.get(&u)
                .bearer_auth(&t)
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
        }
    })
    .await;
    get.report();

    let (h, t, b) = (http.clone(), token.clone(), base.clone());
    let mut post = run_phase("POST /v1/compute-pools", secs, conns, move |w, i| {
        let (h, t, b) = (h.clone(), t.clone(), b.clone());
        async move {
            h.post(format!("{b}/v1/compute-pools"))
                .bearer_auth(&t)
                .json(&json!({ "name": format!("p-{w}-{i}"), "region": "local", "max_kpu": 1 }))
                .send()
                .await
                .is_ok_and(|r| r.status() == 201)
        }
    })
    .await;
    post.report();
    running.shutdown.cancel();
    let _ = running.task.await;
}

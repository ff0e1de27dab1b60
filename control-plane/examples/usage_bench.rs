//! Benchmark of issue 7: `GET /v1/usage` for a 30-day hourly series in < 100 ms p99, through
//! HTTP, against a real PostgreSQL (from `sluice-test-support`) holding a realistic
//! multi-tenant ledger.
//!
//! Run: `dev/cargo run --release -p sluice-control-plane --example usage_bench` (or without
//! `--release` for the unoptimised figure). Optional arguments: `ORGS APPS REQUESTS`
//! (default 21 100 200). Exits non-zero when the ungrouped or per-pool series misses 100 ms
//! at p99.
//!
//! The ledger: ORGS organizations × APPS applications (5 pools) × 15 two-day runs × 6
//! eight-hour spans (a resize every 8 hours) over the last 30 days, the newest run of every
//! application still open. The measured organization holds APPS × 90 of those spans. This is
//! a separate program, not a test: the API tests run in parallel on a shared machine, where a
//! latency bound would measure the neighbours.

use std::time::{Duration as StdDuration, Instant};

use anyhow::{Context, bail};
use chrono::{Duration, Utc};
use serde_json::{Value, json};
use sluice_control_plane::config::Config;
use sluice_control_plane::server;

const ADMIN_TOKEN: &str = "usage-bench-platform-operator-token";

fn percentile(sorted: &[StdDuration], p: f64) -> StdDuration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<i64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("arguments are ORGS APPS REQUESTS"))
        .collect::<anyhow::Result<_>>()?;
    let orgs = args.first().copied().unwrap_or(21).max(1);
    let apps = args.get(1).copied().unwrap_or(100).max(5);
    let requests = args.get(2).copied().unwrap_or(200).max(1) as usize;

    let db_url = sluice_test_support::postgres().fresh_database().await?;
    let mut cfg = Config::load(None, [("SLUICE_DATABASE__URL".to_string(), db_url.clone())])?;
    cfg.listen = "127.0.0.1:0".parse()?;
    cfg.auth.admin_token = ADMIN_TOKEN.into();
    cfg.limits.requests_per_second = 100_000;
    cfg.limits.burst = 100_000;
    let running = server::start(cfg).await?;
    let base = format!("http://{}", running.addr);
    let http = reqwest::Client::new();

    let email = format!("{}@example.com", sluice_test_support::unique_name("bench"));
    let password = "correct horse battery staple";
    let created: Value = http
        .post(format!("{base}/admin/v1/organizations"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "name": "bench", "admin": { "email": email, "name": "Bench", "password": password } }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let org = created["organization"]["id"]
        .as_str()
        .context("organization id")?
        .to_owned();
    let login: Value = http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({ "email": email, "password": password }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["access_token"]
        .as_str()
        .context("access token")?
        .to_owned();

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db_url)
        .await?;
    let now = Utc::now();
    let t0 = now - Duration::days(30);
    let started = Instant::now();
    sqlx::query(
        "INSERT INTO organizations (id, name)
         SELECT 'org_' || lpad(to_hex(o), 32, '0'), 'bench ' || o FROM generate_series(1, $1 - 1) o",
    )
    .bind(orgs)
    .execute(&db)
    .await?;
    // Runs start at a per-application minute offset, so spans cross bucket edges.
    sqlx::query(
        "INSERT INTO runs (id, org_id, application_id, pool_id, region, generation,
                           application_version, kpu_milli, created_at, ended_at, end_reason)
         SELECT format('run_%s_%s_%s', substr(o.id, 5), a, r), o.id,
                'app_' || lpad(to_hex(o.n * 100000 + a), 32, '0'),
                'pool_' || lpad(to_hex(o.n * 10 + a % 5), 32, '0'),
                'local', r, 1, 1250,
                $1 + (r - 1) * interval '2 days' + (a * 7 % 60) * interval '1 minute',
                CASE WHEN r < 15 THEN $1 + r * interval '2 days' + (a * 7 % 60) * interval '1 minute' END,
                CASE WHEN r < 15 THEN 'stopped' END
         FROM (SELECT id, row_number() OVER (ORDER BY id) AS n FROM organizations) o,
              generate_series(1, $2) a, generate_series(1, 15) r",
    )
    .bind(t0)
    .bind(apps)
    .execute(&db)
    .await?;
    sqlx::query(
        "INSERT INTO usage_spans (org_id, run_id, application_id, pool_id, region, kpu_milli,
                                  started_at, ended_at, closed_by)
         SELECT r.org_id, r.id, r.application_id, r.pool_id, r.region,
                (ARRAY[1250, 2250, 4250])[1 + s % 3],
                r.created_at + (s - 1) * interval '8 hours',
                CASE WHEN r.ended_at IS NULL AND s = 6 THEN NULL ELSE r.created_at + s * interval '8 hours' END,
                CASE WHEN r.ended_at IS NULL AND s = 6 THEN NULL WHEN s = 6 THEN 'stopped' ELSE 'updated' END
         FROM runs r, generate_series(1, 6) s",
    )
    .execute(&db)
    .await?;
    sqlx::query("ANALYZE").execute(&db).await?;
    let spans: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_spans")
        .fetch_one(&db)
        .await?;
    let own: i64 = sqlx::query_scalar("SELECT count(*) FROM usage_spans WHERE org_id = $1")
        .bind(&org)
        .fetch_one(&db)
        .await?;
    println!(
        "ledger: {spans} spans ({own} of the measured organization), written in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let range = format!(
        "from={}&to={}",
        t0.format("%Y-%m-%dT%H:%M:%SZ"),
        now.format("%Y-%m-%dT%H:%M:%SZ")
    );
    let mut missed = Vec::new();
    for (group_by, bounded) in [
        ("", true),
        ("&group_by=pool", true),
        ("&group_by=application", false),
    ] {
        let url = format!("{base}/v1/usage?{range}&granularity=hour{group_by}");
        let get = || http.get(&url).bearer_auth(&token).send();
        let first: Value = get().await?.error_for_status()?.json().await?;
        let points = first["series"][0]["points"].as_array().map_or(0, Vec::len);
        if points != 721 || first["total_milli_kpu_seconds"].as_i64().unwrap_or(0) <= 0 {
            bail!("unexpected report for{group_by}: {points} points");
        }
        for _ in 0..10 {
            get().await?.error_for_status()?.bytes().await?;
        }
        let load_before = load();
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            let body = get().await?.error_for_status()?.bytes().await?;
            times.push(t.elapsed());
            if body.is_empty() {
                bail!("empty body");
            }
        }
        times.sort();
        let (p50, p99) = (percentile(&times, 0.50), percentile(&times, 0.99));
        println!(
            "GET /v1/usage 30 days hourly{group_by}: {} groups × {points} points, p50 {:.1} ms, p99 {:.1} ms over {requests} requests (load {load_before} → {})",
            first["series"].as_array().map_or(0, Vec::len),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            load()
        );
        if bounded && p99 >= StdDuration::from_millis(100) {
            missed.push(format!("{group_by}: p99 {p99:?}"));
        }
    }
    running.shutdown.cancel();
    running.task.await??;
    if !missed.is_empty() {
        bail!("over the 100 ms p99 target: {}", missed.join(", "));
    }
    Ok(())
}

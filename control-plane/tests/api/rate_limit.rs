//! The per-credential rate limit is one bucket across control-plane processes (through
//! PostgreSQL), not one bucket per process.

use std::time::Instant;

use sluice_control_plane::config::Config;
use sluice_control_plane::server;

use crate::helpers::{spawn_app_injected, spawn_app_with};

fn limited(c: &mut Config) {
    c.limits.requests_per_second = 1;
    c.limits.burst = 10;
}

#[tokio::test]
async fn two_processes_share_one_bucket_per_credential() {
    let a = spawn_app_with(limited).await;
    let b = spawn_app_injected(Some(a.db_url.clone()), limited, server::Injected::default()).await;
    let org = a.new_org("shared-limit").await;

    let started = Instant::now();
    let (mut ok, mut refused) = (0u32, Vec::new());
    for i in 0..30 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = app.get("/v1/me", &org.admin).await;
        if r.status == 200 {
            ok += 1;
        } else {
            r.assert_problem(429, "rate_limited");
            refused.push(r);
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    // The burst of 10 plus what refilled at 1/s meanwhile, for both processes together (a
    // bucket per process would have let 20 through): slices are one token at this rate.
    assert!(
        ok >= 10 && f64::from(ok) <= 10.0 + elapsed_s.ceil(),
        "{ok} admitted in {elapsed_s:.2} s"
    );
    let retry: u64 = refused
        .first()
        .expect("the shared burst runs out")
        .headers
        .get("retry-after")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry), "{retry}");
}

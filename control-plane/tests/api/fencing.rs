//! Writes of the reconciler are fenced by the leader epoch: a leader that lost its lock
//! session without noticing (a pause, a partition) writes nothing once a successor was
//! elected, learns it from the refusal and steps down; a write it had in flight when the
//! successor was elected commits before the successor's term begins.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_control_plane::config::Config;
use sluice_control_plane::reconcile::{Deposed, Reconciler};
use sluice_control_plane::server;

use crate::cluster::{Storage, clusters, fast};
use crate::helpers::spawn_app_injected;

const DATAGEN: &str = "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20');\nCREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO sink SELECT id FROM src;";

async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_deposed_leaders_writes_are_refused_and_it_steps_down() {
    let c = clusters(Storage::Fs).await;
    // The API only: the test's two reconcilers are the only candidates for leadership.
    let app = spawn_app_injected(
        None,
        |cfg| {
            fast(cfg);
            cfg.reconciler.enabled = false;
        },
        server::Injected {
            engine: Some(c.engine.clone()),
        },
    )
    .await;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&app.db_url)
        .await
        .unwrap();
    let mut cfg = Config::load(
        None,
        [("SLUICE_DATABASE__URL".to_string(), app.db_url.clone())],
    )
    .unwrap();
    fast(&mut cfg);
    let key = cfg.reconciler.leader_lock_key;
    let reconciler = || {
        Reconciler::new(
            db.clone(),
            app.db_url.clone(),
            c.engine.clone(),
            cfg.reconciler.clone(),
        )
    };
    let (a, b) = (reconciler(), reconciler());

    let la = a.elect().await.unwrap().expect("nobody else leads");
    assert!(b.elect().await.unwrap().is_none(), "one leader at a time");
    let org = app.new_org("fence").await;
    let pool = app
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "p", "region": "local", "max_kpu": 4 }),
        )
        .await;
    let created = app
        .post(
            "/v1/applications",
            &org.admin,
            json!({ "name": "job", "compute_pool_id": pool.body["id"], "sql": DATAGEN,
                    "desired_state": "running" }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();

    // A write of `a` is in flight when its lock session dies.
    let mut inflight = a.fenced().await.unwrap();
    let holders = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
             AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(key)
        .fetch_all(&db)
        .await
        .unwrap()
    };
    let old = holders().await;
    assert_eq!(old.len(), 1, "{old:?}");
    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old[0])
        .fetch_one(&db)
        .await
        .unwrap();
    wait_until("the dead session's lock to go", || async {
        holders().await.is_empty()
    })
    .await;

    // `b` takes the lock; its epoch waits for `a`'s in-flight write.
    let b = std::sync::Arc::new(b);
    let electing = tokio::spawn({
        let b = b.clone();
        async move { b.elect().await }
    });
    wait_until(
        "the successor's epoch to wait for the in-flight write",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'
               AND query LIKE '%reconciler_leader%'",
            )
            .fetch_one(&db)
            .await
            .unwrap()
                == 1
        },
    )
    .await;
    assert!(!electing.is_finished());
    sqlx::query(
        "INSERT INTO events (id, org_id, application_id, type, message)
         VALUES ('evt_inflight', $1, $2, 'test', 'written by the deposed term before its end')",
    )
    .bind(&org.id)
    .bind(&id)
    .execute(&mut *inflight)
    .await
    .unwrap();
    inflight.commit().await.unwrap();
    let lb = electing
        .await
        .unwrap()
        .unwrap()
        .expect("b is elected once the dead session's lock is gone");
    assert_eq!((la.epoch(), lb.epoch()), (1, 2));
    let inflight_epoch: Option<i64> =
        sqlx::query_scalar("SELECT leader_epoch FROM events WHERE id = 'evt_inflight'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(inflight_epoch, Some(1));

    // `a` has not noticed; its next pass is refused before it writes anything.
    assert_eq!(a.leader_epoch(), Some(1));
    let err = a.pass().await.unwrap_err();
    let deposed = err
        .downcast_ref::<Deposed>()
        .unwrap_or_else(|| panic!("not a Deposed error: {err:#}"));
    assert_eq!((deposed.mine, deposed.current), (1, 2));
    assert_eq!(a.leader_epoch(), None, "a stepped down");
    assert!(a.fenced().await.is_err());
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE application_id = $1")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(runs, 0, "the deposed leader started nothing");
    let status: Option<String> =
        sqlx::query_scalar("SELECT phase FROM application_status WHERE application_id = $1")
            .bind(&id)
            .fetch_optional(&db)
            .await
            .unwrap();
    assert!(
        status.as_deref().is_none_or(|p| p == "STOPPED"),
        "the deposed leader wrote a status: {status:?}"
    );
    let events: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE application_id = $1 AND id <> 'evt_inflight'",
    )
    .bind(&id)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(events, 0);

    // The successor acts, and what it writes carries its epoch.
    b.pass().await.unwrap();
    let runs: Vec<Option<i64>> =
        sqlx::query_scalar("SELECT leader_epoch FROM runs WHERE application_id = $1")
            .bind(&id)
            .fetch_all(&db)
            .await
            .unwrap();
    assert_eq!(runs, [Some(2)]);
    let epochs: Vec<Option<i64>> = sqlx::query_scalar(
        "SELECT DISTINCT leader_epoch FROM events WHERE application_id = $1 AND id <> 'evt_inflight'
         UNION SELECT leader_epoch FROM application_status WHERE application_id = $1",
    )
    .bind(&id)
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(epochs, [Some(2)]);
    b.step_down(lb).await;
    a.step_down(la).await;
    db.close().await;
}

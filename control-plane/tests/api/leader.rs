//! Two control planes on one database: only the holder of the advisory lock reconciles;
//! when its session dies (terminated by PostgreSQL, as when its process is killed) another
//! takes over within seconds and re-adopts the running cluster instead of restarting it.

use std::time::{Duration, Instant};

use serde_json::json;
use sluice_provisioner::{ClusterId, Provisioner};

use crate::admission::{wait_phase, wait_status};
use crate::cluster::{Storage, clusters, engine_app};

const DATAGEN: &str = "CREATE TABLE src (id BIGINT) WITH ('connector' = 'datagen', 'rows-per-second' = '20');\nCREATE TABLE sink (id BIGINT) WITH ('connector' = 'blackhole');\nINSERT INTO sink SELECT id FROM src;";

async fn lock_holders(db: &sqlx::PgPool) -> Vec<i32> {
    sqlx::query_scalar(
        // Advisory locks are per database, but pg_locks lists the whole PostgreSQL cluster,
        // where the control planes of concurrent tests (one database each) hold the same key.
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
         AND ((classid::bigint << 32) | objid::bigint) = $1",
    )
    .bind(0x5e1c_e001_i64)
    .fetch_all(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn only_the_leader_acts_and_a_dead_leaders_lock_passes_on_within_seconds() {
    let c = clusters(Storage::Fs).await;
    let a = engine_app(&c, None).await;
    let b = engine_app(&c, Some(a.db_url.clone())).await;
    let db = a.db().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while lock_holders(&db).await.len() != 1 {
        assert!(Instant::now() < deadline, "no leader elected");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let org = a.new_org("leader").await;
    let pool = a
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "p", "region": "local", "max_kpu": 4 }),
        )
        .await;
    let created = a
        .post(
            "/v1/applications",
            &org.admin,
            json!({ "name": "job", "compute_pool_id": pool.body["id"], "sql": DATAGEN, "desired_state": "running",
                    "checkpoint": { "interval_ms": 1000, "mode": "exactly_once" } }),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.body);
    let id = created.body["id"].as_str().unwrap().to_owned();
    let before = wait_phase(&a, &org.admin, &id, "RUNNING").await;
    let cluster = ClusterId {
        org_id: org.id.clone(),
        application_id: id.clone(),
    };
    let pids = |o: &sluice_provisioner::ClusterObservation| -> Vec<u32> {
        o.processes
            .iter()
            .filter(|p| p.exited_at.is_none())
            .filter_map(|p| p.pid)
            .collect()
    };
    let running = pids(&c.provisioner.observe(&cluster).await.unwrap());
    assert_eq!(running.len(), 2);

    // The leader's session dies.
    let old = lock_holders(&db).await;
    assert_eq!(old.len(), 1);
    let killed_at = Instant::now();
    let _: bool = sqlx::query_scalar("SELECT pg_terminate_backend($1)")
        .bind(old[0])
        .fetch_one(&db)
        .await
        .unwrap();
    loop {
        let now = lock_holders(&db).await;
        if now.len() == 1 && now[0] != old[0] {
            break;
        }
        assert!(now.len() <= 1, "two leaders: {now:?}");
        assert!(
            killed_at.elapsed() < Duration::from_secs(5),
            "no new leader after {:?}",
            killed_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let handover = killed_at.elapsed();
    eprintln!("leader hand-over in {handover:?}");

    // The new leader re-adopts: same run, same generation, same processes.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = wait_phase(&b, &org.admin, &id, "RUNNING").await;
    assert_eq!(after["run_id"], before["run_id"]);
    assert_eq!(after["generation"], 1);
    assert_eq!(
        pids(&c.provisioner.observe(&cluster).await.unwrap()),
        running
    );
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs WHERE application_id = $1")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(runs, 1, "no second cluster");

    // And it acts on new intents.
    let stop = b
        .post(
            &format!("/v1/applications/{id}:stop"),
            &org.admin,
            json!({ "force": true }),
        )
        .await;
    assert_eq!(stop.status, 202, "{}", stop.body);
    wait_status(&b, &org.admin, &id, "STOPPED", |s| {
        s["current_kpu_milli"] == 0
    })
    .await;
    for pid in running {
        assert!(
            sluice_provisioner::local::proc_start_ticks(pid).is_none(),
            "pid {pid} still runs"
        );
    }
    db.close().await;
}

/// A TaskManager killed under a running application: the provisioner restarts it, the
/// engine restarts the job (DEGRADED meanwhile, an event), the application is RUNNING again
/// on the same run and the restart is counted in its metrics.
#[tokio::test]
async fn a_killed_taskmanager_degrades_the_application_until_the_engine_recovers() {
    let c = clusters(Storage::Fs).await;
    let a = engine_app(&c, None).await;
    let org = a.new_org("degraded").await;
    let pool = a
        .post(
            "/v1/compute-pools",
            &org.admin,
            json!({ "name": "p", "region": "local", "max_kpu": 4 }),
        )
        .await;
    let created = a
        .post(
            "/v1/applications",
            &org.admin,
            json!({ "name": "job", "compute_pool_id": pool.body["id"], "sql": DATAGEN, "desired_state": "running",
                    "checkpoint": { "interval_ms": 1000, "mode": "exactly_once" } }),
        )
        .await;
    let id = created.body["id"].as_str().unwrap().to_owned();
    let before = wait_phase(&a, &org.admin, &id, "RUNNING").await;
    let pid_file = c
        .root
        .join("clusters")
        .join(&org.id)
        .join(&id)
        .join("tm-0-0/pid");
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    crate::cluster::kill_pid(pid);
    let cluster = ClusterId {
        org_id: org.id.clone(),
        application_id: id.clone(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let o = c.provisioner.observe(&cluster).await.unwrap();
        if o.process_restarts() == 1
            && o.processes.iter().filter(|p| p.exited_at.is_none()).count() == 2
        {
            break;
        }
        assert!(Instant::now() < deadline, "{o:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let events = loop {
        let ev = a
            .get(
                &format!("/v1/applications/{id}/events?page_size=200"),
                &org.admin,
            )
            .await
            .body;
        let phases: Vec<String> = ev["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "phase_changed")
            .map(|e| e["phase"].as_str().unwrap_or("").to_owned())
            .collect();
        if phases.ends_with(&["DEGRADED".to_owned(), "RUNNING".to_owned()]) {
            break ev;
        }
        assert!(Instant::now() < deadline, "phases {phases:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let after = wait_phase(&a, &org.admin, &id, "RUNNING").await;
    assert_eq!(after["run_id"], before["run_id"], "the same run: {events}");
    let m = a
        .get(&format!("/v1/applications/{id}/metrics"), &org.admin)
        .await;
    assert_eq!(m.status, 200, "{}", m.body);
    assert_eq!(m.body["job_state"], "RUNNING");
    assert_eq!(m.body["restarts"], 1, "{}", m.body);
    let del = a
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/applications/{id}"),
            Some(&org.admin),
            None,
        )
        .await;
    assert_eq!(del.status, 202);
    crate::admission::wait_gone(&a, &org.admin, &id).await;
}

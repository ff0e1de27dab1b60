//! The local provisioner: each cluster is a JobManager and `ceil(P / slots)` TaskManagers
//! running `sluice-engine` as child processes of this host.
//!
//! Layout under the provisioner's root:
//! ```text
//! leader.lock, leader-epoch        flock(2) of changes, and the epoch of the newest leader
//! records/{org}__{app}.json        the cluster's record (spec, token, ports, every process
//!                                  incarnation with pid, /proc start time, start/exit times);
//!                                  after a delete it stays as a tombstone (phase terminated)
//!                                  so the exit evidence survives a control-plane crash
//! clusters/{org}/{app}/            working dir: job.sql, token (0600), one dir per process
//!   jm-0/ ports.json pid exit log  incarnation 0 of the JobManager
//!   tm-1-0/ work/ pid exit log     incarnation 0 of TaskManager 1
//! ```
//!
//! Every engine process runs under a tiny `sh` wrapper that is the leader of its own process
//! group (not tied to this process: clusters outlive the control plane). The wrapper records
//! the engine's pid, waits for it and writes `exit` = `{code} {unix seconds.nanos}`: the exit
//! time is measured when it happens even while no control plane is running, which is what
//! billing closes spans with. A restarted provisioner re-adopts a cluster by checking each
//! wrapper's pid *and* its start time in `/proc` (so a reused pid is not mistaken for ours).
//!
//! Leadership: several control planes of one host may share the root; only the one whose
//! reconciler leads acts ([`Provisioner::activate`] at its epoch). Activation writes the
//! epoch to `leader-epoch` under an exclusive `flock` of `leader.lock` and re-reads every
//! record; every change (supervision tick, apply, delete) holds a shared `flock` and first
//! checks that `leader-epoch` is still its own, so a deposed leader that has not noticed
//! yet changes nothing once a successor activated (it steps down instead), and a successor
//! activates only after the deposed leader's in-flight changes ended. Activation also kills
//! processes no record accounts for (a provisioner that died between spawning a process and
//! recording it): they are found in `/proc` by the process directory their environment names
//! (`SLUICE_PROC_DIR`, inherited by the engine), never by a pid that may have been reused.
//!
//! Supervision: a crashed TaskManager is restarted with exponential backoff; a crashed
//! JobManager makes the cluster `Failed` (its TaskManagers are stopped): the reconciler then
//! replaces the cluster at the next generation, restoring from the latest checkpoint, which is
//! the only safe way to restart a JobManager under generation fencing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::process::{Child, Command};
use tokio::sync::Mutex;

use crate::{
    ClusterId, ClusterObservation, ClusterPhase, ClusterSpec, ProcessObservation, ProcessRole,
    ProvisionError, Provisioner, RestoreFrom,
};

/// Tunables of the local provisioner.
#[derive(Debug, Clone)]
pub struct LocalOptions {
    /// Where records and working directories live.
    pub root: PathBuf,
    /// The `sluice-engine` executable.
    pub engine: PathBuf,
    /// How often the supervisor looks at the processes.
    pub poll_interval: Duration,
    /// SIGTERM → SIGKILL grace on delete.
    pub stop_grace: Duration,
    /// First TaskManager restart delay; doubles up to `restart_backoff_max`.
    pub restart_backoff_initial: Duration,
    pub restart_backoff_max: Duration,
    /// Tombstones of deleted clusters older than this are forgotten.
    pub tombstone_ttl: Duration,
}

impl LocalOptions {
    pub fn new(root: impl Into<PathBuf>, engine: impl Into<PathBuf>) -> Self {
        LocalOptions {
            root: root.into(),
            engine: engine.into(),
            poll_interval: Duration::from_millis(100),
            stop_grace: Duration::from_secs(10),
            restart_backoff_initial: Duration::from_millis(500),
            restart_backoff_max: Duration::from_secs(30),
            tombstone_ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Proc {
    role: ProcessRole,
    name: String,
    incarnation: u32,
    /// The wrapper: leader of the process group.
    pid: u32,
    /// Field 22 of `/proc/{pid}/stat` (clock ticks after boot): pid-reuse guard.
    start_ticks: u64,
    started_at: DateTime<Utc>,
    exited_at: Option<DateTime<Utc>>,
    exit_code: Option<i32>,
    dir: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    spec: ClusterSpec,
    token: String,
    phase: ClusterPhase,
    rest_addr: Option<String>,
    rpc_addr: Option<String>,
    procs: Vec<Proc>,
    ended_at: Option<DateTime<Utc>>,
    message: Option<String>,
    deleting: bool,
    work_dir: PathBuf,
}

impl Record {
    fn observation(&self) -> ClusterObservation {
        ClusterObservation {
            id: self.spec.id.clone(),
            run_id: Some(self.spec.run_id.clone()),
            generation: Some(self.spec.generation),
            phase: self.phase,
            rest_url: self.rest_addr.as_ref().map(|a| format!("http://{a}")),
            auth_token: Some(self.token.clone()),
            processes: self
                .procs
                .iter()
                .map(|p| ProcessObservation {
                    role: p.role,
                    name: p.name.clone(),
                    pid: Some(p.pid),
                    pod: None,
                    started_at: p.started_at,
                    exited_at: p.exited_at,
                    exit_code: p.exit_code,
                })
                .collect(),
            started_at: self.procs.iter().map(|p| p.started_at).min(),
            ended_at: self.ended_at,
            message: self.message.clone(),
        }
    }

    fn live(&self) -> impl Iterator<Item = &Proc> {
        self.procs.iter().filter(|p| p.exited_at.is_none())
    }
}

struct Cluster {
    record: Record,
    /// Wrappers this process spawned (reaped through these); adopted ones are watched in /proc.
    children: HashMap<u32, Child>,
    /// TaskManager name → (consecutive quick failures, restart due at).
    restarts: HashMap<String, (u32, Option<tokio::time::Instant>)>,
}

pub struct LocalProvisioner {
    opts: LocalOptions,
    /// The leader epoch this process acts at; `None` while it is a standby.
    lead: std::sync::Mutex<Option<u64>>,
    /// The clusters while active (empty while a standby, which reads records from disk).
    clusters: Mutex<HashMap<ClusterId, Arc<Mutex<Cluster>>>>,
}

/// A held `flock` of `leader.lock` (released when the file closes).
struct LockGuard {
    _file: std::fs::File,
}

impl LocalProvisioner {
    /// Opens the root as the only user of it (tools, tests): re-adopts every recorded
    /// cluster and supervises them at once (epoch 0). A control plane, whose standbys may
    /// share the root, opens it with [`LocalProvisioner::open_standby`] and lets its
    /// reconciler [`activate`](Provisioner::activate) it under leadership.
    pub async fn open(opts: LocalOptions) -> Result<Arc<Self>, ProvisionError> {
        let me = Self::open_standby(opts).await?;
        me.activate(0).await?;
        Ok(me)
    }

    /// Opens the root without acting: `observe` and `list` read the records, `apply` and
    /// `delete` are refused, nothing is supervised until [`Provisioner::activate`]. The
    /// supervisor task stops when the provisioner is dropped.
    pub async fn open_standby(opts: LocalOptions) -> Result<Arc<Self>, ProvisionError> {
        tokio::fs::create_dir_all(opts.root.join("records")).await?;
        tokio::fs::create_dir_all(opts.root.join("clusters")).await?;
        let me = Arc::new(LocalProvisioner {
            opts,
            lead: std::sync::Mutex::new(None),
            clusters: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&me);
        let every = me.opts.poll_interval;
        tokio::spawn(supervise(weak, every));
        Ok(me)
    }

    /// The epoch this process acts at, if it leads.
    pub fn epoch(&self) -> Option<u64> {
        *self.lead.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every record on disk; with `prune`, tombstones past their time are removed.
    async fn load_records(&self, prune: bool) -> Result<Vec<Record>, ProvisionError> {
        let mut out = Vec::new();
        let mut dir = tokio::fs::read_dir(self.opts.root.join("records")).await?;
        while let Some(e) = dir.next_entry().await? {
            let path = e.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                // Pruned by the leader meanwhile.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            let record: Record = serde_json::from_slice(&bytes).map_err(|e| {
                ProvisionError::other(format!("cluster record {}: {e}", path.display()))
            })?;
            if prune
                && record.phase == ClusterPhase::Terminated
                && record.ended_at.is_some_and(|t| {
                    Utc::now()
                        .signed_duration_since(t)
                        .to_std()
                        .unwrap_or_default()
                        > self.opts.tombstone_ttl
                })
            {
                tokio::fs::remove_file(&path).await?;
                continue;
            }
            out.push(record);
        }
        Ok(out)
    }

    /// The record of one cluster as the leader last persisted it.
    async fn read_record(&self, id: &ClusterId) -> Result<Option<Record>, ProvisionError> {
        let path = self.record_path(id);
        match tokio::fs::read(&path).await {
            Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
                ProvisionError::other(format!("cluster record {}: {e}", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    async fn flock(&self, exclusive: bool) -> Result<LockGuard, ProvisionError> {
        let path = self.opts.root.join("leader.lock");
        tokio::task::spawn_blocking(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .read(true)
                .write(true)
                .open(&path)?;
            let op = if exclusive {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            };
            loop {
                if flock(f.as_raw_fd(), op) == 0 {
                    return Ok(LockGuard { _file: f });
                }
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(ProvisionError::other(format!(
                        "flock {}: {e}",
                        path.display()
                    )));
                }
            }
        })
        .await
        .map_err(ProvisionError::other)?
    }

    /// The epoch of the newest leader of this root (0 before any).
    fn disk_epoch(&self) -> Result<u64, ProvisionError> {
        let path = self.opts.root.join("leader-epoch");
        match std::fs::read_to_string(&path) {
            Ok(s) => s.trim().parse().map_err(|e| {
                ProvisionError::other(format!(
                    "{}: {e} (expected a leader epoch, got {:?})",
                    path.display(),
                    s.trim()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Held while this process changes anything: refuses unless it leads, and steps down
    /// when a newer leader activated meanwhile.
    async fn fence(&self) -> Result<LockGuard, ProvisionError> {
        let Some(mine) = self.epoch() else {
            return Err(ProvisionError::NotLeader(format!(
                "the local provisioner at {} is a standby",
                self.opts.root.display()
            )));
        };
        let guard = self.flock(false).await?;
        let newest = self.disk_epoch()?;
        if newest != mine || self.epoch() != Some(mine) {
            tracing::warn!(
                mine,
                newest,
                "a newer leader took the local provisioner over; stepping down"
            );
            self.deactivate(mine).await;
            return Err(ProvisionError::NotLeader(format!(
                "epoch {newest} leads {} now, this process led at {mine}",
                self.opts.root.display()
            )));
        }
        Ok(guard)
    }

    /// Kills the processes started for process directories of `work_dir` that are not
    /// among `recorded` (names), found by their environment in `/proc`, and removes those
    /// directories; returns how many processes were killed.
    async fn sweep(
        &self,
        work_dir: &Path,
        recorded: &[std::ffi::OsString],
    ) -> Result<usize, ProvisionError> {
        let unrecorded = |d: &Path| {
            d.parent() == Some(work_dir)
                && d.file_name()
                    .is_none_or(|n| !recorded.iter().any(|r| r == n))
        };
        let victims: Vec<(u32, PathBuf)> = processes_under(work_dir)
            .into_iter()
            .filter(|(_, d)| unrecorded(d))
            .collect();
        for (pid, dir) in &victims {
            tracing::warn!(dir = %dir.display(), pid, "killing a process no record accounts for");
            // Wrappers lead their own group; never this process's own.
            if let Some(group) = proc_group(*pid)
                && Some(group) != proc_group(std::process::id())
            {
                signal_group(group, libc::SIGKILL);
            }
            send(*pid as libc::pid_t, libc::SIGKILL);
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while processes_under(work_dir).iter().any(|(_, d)| unrecorded(d)) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ProvisionError::other(format!(
                    "an unrecorded process of {} survived SIGKILL",
                    work_dir.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut entries = match tokio::fs::read_dir(work_dir).await {
            Ok(d) => d,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(victims.len()),
            Err(e) => return Err(e.into()),
        };
        while let Some(e) = entries.next_entry().await? {
            if e.file_type().await?.is_dir() && unrecorded(&e.path()) {
                tokio::fs::remove_dir_all(e.path()).await?;
            }
        }
        Ok(victims.len())
    }

    /// Work directories of clusters without a live record: whatever runs there is killed
    /// and the directory removed.
    async fn sweep_unknown(
        &self,
        live: &std::collections::HashSet<ClusterId>,
    ) -> Result<(), ProvisionError> {
        let root = self.opts.root.join("clusters");
        let mut orgs = tokio::fs::read_dir(&root).await?;
        while let Some(org) = orgs.next_entry().await? {
            if !org.file_type().await?.is_dir() {
                continue;
            }
            let mut apps = tokio::fs::read_dir(org.path()).await?;
            while let Some(app) = apps.next_entry().await? {
                let dir = app.path();
                let id = ClusterId {
                    org_id: org.file_name().to_string_lossy().into_owned(),
                    application_id: app.file_name().to_string_lossy().into_owned(),
                };
                if !app.file_type().await?.is_dir() || live.contains(&id) {
                    continue;
                }
                self.sweep(&dir, &[]).await?;
                tokio::fs::remove_dir_all(&dir).await?;
            }
        }
        Ok(())
    }

    fn record_path(&self, id: &ClusterId) -> PathBuf {
        self.opts
            .root
            .join("records")
            .join(format!("{}__{}.json", id.org_id, id.application_id))
    }

    async fn persist(&self, r: &Record) -> Result<(), ProvisionError> {
        let path = self.record_path(&r.spec.id);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(r).map_err(ProvisionError::other)?;
        tokio::fs::write(&tmp, body).await?;
        tokio::fs::rename(&tmp, &path).await?;
        Ok(())
    }

    async fn tick_all(&self) {
        let _fence = match self.fence().await {
            Ok(g) => g,
            Err(ProvisionError::NotLeader(_)) => return,
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "supervision: checking the leader epoch failed");
                return;
            }
        };
        let all: Vec<Arc<Mutex<Cluster>>> = self.clusters.lock().await.values().cloned().collect();
        for c in all {
            let mut c = c.lock().await;
            if let Err(e) = self.tick(&mut c).await {
                tracing::warn!(cluster = %c.record.spec.id, error = %format!("{e:#}"), "supervising a cluster failed");
            }
        }
    }

    /// One supervision step of one cluster; persists the record when it changed.
    async fn tick(&self, c: &mut Cluster) -> Result<(), ProvisionError> {
        if matches!(
            c.record.phase,
            ClusterPhase::Terminated | ClusterPhase::Absent
        ) {
            return Ok(());
        }
        let mut changed = reap(c);
        let deleting = c.record.deleting;
        // A dead JobManager fails the cluster.
        let jm_dead = c
            .record
            .procs
            .iter()
            .rfind(|p| p.role == ProcessRole::Jobmanager)
            .is_some_and(|p| p.exited_at.is_some());
        if jm_dead && !deleting && c.record.phase != ClusterPhase::Failed {
            let code = c
                .record
                .procs
                .iter()
                .rfind(|p| p.role == ProcessRole::Jobmanager)
                .and_then(|p| p.exit_code);
            c.record.phase = ClusterPhase::Failed;
            c.record.message = Some(match code {
                Some(code) => format!("the JobManager exited with code {code}"),
                None => "the JobManager was killed".into(),
            });
            tracing::warn!(cluster = %c.record.spec.id, message = ?c.record.message, "cluster failed");
            for p in c.record.live() {
                signal_engine(p, libc::SIGTERM);
            }
            changed = true;
        }
        if !jm_dead && !deleting && c.record.rest_addr.is_none() {
            let ports_file = c
                .record
                .live()
                .find(|p| p.role == ProcessRole::Jobmanager)
                .map(|jm| jm.dir.join("ports.json"));
            if let Some(ports_file) = ports_file
                && let Some((rest, rpc)) = read_ports(&ports_file).await
            {
                c.record.rest_addr = Some(rest);
                c.record.rpc_addr = Some(rpc);
                c.record.phase = ClusterPhase::Running;
                changed = true;
                for i in 0..c.record.spec.taskmanagers {
                    let name = format!("tm-{i}");
                    self.spawn_tm(c, &name).await?;
                }
            }
        }
        if !jm_dead && !deleting && c.record.rpc_addr.is_some() {
            changed |= self.restart_taskmanagers(c).await?;
        }
        if changed {
            self.persist(&c.record).await?;
        }
        Ok(())
    }

    /// Schedules and performs TaskManager restarts (exponential backoff; a TaskManager that
    /// ran for a minute resets its count).
    async fn restart_taskmanagers(&self, c: &mut Cluster) -> Result<bool, ProvisionError> {
        let now = tokio::time::Instant::now();
        let mut changed = false;
        for i in 0..c.record.spec.taskmanagers {
            let name = format!("tm-{i}");
            let Some(last) = c.record.procs.iter().rfind(|p| p.name == name).cloned() else {
                continue;
            };
            let Some(exited) = last.exited_at else {
                continue;
            };
            let entry = c.restarts.entry(name.clone()).or_insert((0, None));
            match entry.1 {
                None => {
                    let lived = exited.signed_duration_since(last.started_at);
                    if lived > chrono::Duration::seconds(60) {
                        entry.0 = 0;
                    }
                    let factor = 2u32.saturating_pow(entry.0.min(16));
                    let delay = self
                        .opts
                        .restart_backoff_initial
                        .saturating_mul(factor)
                        .min(self.opts.restart_backoff_max);
                    entry.0 += 1;
                    entry.1 = Some(now + delay);
                    tracing::warn!(cluster = %c.record.spec.id, taskmanager = %name,
                        exit_code = ?last.exit_code, delay_ms = delay.as_millis() as u64,
                        "TaskManager exited; restarting after a backoff");
                }
                Some(due) if due <= now => {
                    entry.1 = None;
                    self.spawn_tm(c, &name).await?;
                    c.record.message = Some(format!("restarted TaskManager {name}"));
                    changed = true;
                }
                Some(_) => {}
            }
        }
        Ok(changed)
    }

    async fn spawn_jm(&self, c: &mut Cluster) -> Result<(), ProvisionError> {
        let s = &c.record.spec;
        let inc = next_incarnation(&c.record, "jm");
        let dir = c.record.work_dir.join(format!("jm-{inc}"));
        tokio::fs::create_dir_all(&dir).await?;
        let restore = match &s.restore.from {
            RestoreFrom::None => "none".to_owned(),
            RestoreFrom::Latest => "latest".to_owned(),
            RestoreFrom::Uri { uri } => uri.clone(),
        };
        let mut args: Vec<String> = vec![
            "jobmanager".into(),
            c.record.work_dir.join("job.sql").display().to_string(),
            "--job-id".into(),
            s.job_id.clone(),
            "--generation".into(),
            s.generation.to_string(),
            "--checkpoint-dir".into(),
            s.checkpoint_dir.clone(),
            "--rest-addr".into(),
            "127.0.0.1:0".into(),
            "--rpc-addr".into(),
            "127.0.0.1:0".into(),
            "--ports-file".into(),
            dir.join("ports.json").display().to_string(),
            "--parallelism".into(),
            s.parallelism.to_string(),
            "--state-backend".into(),
            s.state_backend.as_str().into(),
            "--checkpoint-interval-ms".into(),
            s.checkpoint.interval_ms.to_string(),
            "--checkpoint-min-pause-ms".into(),
            s.checkpoint.min_pause_ms.to_string(),
            "--checkpoint-mode".into(),
            s.checkpoint.mode.as_str().into(),
            "--restore".into(),
            restore,
            "--auth-token-file".into(),
            c.record.work_dir.join("token").display().to_string(),
        ];
        if s.restore.allow_non_restored_state {
            args.push("--allow-non-restored-state".into());
        }
        let (proc_, child) = self
            .spawn(c, ProcessRole::Jobmanager, "jm", inc, dir, &args)
            .await?;
        failpoint("provision.after_spawn_jm");
        c.children.insert(proc_.pid, child);
        c.record.procs.push(proc_);
        Ok(())
    }

    async fn spawn_tm(&self, c: &mut Cluster, name: &str) -> Result<(), ProvisionError> {
        let inc = next_incarnation(&c.record, name);
        let dir = c.record.work_dir.join(format!("{name}-{inc}"));
        tokio::fs::create_dir_all(dir.join("work")).await?;
        let rpc =
            c.record.rpc_addr.clone().ok_or_else(|| {
                ProvisionError::other("TaskManager before the JobManager's ports")
            })?;
        let args: Vec<String> = vec![
            "taskmanager".into(),
            "--jobmanager".into(),
            rpc,
            "--slots".into(),
            c.record.spec.slots_per_taskmanager.to_string(),
            "--id".into(),
            format!("{name}-{inc}"),
            "--work-dir".into(),
            dir.join("work").display().to_string(),
            "--auth-token-file".into(),
            c.record.work_dir.join("token").display().to_string(),
        ];
        let (proc_, child) = self
            .spawn(c, ProcessRole::Taskmanager, name, inc, dir, &args)
            .await?;
        failpoint("provision.after_spawn_tm");
        c.children.insert(proc_.pid, child);
        c.record.procs.push(proc_);
        Ok(())
    }

    async fn spawn(
        &self,
        c: &Cluster,
        role: ProcessRole,
        name: &str,
        incarnation: u32,
        dir: PathBuf,
        args: &[String],
    ) -> Result<(Proc, Child), ProvisionError> {
        let log = std::fs::File::create(dir.join("log"))?;
        let log2 = log.try_clone()?;
        // The wrapper waits for the engine and writes its exit code and time, even when
        // no control plane is alive to watch. It also touches `alive` every second: when the
        // whole group is killed while no control plane watches (no `exit` gets written), the
        // last heartbeat bounds the time of death instead of the moment somebody noticed.
        const WRAPPER: &str = r#""$@" &
child=$!
echo "$child" > "$SLUICE_PROC_DIR/pid"
(while kill -0 "$child" 2>/dev/null; do : > "$SLUICE_PROC_DIR/alive"; sleep 1; done) &
wait "$child"
code=$?
printf '%s %s\n' "$code" "$(date -u +%s.%N)" > "$SLUICE_PROC_DIR/exit.tmp"
mv "$SLUICE_PROC_DIR/exit.tmp" "$SLUICE_PROC_DIR/exit""#;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(WRAPPER)
            .arg("sluice-proc")
            .arg(&self.opts.engine)
            .args(args)
            .env("SLUICE_PROC_DIR", &dir)
            .envs(&c.record.spec.engine_env)
            .current_dir(&c.record.work_dir)
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own group: signals to the control plane's group do not reach it, and
            // SIGKILL to the group takes the wrapper and the engine together.
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|e| {
            ProvisionError::other(format!(
                "spawning {} for {name}: {e}",
                self.opts.engine.display()
            ))
        })?;
        let started_at = Utc::now();
        let pid = child
            .id()
            .ok_or_else(|| ProvisionError::other("a spawned process has no pid"))?;
        let start_ticks = proc_start_ticks(pid).unwrap_or(0);
        tracing::info!(cluster = %c.record.spec.id, process = %name, incarnation, pid, "engine process started");
        Ok((
            Proc {
                role,
                name: name.to_owned(),
                incarnation,
                pid,
                start_ticks,
                started_at,
                exited_at: None,
                exit_code: None,
                dir,
            },
            child,
        ))
    }

    async fn create(&self, spec: &ClusterSpec) -> Result<Cluster, ProvisionError> {
        let work_dir = self
            .opts
            .root
            .join("clusters")
            .join(&spec.id.org_id)
            .join(&spec.id.application_id);
        if tokio::fs::try_exists(&work_dir).await? {
            // Left by a provisioner that died before recording what it started there.
            self.sweep(&work_dir, &[]).await?;
            tokio::fs::remove_dir_all(&work_dir).await?;
        }
        tokio::fs::create_dir_all(&work_dir).await?;
        tokio::fs::write(work_dir.join("job.sql"), &spec.sql).await?;
        let token = random_token();
        write_private(&work_dir.join("token"), &token).await?;
        let mut c = Cluster {
            record: Record {
                spec: spec.clone(),
                token,
                phase: ClusterPhase::Starting,
                rest_addr: None,
                rpc_addr: None,
                procs: Vec::new(),
                ended_at: None,
                message: None,
                deleting: false,
                work_dir,
            },
            children: HashMap::new(),
            restarts: HashMap::new(),
        };
        self.spawn_jm(&mut c).await?;
        self.persist(&c.record).await?;
        Ok(c)
    }

    /// Stops every process (SIGTERM to the engines, SIGKILL to the groups after the grace),
    /// records the exits and leaves a tombstone.
    async fn teardown(&self, c: &mut Cluster) -> Result<(), ProvisionError> {
        c.record.deleting = true;
        self.persist(&c.record).await?;
        for p in c.record.live() {
            signal_engine(p, libc::SIGTERM);
        }
        let deadline = tokio::time::Instant::now() + self.opts.stop_grace;
        loop {
            reap(c);
            if c.record.live().next().is_none() {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                for p in c.record.live() {
                    tracing::warn!(cluster = %c.record.spec.id, process = %p.name, "still running after the grace; SIGKILL");
                    signal_group(p.pid, libc::SIGKILL);
                }
                let hard = tokio::time::Instant::now() + Duration::from_secs(10);
                while c.record.live().next().is_some() && tokio::time::Instant::now() < hard {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    reap(c);
                }
                if let Some(p) = c.record.live().next() {
                    return Err(ProvisionError::other(format!(
                        "process {} (pid {}) survived SIGKILL",
                        p.name, p.pid
                    )));
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c.record.phase = ClusterPhase::Terminated;
        c.record.ended_at = c.record.procs.iter().filter_map(|p| p.exited_at).max();
        c.record.rest_addr = None;
        c.record.rpc_addr = None;
        if tokio::fs::try_exists(&c.record.work_dir).await? {
            tokio::fs::remove_dir_all(&c.record.work_dir).await?;
        }
        self.persist(&c.record).await?;
        Ok(())
    }

    async fn handle(&self, id: &ClusterId) -> Option<Arc<Mutex<Cluster>>> {
        self.clusters.lock().await.get(id).cloned()
    }
}

async fn supervise(me: Weak<LocalProvisioner>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(me) = me.upgrade() else { return };
        me.tick_all().await;
    }
}

fn check_id(id: &ClusterId) -> Result<(), ProvisionError> {
    let ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    };
    if ok(&id.org_id) && ok(&id.application_id) {
        Ok(())
    } else {
        Err(ProvisionError::InvalidSpec(format!(
            "cluster id {id} must be lowercase ids of [a-z0-9_]"
        )))
    }
}

#[async_trait]
impl Provisioner for LocalProvisioner {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn apply(&self, spec: &ClusterSpec) -> Result<ClusterObservation, ProvisionError> {
        check_id(&spec.id)?;
        if spec.parallelism == 0 || spec.slots_per_taskmanager == 0 || spec.taskmanagers == 0 {
            return Err(ProvisionError::InvalidSpec(
                "parallelism, slots_per_taskmanager and taskmanagers must be at least 1".into(),
            ));
        }
        if spec.job_id.len() != 32 || !spec.job_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ProvisionError::InvalidSpec(
                "job_id must be 32 hex digits".into(),
            ));
        }
        let _fence = self.fence().await?;
        let mut map = self.clusters.lock().await;
        if let Some(existing) = map.get(&spec.id).cloned() {
            let mut c = existing.lock().await;
            let same =
                c.record.spec.run_id == spec.run_id && c.record.spec.generation == spec.generation;
            if same && c.record.phase != ClusterPhase::Terminated {
                return Ok(c.record.observation());
            }
            if spec.generation < c.record.spec.generation {
                return Err(ProvisionError::InvalidSpec(format!(
                    "generation {} is older than the cluster's {}",
                    spec.generation, c.record.spec.generation
                )));
            }
            if c.record.phase != ClusterPhase::Terminated {
                self.teardown(&mut c).await?;
            }
        }
        let c = self.create(spec).await?;
        let obs = c.record.observation();
        map.insert(spec.id.clone(), Arc::new(Mutex::new(c)));
        Ok(obs)
    }

    async fn observe(&self, id: &ClusterId) -> Result<ClusterObservation, ProvisionError> {
        if self.epoch().is_none() {
            return Ok(match self.read_record(id).await? {
                Some(r) => r.observation(),
                None => ClusterObservation::absent(id.clone()),
            });
        }
        match self.handle(id).await {
            Some(c) => Ok(c.lock().await.record.observation()),
            None => Ok(ClusterObservation::absent(id.clone())),
        }
    }

    async fn list(&self) -> Result<Vec<ClusterObservation>, ProvisionError> {
        if self.epoch().is_none() {
            let mut out: Vec<ClusterObservation> = self
                .load_records(false)
                .await?
                .iter()
                .map(Record::observation)
                .collect();
            out.sort_by(|a, b| a.id.cmp(&b.id));
            return Ok(out);
        }
        let all: Vec<Arc<Mutex<Cluster>>> = self.clusters.lock().await.values().cloned().collect();
        let mut out = Vec::with_capacity(all.len());
        for c in all {
            out.push(c.lock().await.record.observation());
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    async fn delete(&self, id: &ClusterId) -> Result<ClusterObservation, ProvisionError> {
        let _fence = self.fence().await?;
        let Some(c) = self.handle(id).await else {
            return Ok(ClusterObservation::absent(id.clone()));
        };
        let mut c = c.lock().await;
        if c.record.phase != ClusterPhase::Terminated {
            self.teardown(&mut c).await?;
        }
        Ok(c.record.observation())
    }

    async fn activate(&self, epoch: u64) -> Result<(), ProvisionError> {
        // Exclusive: waits for a deposed leader's in-flight changes (they hold it shared).
        let lock = self.flock(true).await?;
        let newest = self.disk_epoch()?;
        if newest > epoch {
            return Err(ProvisionError::NotLeader(format!(
                "{} was led at epoch {newest}, newer than {epoch}: another control plane leads it \
                 (or it belongs to another database)",
                self.opts.root.display()
            )));
        }
        if newest != epoch || !tokio::fs::try_exists(self.opts.root.join("leader-epoch")).await? {
            let path = self.opts.root.join("leader-epoch");
            let tmp = path.with_extension("tmp");
            tokio::fs::write(&tmp, format!("{epoch}\n")).await?;
            tokio::fs::rename(&tmp, &path).await?;
        }
        let mut clusters = HashMap::new();
        let mut live = std::collections::HashSet::new();
        for record in self.load_records(true).await? {
            if record.phase == ClusterPhase::Terminated {
                // A teardown that died before removing the directory.
                if tokio::fs::try_exists(&record.work_dir).await? {
                    self.sweep(&record.work_dir, &[]).await?;
                    tokio::fs::remove_dir_all(&record.work_dir).await?;
                }
            } else {
                let names: Vec<std::ffi::OsString> = record
                    .procs
                    .iter()
                    .filter_map(|p| p.dir.file_name().map(ToOwned::to_owned))
                    .collect();
                self.sweep(&record.work_dir, &names).await?;
                live.insert(record.spec.id.clone());
            }
            tracing::info!(cluster = %record.spec.id, phase = record.phase.as_str(),
                live = record.live().count(), epoch, "re-adopting a cluster");
            clusters.insert(
                record.spec.id.clone(),
                Arc::new(Mutex::new(Cluster {
                    record,
                    children: HashMap::new(),
                    restarts: HashMap::new(),
                })),
            );
        }
        self.sweep_unknown(&live).await?;
        {
            let mut map = self.clusters.lock().await;
            *map = clusters;
            *self.lead.lock().unwrap_or_else(|p| p.into_inner()) = Some(epoch);
        }
        drop(lock);
        // Catch up at once on what happened while nobody watched.
        self.tick_all().await;
        Ok(())
    }

    async fn deactivate(&self, epoch: u64) {
        {
            let mut lead = self.lead.lock().unwrap_or_else(|p| p.into_inner());
            if *lead != Some(epoch) {
                return;
            }
            *lead = None;
        }
        tracing::info!(epoch, "local provisioner: standing by");
        let mut map = self.clusters.lock().await;
        // A newer activation of this process may have come first.
        if self.epoch().is_none() {
            map.clear();
        }
    }
}

/// Aborts the process at a named point when that failpoint is armed (feature `failpoints`,
/// environment `SLUICE_DEV_FAILPOINTS=name,…`): the crash tests stop a control plane between
/// spawning a process and recording it.
#[cfg(feature = "failpoints")]
fn failpoint(name: &str) {
    if std::env::var("SLUICE_DEV_FAILPOINTS").is_ok_and(|v| v.split(',').any(|f| f.trim() == name))
    {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
fn failpoint(_name: &str) {}

fn next_incarnation(r: &Record, name: &str) -> u32 {
    r.procs
        .iter()
        .filter(|p| p.name == name)
        .map(|p| p.incarnation + 1)
        .max()
        .unwrap_or(0)
}

/// Records exits of processes that are gone; true when something changed.
fn reap(c: &mut Cluster) -> bool {
    let mut changed = false;
    for p in c.record.procs.iter_mut().filter(|p| p.exited_at.is_none()) {
        let status = match c.children.get_mut(&p.pid) {
            Some(child) => match child.try_wait() {
                Ok(Some(st)) => Some(Some(st)),
                Ok(None) => None,
                Err(_) => (!alive(p.pid, p.start_ticks)).then_some(None),
            },
            None => (!alive(p.pid, p.start_ticks)).then_some(None),
        };
        let Some(status) = status else { continue };
        c.children.remove(&p.pid);
        let (code, at) = match read_exit(&p.dir) {
            Some((code, at)) => (Some(code), at),
            // The wrapper itself was killed (SIGKILL to the group): it died within a second
            // of its last heartbeat; without one (a record older than heartbeats), now.
            None => (
                status.and_then(|s| s.code()),
                last_heartbeat(&p.dir).unwrap_or_else(Utc::now),
            ),
        };
        p.exited_at = Some(at.max(p.started_at));
        p.exit_code = code;
        tracing::info!(process = %p.name, pid = p.pid, exit_code = ?code, "engine process exited");
        changed = true;
    }
    changed
}

fn last_heartbeat(dir: &Path) -> Option<DateTime<Utc>> {
    let modified = std::fs::metadata(dir.join("alive")).ok()?.modified().ok()?;
    Some(DateTime::<Utc>::from(modified))
}

fn read_exit(dir: &Path) -> Option<(i32, DateTime<Utc>)> {
    let s = std::fs::read_to_string(dir.join("exit")).ok()?;
    let mut it = s.split_whitespace();
    let code: i32 = it.next()?.parse().ok()?;
    let (secs, nanos) = it.next()?.split_once('.')?;
    let at = DateTime::from_timestamp(secs.parse().ok()?, nanos.get(..9)?.parse().ok()?)?;
    Some((code, at))
}

async fn read_ports(path: &Path) -> Option<(String, String)> {
    let bytes = tokio::fs::read(path).await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    Some((
        v["rest"].as_str()?.to_owned(),
        v["rpc"].as_str()?.to_owned(),
    ))
}

/// Start time of a process in clock ticks after boot (`/proc/{pid}/stat` field 22);
/// `None` when it does not exist or is a zombie.
pub fn proc_start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

fn alive(pid: u32, start_ticks: u64) -> bool {
    proc_start_ticks(pid).is_some_and(|t| start_ticks == 0 || t == start_ticks)
}

fn signal_engine(p: &Proc, sig: libc::c_int) {
    let engine = std::fs::read_to_string(p.dir.join("pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok());
    match engine {
        Some(pid) => send(pid as libc::pid_t, sig),
        // The wrapper has not forked the engine yet: the whole group.
        None => signal_group(p.pid, sig),
    }
}

/// Live processes started for a process directory below `under` (wrappers, engines and
/// the wrappers' heartbeat loops inherit `SLUICE_PROC_DIR`), with that directory.
fn processes_under(under: &Path) -> Vec<(u32, PathBuf)> {
    let prefix = format!("SLUICE_PROC_DIR={}/", under.display());
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if proc_start_ticks(pid).is_none() {
            continue;
        }
        // Other users' processes are unreadable, and never ours.
        let Ok(env) = std::fs::read(e.path().join("environ")) else {
            continue;
        };
        let dir = env
            .split(|b| *b == 0)
            .find_map(|v| std::str::from_utf8(v).ok()?.strip_prefix(&prefix));
        if let Some(dir) = dir {
            out.push((pid, under.join(dir)));
        }
    }
    out
}

/// The process group of `pid` (`/proc/{pid}/stat` field 5).
fn proc_group(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(2)?.parse().ok()
}

#[allow(unsafe_code)]
fn flock(fd: std::os::fd::RawFd, op: libc::c_int) -> libc::c_int {
    // SAFETY: flock(2) on a descriptor the caller owns; touches no memory.
    unsafe { libc::flock(fd, op) }
}

fn signal_group(pgid: u32, sig: libc::c_int) {
    send(-(pgid as libc::pid_t), sig);
}

#[allow(unsafe_code)]
fn send(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) touches no memory; pids and groups are ones this provisioner started
    // (checked against their /proc start time before any signal while adopted).
    unsafe {
        libc::kill(pid, sig);
    }
}

fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

async fn write_private(path: &Path, data: &str) -> Result<(), ProvisionError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = path.to_owned();
    let data = data.to_owned();
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        f.write_all(data.as_bytes())?;
        f.sync_all()
    })
    .await
    .map_err(ProvisionError::other)??;
    Ok(())
}

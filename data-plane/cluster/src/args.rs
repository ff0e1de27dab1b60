//! Command lines of `sluice-engine jobmanager` and `sluice-engine taskmanager`. The control
//! plane's provisioners launch the processes with exactly these flags: renaming one breaks them.

use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(clap::Args, Debug, Clone)]
pub struct JobManagerArgs {
    /// The job: a Flink SQL statement set.
    pub job: PathBuf,
    /// 32 hex digits (Flink's JobID form).
    #[arg(long)]
    pub job_id: String,
    /// Run generation: fences checkpoints of older JobManagers of the same job.
    #[arg(long)]
    pub generation: u64,
    /// The job root in the blob store: `file:///abs` or `s3://bucket/prefix`.
    #[arg(long)]
    pub checkpoint_dir: String,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub rest_addr: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    pub rpc_addr: SocketAddr,
    /// Written (temp + rename) once both ports are bound: `{"rest":…,"rpc":…,"pid":…}`.
    #[arg(long)]
    pub ports_file: Option<PathBuf>,
    /// Subtasks per vertex; default: `SET 'parallelism.default'` or 1.
    #[arg(long)]
    pub parallelism: Option<usize>,
    #[arg(long, default_value_t = 128)]
    pub max_parallelism: u16,
    #[arg(long, default_value = "memory")]
    pub state_backend: String,
    /// 0 turns periodic checkpoints off.
    #[arg(long, default_value_t = 0)]
    pub checkpoint_interval_ms: u64,
    #[arg(long, default_value_t = 0)]
    pub checkpoint_min_pause_ms: u64,
    #[arg(long, default_value_t = 600_000)]
    pub checkpoint_timeout_ms: u64,
    #[arg(long, default_value = "exactly_once")]
    pub checkpoint_mode: String,
    #[arg(long, default_value_t = 3)]
    pub checkpoints_retained: usize,
    /// `none`, `latest` (the newest completed checkpoint of any generation; a fresh start if
    /// there is none) or the URI of a savepoint/checkpoint directory holding `_metadata`.
    #[arg(long, default_value = "none")]
    pub restore: String,
    #[arg(long)]
    pub allow_non_restored_state: bool,
    /// REST needs `Authorization: Bearer <token>` and TaskManagers present the token.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// How often heartbeats go each way.
    #[arg(long, default_value_t = 500)]
    pub heartbeat_interval_ms: u64,
    /// A TaskManager silent for this long is declared lost (a closed connection is at once).
    #[arg(long, default_value_t = 2000)]
    pub heartbeat_timeout_ms: u64,
    /// First delay before a restart after a failure; doubles up to the max.
    #[arg(long, default_value_t = 100)]
    pub restart_backoff_initial_ms: u64,
    #[arg(long, default_value_t = 10_000)]
    pub restart_backoff_max_ms: u64,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TaskManagerArgs {
    /// RPC address of the JobManager.
    #[arg(long)]
    pub jobmanager: String,
    #[arg(long)]
    pub slots: usize,
    #[arg(long)]
    pub id: String,
    /// Local working directory (state backends' files).
    #[arg(long)]
    pub work_dir: PathBuf,
    /// Where other TaskManagers connect to send this one's subtasks their input.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub data_addr: SocketAddr,
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// How long to keep trying to (re)register while no JobManager answers, then exit.
    #[arg(long, default_value_t = 60_000)]
    pub register_timeout_ms: u64,
    /// The JobManager is declared gone after this long without a heartbeat from it.
    #[arg(long, default_value_t = 2000)]
    pub heartbeat_timeout_ms: u64,
}

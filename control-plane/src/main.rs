//! `sluice`: the control-plane binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_control_plane::{config::Config, server, store, telemetry};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice: managed stream processing")]
struct Cli {
    /// TOML configuration file; environment variables SLUICE_* override it.
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, the console and the health endpoints.
    Server,
    /// Apply pending database migrations and exit.
    Migrate,
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let cfg = match Config::load(cli.config.as_deref(), std::env::vars()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("sluice: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    if let Err(e) = telemetry::init(&cfg.log) {
        eprintln!("sluice: {e:#}");
        return std::process::ExitCode::from(2);
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli.command, cfg)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "sluice exited with an error");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command, cfg: Config) -> anyhow::Result<()> {
    match command {
        Command::Migrate => {
            let db = store::connect(&cfg.database).await?;
            store::migrate(&db).await?;
            let state = store::schema_state(&db).await?;
            tracing::info!(?state, "migrations applied");
            db.close().await;
            Ok(())
        }
        Command::Server => {
            let running = server::start(cfg).await.context("start the server")?;
            tracing::info!(addr = %running.addr, "sluice server listening");
            let task = running.task;
            tokio::pin!(task);
            tokio::select! {
                sig = server::shutdown_signal() => {
                    tracing::info!(signal = sig?, "shutting down");
                    running.shutdown.cancel();
                    task.await.context("server task")??;
                }
                r = &mut task => r.context("server task")??,
            }
            tracing::info!("stopped");
            Ok(())
        }
    }
}

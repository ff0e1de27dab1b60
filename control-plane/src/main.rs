//! `sluice`: the control-plane binary.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sluice_control_plane::{cli, config::Config, server, store, telemetry};

#[derive(Parser)]
#[command(name = "sluice", version, about = "Sluice: managed stream processing")]
struct Cli {
    /// TOML configuration file; environment variables SLUICE_* override it.
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    /// Client commands: the server's URL.
    #[arg(long, global = true, env = "SLUICE_CLI_URL")]
    url: Option<String>,
    /// Client commands: an access token (instead of the session of `sluice login`).
    #[arg(long, global = true, env = "SLUICE_CLI_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Client commands: where `sluice login` keeps the session.
    #[arg(long, global = true, env = "SLUICE_CLI_SESSION")]
    session: Option<PathBuf>,
    /// Client commands: table or the API's JSON.
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: cli::Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the API, the console and the health endpoints.
    Server,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Platform operator tasks.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print the OpenAPI document of the API (what `openapi/openapi.json` holds).
    Openapi,
    #[command(flatten)]
    Client(cli::ClientCmd),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Make sure an organization and its admin exist, and print a fresh API key
    /// of that admin (idempotent: reruns reuse both and replace the key).
    Bootstrap {
        /// Organization name.
        #[arg(long)]
        org: String,
        /// The admin's email (their login).
        #[arg(long)]
        email: String,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Command::Client(cmd) = cli.command {
        let opts = cli::Opts {
            url: cli.url,
            token: cli.token,
            output: cli.output,
            session: cli.session,
        };
        let rt = match tokio::runtime::Runtime::new() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("sluice: start the async runtime: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        return match rt.block_on(cli::run(&opts, cmd, &mut std::io::stdout())) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("sluice: {e:#}");
                std::process::ExitCode::FAILURE
            }
        };
    }
    if let Command::Openapi = cli.command {
        return match sluice_control_plane::http::openapi().to_pretty_json() {
            Ok(json) => {
                println!("{json}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice: render the OpenAPI document: {e}");
                std::process::ExitCode::FAILURE
            }
        };
    }
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
        Command::Openapi | Command::Client(_) => Ok(()),
        Command::Admin(AdminCommand::Bootstrap { org, email }) => {
            let db = store::connect(&cfg.database).await?;
            store::migrate(&db).await?;
            let done = sluice_control_plane::service::organization::bootstrap(&db, &org, &email)
                .await
                .map_err(|e| anyhow::anyhow!("bootstrap: {e}: {e:?}"))?;
            db.close().await;
            println!(
                "organization: {} ({})",
                done.organization.name, done.organization.id
            );
            println!(
                "admin:        {email} ({}{})",
                done.user_id,
                if done.created_user { ", created" } else { "" }
            );
            println!("api key id:   {}", done.api_key_id);
            println!("api secret:   {}", done.secret);
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

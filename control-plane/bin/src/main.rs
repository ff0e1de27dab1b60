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
    /// The platform operator's billing commands: rate, reconcile, export, price-book
    /// (against the database, so they work while the API is down).
    #[command(subcommand)]
    Billing(sluice_control_plane::service::billing_ops::BillingCmd),
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
        Command::Billing(cmd) => {
            let db = store::connect(&cfg.database).await?;
            let done = sluice_control_plane::service::billing_ops::run(
                &db,
                &cfg.regions,
                cmd,
                &mut std::io::stdout(),
            )
            .await;
            db.close().await;
            done
        }
        Command::Server => {
            // Installed before anything listens: a SIGTERM that arrives as soon as the
            // server answers must find the handler, not the default action.
            let signals = server::shutdown_signals()?;
            tokio::pin!(signals);
            let provisioner = kubernetes_provisioner(&cfg).await?;
            let engine = sluice_control_plane::reconcile::engine_from_config(
                &cfg,
                std::sync::Arc::new(S3Opener(s3_options(&cfg))),
                provisioner,
            )
            .await
            .context("set up provisioning")?;
            let injected = server::Injected {
                engine: Some(engine),
            };
            let running = server::start_with(cfg, injected)
                .await
                .context("start the server")?;
            tracing::info!(addr = %running.addr, "sluice server listening");
            let task = running.task;
            tokio::pin!(task);
            tokio::select! {
                sig = &mut signals => {
                    tracing::info!(signal = sig, "shutting down");
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

/// Opens `file://` and `s3://` storage for the control plane (the library links no S3 client).
struct S3Opener(sluice_blob_s3::OpenOptions);

#[async_trait::async_trait]
impl sluice_control_plane::service::savepoint_runtime::BlobOpener for S3Opener {
    async fn open(
        &self,
        uri: &str,
    ) -> Result<std::sync::Arc<dyn sluice_blob::BlobStore>, sluice_blob::BlobError> {
        sluice_blob_s3::open(uri, &self.0).await
    }
}

/// S3 settings from `storage.engine_env` (the engines' own `S3_ENDPOINT`,
/// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`), so the control plane
/// reads the same store the engines write.
fn s3_options(cfg: &Config) -> sluice_blob_s3::OpenOptions {
    let env = |k: &str| {
        cfg.storage
            .engine_env
            .get(k)
            .filter(|v| !v.is_empty())
            .cloned()
    };
    let s3 = match env("S3_ENDPOINT") {
        Some(endpoint) => sluice_blob_s3::S3Options::compatible(
            &endpoint,
            &env("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            &env("AWS_ACCESS_KEY_ID").unwrap_or_default(),
            &env("AWS_SECRET_ACCESS_KEY").unwrap_or_default(),
        ),
        None => sluice_blob_s3::S3Options {
            region: env("AWS_REGION"),
            force_path_style: true,
            ..sluice_blob_s3::S3Options::default()
        },
    };
    sluice_blob_s3::OpenOptions { s3 }
}

/// The Kubernetes provisioner when the configuration asks for it; the local one is built by
/// the library, which does not link the Kubernetes client.
async fn kubernetes_provisioner(
    cfg: &Config,
) -> anyhow::Result<Option<std::sync::Arc<dyn sluice_provisioner::Provisioner>>> {
    if cfg.provisioner.kind != sluice_control_plane::config::ProvisionerKind::Kubernetes {
        return Ok(None);
    }
    let k8s: sluice_provisioner_k8s::K8sConfig = serde_json::from_value(serde_json::Value::Object(
        cfg.provisioner.kubernetes.clone(),
    ))
    .context("provisioner.kubernetes")?;
    let p = sluice_provisioner_k8s::K8sProvisioner::connect(k8s)
        .await
        .context("connect the Kubernetes provisioner")?;
    Ok(Some(std::sync::Arc::new(p)))
}

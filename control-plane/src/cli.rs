//! The `sluice` command-line client: login, pools, applications, versions,
//! API keys and operations, through the typed client (`sluice-client`).
//! Output is a table, or the API's JSON with `--output json`.
//!
//! The session (`sluice login`) is kept in `$SLUICE_CLI_SESSION`, else
//! `$HOME/.config/sluice/session.json`; `--url` / `--token` (or
//! `SLUICE_CLI_URL` / `SLUICE_CLI_TOKEN`) override it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Subcommand, ValueEnum};
use serde::{Deserialize, Serialize};
use sluice_api_types::{
    Admission, CreateApiKey, CreateApplication, CreateComputePool, LoginRequest, Role,
    RollbackRequest, TokenRequest, UpdateApplication, UpdateComputePool,
};
use sluice_client::{
    Client, ListApiKeysQuery, ListApplicationVersionsQuery, ListApplicationsQuery,
    ListComputePoolsQuery,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Options every client command takes.
#[derive(Debug, Clone)]
pub struct Opts {
    pub url: Option<String>,
    pub token: Option<String>,
    pub output: Output,
    pub session: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ClientCmd {
    /// Get an access token (API key, or email + password) and keep it in the session file.
    Login {
        #[arg(long)]
        key_id: Option<String>,
        #[arg(long, env = "SLUICE_CLI_SECRET", hide_env_values = true)]
        secret: Option<String>,
        #[arg(long)]
        email: Option<String>,
        #[arg(long, env = "SLUICE_CLI_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Compute pools.
    #[command(subcommand)]
    Pools(PoolsCmd),
    /// Applications.
    #[command(subcommand, name = "apps")]
    Apps(AppsCmd),
    /// Immutable versions of an application's spec.
    #[command(subcommand)]
    Versions(VersionsCmd),
    /// API keys.
    #[command(subcommand, name = "api-keys")]
    ApiKeys(ApiKeysCmd),
    /// Asynchronous operations.
    #[command(subcommand)]
    Operations(OperationsCmd),
}

#[derive(Debug, Subcommand)]
pub enum PoolsCmd {
    List,
    Get {
        id: String,
    },
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        region: String,
        #[arg(long)]
        max_kpu: u32,
        #[arg(long, value_enum, default_value = "reject")]
        admission: AdmissionArg,
    },
    Update {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        max_kpu: Option<u32>,
        #[arg(long, value_enum)]
        admission: Option<AdmissionArg>,
        /// The version the change is based on (`version` of `get`).
        #[arg(long)]
        if_version: Option<i64>,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum AdmissionArg {
    Reject,
    Queue,
}

impl From<AdmissionArg> for Admission {
    fn from(a: AdmissionArg) -> Self {
        match a {
            AdmissionArg::Reject => Admission::Reject,
            AdmissionArg::Queue => Admission::Queue,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum AppsCmd {
    List,
    Get {
        id: String,
    },
    /// Create from a JSON file with the body of `POST /v1/applications`.
    Create {
        #[arg(long)]
        file: PathBuf,
    },
    /// Change with a JSON file with the body of `PATCH /v1/applications/{id}`.
    Update {
        id: String,
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        if_version: Option<i64>,
    },
    Delete {
        id: String,
    },
    Start {
        id: String,
    },
    Stop {
        id: String,
    },
    Rollback {
        id: String,
        #[arg(long)]
        to_version: Option<i64>,
    },
}

#[derive(Debug, Subcommand)]
pub enum VersionsCmd {
    List { app: String },
    Get { app: String, version: i64 },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeysCmd {
    List,
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        role: Option<String>,
        #[arg(long)]
        service_account: Option<String>,
        #[arg(long)]
        pool: Option<String>,
    },
    Revoke {
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OperationsCmd {
    Get { id: String },
}

#[derive(Debug, Serialize, Deserialize)]
struct Session {
    url: String,
    token: String,
}

fn session_path(opts: &Opts) -> anyhow::Result<PathBuf> {
    if let Some(p) = &opts.session {
        return Ok(p.clone());
    }
    let home = std::env::var_os("HOME")
        .context("HOME is not set; give --session or SLUICE_CLI_SESSION")?;
    Ok(PathBuf::from(home).join(".config/sluice/session.json"))
}

fn client(opts: &Opts) -> anyhow::Result<Client> {
    let saved: Option<Session> = session_path(opts)
        .ok()
        .and_then(|p| std::fs::read(&p).ok())
        .map(|b| serde_json::from_slice(&b))
        .transpose()
        .context("read the session file (run `sluice login` again)")?;
    let url = opts
        .url
        .clone()
        .or_else(|| saved.as_ref().map(|s| s.url.clone()))
        .context("no server URL: give --url or run `sluice login --url …`")?;
    let token = opts
        .token
        .clone()
        .or_else(|| saved.map(|s| s.token))
        .context("not logged in: run `sluice login` or give --token")?;
    Ok(Client::new(&url).with_token(&token))
}

fn ids(s: &str) -> Result<sluice_api_types::PoolId, anyhow::Error> {
    s.parse().map_err(|e| anyhow::anyhow!("{e}"))
}

/// Prints `value` as JSON, or as a table of `columns` (JSON pointers into each row).
fn print<T: Serialize>(
    out: &mut dyn Write,
    opts: &Opts,
    value: &T,
    rows_at: Option<&str>,
    columns: &[(&str, &str)],
) -> anyhow::Result<()> {
    let v = serde_json::to_value(value)?;
    if opts.output == Output::Json {
        writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    let rows: Vec<&serde_json::Value> = match rows_at {
        Some(p) => v
            .pointer(p)
            .and_then(|r| r.as_array())
            .map(|a| a.iter().collect())
            .unwrap_or_default(),
        None => vec![&v],
    };
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            columns
                .iter()
                .map(|(_, ptr)| match r.pointer(ptr) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(serde_json::Value::Null) | None => "-".into(),
                    Some(other) => other.to_string(),
                })
                .collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (h, _))| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([h.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |vals: Vec<&str>| {
        vals.iter()
            .zip(&widths)
            .map(|(v, w)| format!("{v:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    writeln!(out, "{}", line(columns.iter().map(|(h, _)| *h).collect()))?;
    for c in &cells {
        writeln!(out, "{}", line(c.iter().map(String::as_str).collect()))?;
    }
    if let Some(t) = v.get("next_page_token").and_then(|t| t.as_str()) {
        writeln!(out, "(more: next page token {t})")?;
    }
    Ok(())
}

const POOL: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("REGION", "/region"),
    ("MAX_KPU", "/max_kpu"),
    ("ADMISSION", "/admission"),
    ("KPU_MILLI", "/status/current_kpu_milli"),
    ("VERSION", "/version"),
];
const APP: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("NAME", "/spec/name"),
    ("POOL", "/spec/compute_pool_id"),
    ("DESIRED", "/spec/desired_state"),
    ("PHASE", "/status/phase"),
    ("VERSION", "/version"),
];
const VERSION: &[(&str, &str)] = &[
    ("VERSION", "/version"),
    ("CREATED_BY", "/created_by"),
    ("AT", "/created_at"),
    ("CHANGES", "/diff"),
];
const KEY: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("NAME", "/name"),
    ("ROLE", "/role"),
    ("POOL", "/compute_pool_id"),
    ("EXPIRES", "/expires_at"),
    ("REVOKED", "/revoked_at"),
];
const OP: &[(&str, &str)] = &[
    ("ID", "/id"),
    ("KIND", "/kind"),
    ("APPLICATION", "/application_id"),
    ("TARGET", "/target_version"),
    ("STATE", "/state"),
    ("ERROR", "/error/code"),
];

fn read_json<T: serde::de::DeserializeOwned>(path: &PathBuf) -> anyhow::Result<T> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a valid request body", path.display()))
}

fn etag(v: Option<i64>) -> Option<String> {
    v.map(|n| format!("\"{n}\""))
}

/// Runs one client command, writing its output to `out`.
pub async fn run(opts: &Opts, cmd: ClientCmd, out: &mut dyn Write) -> anyhow::Result<()> {
    // One page of the largest size: the table says when there is more.
    let page_size = Some(200);
    match cmd {
        ClientCmd::Login {
            key_id,
            secret,
            email,
            password,
        } => {
            let url = opts
                .url
                .clone()
                .context("login needs --url (or SLUICE_CLI_URL)")?;
            let c = Client::new(&url);
            let t = match (key_id, secret, email, password) {
                (Some(key_id), Some(secret), None, None) => {
                    c.token(&TokenRequest { key_id, secret }).await?
                }
                (None, None, Some(email), Some(password)) => {
                    c.login(&LoginRequest { email, password }).await?
                }
                _ => anyhow::bail!(
                    "login needs either --key-id and --secret, or --email and --password"
                ),
            };
            let path = session_path(opts)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("create {}", dir.display()))?;
            }
            let body = serde_json::to_vec_pretty(&Session {
                url,
                token: t.access_token,
            })?;
            std::fs::write(&path, body).with_context(|| format!("write {}", path.display()))?;
            let me = client(opts)?.me().await?;
            print(
                out,
                opts,
                &me,
                None,
                &[
                    ("ORGANIZATION", "/organization/name"),
                    ("PRINCIPAL", "/principal/id"),
                    ("ROLE", "/role"),
                ],
            )
        }
        ClientCmd::Pools(c) => {
            let api = client(opts)?;
            match c {
                PoolsCmd::List => print(
                    out,
                    opts,
                    &api.list_compute_pools(&ListComputePoolsQuery {
                        page_size,
                        ..Default::default()
                    })
                    .await?,
                    Some("/items"),
                    POOL,
                ),
                PoolsCmd::Get { id } => print(
                    out,
                    opts,
                    &api.get_compute_pool(&id).await?.value,
                    None,
                    POOL,
                ),
                PoolsCmd::Create {
                    name,
                    region,
                    max_kpu,
                    admission,
                } => {
                    let req = CreateComputePool {
                        name,
                        region,
                        max_kpu,
                        admission: admission.into(),
                    };
                    print(
                        out,
                        opts,
                        &api.create_compute_pool(&req, None).await?.value,
                        None,
                        POOL,
                    )
                }
                PoolsCmd::Update {
                    id,
                    name,
                    max_kpu,
                    admission,
                    if_version,
                } => {
                    let req = UpdateComputePool {
                        name,
                        max_kpu,
                        admission: admission.map(Into::into),
                    };
                    let p = api
                        .update_compute_pool(&id, &req, etag(if_version).as_deref())
                        .await?;
                    print(out, opts, &p.value, None, POOL)
                }
                PoolsCmd::Delete { id } => {
                    api.delete_compute_pool(&id, None).await?;
                    writeln!(out, "deleted {id}")?;
                    Ok(())
                }
            }
        }
        ClientCmd::Apps(c) => {
            let api = client(opts)?;
            match c {
                AppsCmd::List => print(
                    out,
                    opts,
                    &api.list_applications(&ListApplicationsQuery {
                        page_size,
                        ..Default::default()
                    })
                    .await?,
                    Some("/items"),
                    APP,
                ),
                AppsCmd::Get { id } => {
                    print(out, opts, &api.get_application(&id).await?.value, None, APP)
                }
                AppsCmd::Create { file } => {
                    let req: CreateApplication = read_json(&file)?;
                    print(
                        out,
                        opts,
                        &api.create_application(&req, None).await?.value,
                        None,
                        APP,
                    )
                }
                AppsCmd::Update {
                    id,
                    file,
                    if_version,
                } => {
                    let req: UpdateApplication = read_json(&file)?;
                    let a = api
                        .update_application(&id, &req, etag(if_version).as_deref())
                        .await?;
                    print(out, opts, &a.value, None, APP)
                }
                AppsCmd::Delete { id } => print(
                    out,
                    opts,
                    &api.delete_application(&id, None).await?,
                    None,
                    OP,
                ),
                AppsCmd::Start { id } => print(
                    out,
                    opts,
                    &api.start_application(&id, None, None).await?,
                    None,
                    OP,
                ),
                AppsCmd::Stop { id } => print(
                    out,
                    opts,
                    &api.stop_application(&id, None, None, None).await?,
                    None,
                    OP,
                ),
                AppsCmd::Rollback { id, to_version } => {
                    let req = RollbackRequest { to_version };
                    print(
                        out,
                        opts,
                        &api.rollback_application(&id, Some(&req), None, None)
                            .await?,
                        None,
                        OP,
                    )
                }
            }
        }
        ClientCmd::Versions(c) => {
            let api = client(opts)?;
            match c {
                VersionsCmd::List { app } => print(
                    out,
                    opts,
                    &api.list_application_versions(
                        &app,
                        &ListApplicationVersionsQuery {
                            page_size,
                            ..Default::default()
                        },
                    )
                    .await?,
                    Some("/items"),
                    VERSION,
                ),
                VersionsCmd::Get { app, version } => print(
                    out,
                    opts,
                    &api.get_application_version(&app, version).await?,
                    None,
                    VERSION,
                ),
            }
        }
        ClientCmd::ApiKeys(c) => {
            let api = client(opts)?;
            match c {
                ApiKeysCmd::List => print(
                    out,
                    opts,
                    &api.list_api_keys(&ListApiKeysQuery {
                        page_size,
                        ..Default::default()
                    })
                    .await?,
                    Some("/items"),
                    KEY,
                ),
                ApiKeysCmd::Create {
                    name,
                    role,
                    service_account,
                    pool,
                } => {
                    let role = role
                        .map(|r| Role::parse(&r).with_context(|| format!("unknown role '{r}'")))
                        .transpose()?;
                    let req = CreateApiKey {
                        name,
                        service_account_id: service_account
                            .map(|s| s.parse())
                            .transpose()
                            .map_err(|e| anyhow::anyhow!("{e}"))?,
                        role,
                        compute_pool_id: pool.as_deref().map(ids).transpose()?,
                        expires_at: None,
                    };
                    let created = api.create_api_key(&req, None).await?;
                    print(
                        out,
                        opts,
                        &created,
                        None,
                        &[
                            ("ID", "/api_key/id"),
                            ("ROLE", "/api_key/role"),
                            ("SECRET (shown once)", "/secret"),
                        ],
                    )
                }
                ApiKeysCmd::Revoke { id } => {
                    api.revoke_api_key(&id).await?;
                    writeln!(out, "revoked {id}")?;
                    Ok(())
                }
            }
        }
        ClientCmd::Operations(OperationsCmd::Get { id }) => print(
            out,
            opts,
            &client(opts)?.get_operation(&id).await?,
            None,
            OP,
        ),
    }
}

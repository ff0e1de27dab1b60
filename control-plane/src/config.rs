//! Server configuration: built-in defaults, then a TOML file (`--config` or
//! `SLUICE_CONFIG`), then environment variables `SLUICE_<KEY>` with `__`
//! between nesting levels (`SLUICE_DATABASE__URL`). Unknown keys are an error,
//! so a typo never silently falls back to a default. `SLUICE_DEV_*` variables
//! belong to the dev and test scripts, `SLUICE_CLI_*` to the command-line
//! client; neither is server configuration.

use std::net::SocketAddr;
use std::path::Path;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the public API, the console and the health endpoints.
    pub listen: SocketAddr,
    pub database: DatabaseConfig,
    pub log: LogConfig,
    /// How long in-flight requests may take to finish after SIGTERM/SIGINT.
    pub shutdown_grace_ms: u64,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    /// Regions a compute pool may name (TOML array, or comma-separated in the environment).
    #[serde(deserialize_with = "list_or_csv")]
    pub regions: Vec<String>,
    /// Savepoint schedules, workers, retention and disposal.
    #[serde(default)]
    pub savepoints: SavepointConfig,
    /// The budget pass.
    #[serde(default)]
    pub billing: BillingConfig,
    /// Where the server keeps local state: the local provisioner's clusters
    /// (`{data_dir}/clusters`) and the default blob store (`{data_dir}/blobs`).
    #[serde(default = "default_data_dir")]
    pub data_dir: std::path::PathBuf,
    /// The engine binary the provisioners launch.
    #[serde(default)]
    pub engine: EngineConfig,
    /// How clusters are provisioned.
    #[serde(default)]
    pub provisioner: ProvisionerConfig,
    /// Where applications keep checkpoints and savepoints.
    #[serde(default)]
    pub storage: StorageConfig,
    /// The reconciler (leader-elected; every replica runs a standby).
    #[serde(default)]
    pub reconciler: ReconcilerConfig,
}

fn default_data_dir() -> std::path::PathBuf {
    "sluice-data".into()
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// The `sluice-engine` executable; default: `sluice-engine` beside the `sluice` executable.
    pub binary: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisionerKind {
    /// Engine processes on this host (the embedded default).
    #[default]
    Local,
    /// Pods in a Kubernetes cluster.
    Kubernetes,
    /// No provisioning: the API records intents only.
    None,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProvisionerConfig {
    pub kind: ProvisionerKind,
    /// Local provisioner: records and working directories; default `{data_dir}/clusters`.
    pub root: Option<std::path::PathBuf>,
    /// SIGTERM → SIGKILL grace when a cluster is deleted.
    pub stop_grace_ms: u64,
    /// Settings of the Kubernetes provisioner (`kind = "kubernetes"`), checked by the
    /// `sluice` binary, which links it: the library stays free of the Kubernetes client.
    pub kubernetes: serde_json::Map<String, serde_json::Value>,
}

impl Default for ProvisionerConfig {
    fn default() -> Self {
        ProvisionerConfig {
            kind: ProvisionerKind::Local,
            root: None,
            stop_grace_ms: 10_000,
            kubernetes: serde_json::Map::new(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// `file:///abs/dir` or `s3://bucket/prefix`; default `file://{data_dir}/blobs`.
    pub root: Option<String>,
    /// Environment of engine processes (`S3_ENDPOINT`, `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`); the control plane uses the same settings.
    pub engine_env: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReconcilerConfig {
    pub enabled: bool,
    /// Time between passes (an accepted intent wakes the leader at once).
    pub interval_ms: u64,
    /// Applications reconciled at once.
    pub concurrency: usize,
    /// Backoff of an application whose step failed: doubles up to the maximum, jittered.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    /// A stop-with-savepoint still in progress after this long is given up.
    pub savepoint_timeout_ms: u64,
    /// The PostgreSQL advisory lock whose holder leads.
    pub leader_lock_key: i64,
}

impl Default for ReconcilerConfig {
    fn default() -> Self {
        ReconcilerConfig {
            enabled: true,
            interval_ms: 1_000,
            concurrency: 16,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 60_000,
            savepoint_timeout_ms: 300_000,
            leader_lock_key: 0x5e1c_e001,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingConfig {
    /// How often the budget pass runs (threshold alerts, hard stops); 0 turns it off.
    pub budget_interval_ms: u64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            budget_interval_ms: 60_000,
        }
    }
}

/// The savepoint background loops (every replica runs them; they share work through the database).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SavepointConfig {
    /// Run the scheduler, the workers and disposal in this process.
    pub enabled: bool,
    /// Shortest `interval_s` a schedule may have.
    pub min_interval_s: u64,
    /// How often the scheduler and retention passes run.
    pub tick_ms: u64,
    /// Schedules claimed per transaction of a scheduler pass.
    pub scheduler_batch: u32,
    /// Savepoints taken, disposed of or exported at once by this process.
    pub concurrency: usize,
    /// How often a trigger on the JobManager is polled.
    pub poll_ms: u64,
    /// A savepoint still in progress after this long is failed.
    pub take_timeout_s: u64,
    /// Attempts of a take before it is failed (disposal retries without limit).
    pub max_attempts: u32,
    /// Backoff of a failed attempt: doubles from the initial value up to the maximum, with jitter.
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for SavepointConfig {
    fn default() -> Self {
        SavepointConfig {
            enabled: true,
            min_interval_s: 60,
            tick_ms: 1_000,
            scheduler_batch: 2_000,
            concurrency: 8,
            poll_ms: 500,
            take_timeout_s: 900,
            max_attempts: 10,
            backoff_initial_ms: 1_000,
            backoff_max_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// `iss` of the tokens this server signs (and expects).
    pub issuer: String,
    /// `aud` of the tokens this server signs (and expects).
    pub audience: String,
    /// Lifetime of issued access tokens.
    pub token_ttl_s: u64,
    /// A new signing key is made when the active one is older than this; old
    /// keys keep verifying until the last token they signed has expired.
    pub signing_key_rotate_after_s: u64,
    /// Bearer credential of the platform operator's `/admin/v1` API; empty disables that API.
    pub admin_token: String,
    /// Allow `POST /v1/signup` (self-service organizations).
    pub signup_enabled: bool,
    /// An external OpenID Connect issuer whose tokens are accepted too.
    #[serde(default)]
    pub oidc: Option<OidcConfig>,
}

/// Tokens of an external issuer map to users of this server by email.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// `iss` of its tokens.
    pub issuer: String,
    /// `aud` its tokens must carry for this server.
    pub audience: String,
    /// Where its JWKS is (`http://` or `https://`).
    pub jwks_url: String,
    /// The claim holding the user's email.
    #[serde(default = "default_email_claim")]
    pub email_claim: String,
    /// Accept a token only when its `email_verified` claim is true. Users are
    /// matched by email, so an issuer that lets anyone claim an unverified
    /// address would otherwise let them sign in as that user. Turn off only for
    /// an issuer whose emails are verified by construction and that omits the claim.
    #[serde(default = "default_true")]
    pub require_email_verified: bool,
}

fn default_true() -> bool {
    true
}

fn default_email_claim() -> String {
    "email".into()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Sustained requests per second per credential (token bucket refill rate).
    pub requests_per_second: u32,
    /// Requests a credential may make at once before the rate applies.
    pub burst: u32,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
}

fn list_or_csv<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum ListOrCsv {
        List(Vec<String>),
        Csv(String),
    }
    Ok(match ListOrCsv::deserialize(d)? {
        ListOrCsv::List(v) => v,
        ListOrCsv::Csv(s) => s
            .split(',')
            .map(|r| r.trim().to_owned())
            .filter(|r| !r.is_empty())
            .collect(),
    })
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`
    pub url: String,
    /// Per pool: the server keeps one pool for tenant requests (role
    /// `sluice_tenant`) and one for tokens, the admin API and migrations.
    pub max_connections: u32,
    pub acquire_timeout_ms: u64,
    /// Apply pending migrations when the server starts (`sluice migrate` does it on its own).
    pub migrate_on_start: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A tracing `EnvFilter` directive; `RUST_LOG` overrides it.
    pub filter: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            database: DatabaseConfig {
                url: String::new(),
                max_connections: 16,
                acquire_timeout_ms: 5_000,
                migrate_on_start: true,
            },
            log: LogConfig {
                format: LogFormat::Text,
                filter: "info".into(),
            },
            shutdown_grace_ms: 10_000,
            auth: AuthConfig {
                issuer: "sluice".into(),
                audience: "sluice-api".into(),
                token_ttl_s: 900,
                signing_key_rotate_after_s: 7 * 24 * 3600,
                admin_token: String::new(),
                signup_enabled: false,
                oidc: None,
            },
            limits: LimitsConfig {
                requests_per_second: 100,
                burst: 200,
                max_body_bytes: 1024 * 1024,
            },
            regions: vec!["local".into()],
            savepoints: SavepointConfig::default(),
            billing: BillingConfig::default(),
            data_dir: default_data_dir(),
            engine: EngineConfig::default(),
            provisioner: ProvisionerConfig::default(),
            storage: StorageConfig::default(),
            reconciler: ReconcilerConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {path} does not exist")]
    MissingFile { path: String },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

impl Config {
    /// `{storage.root}`, defaulting to `file://{data_dir}/blobs` (absolute).
    pub fn storage_root(&self) -> String {
        match &self.storage.root {
            Some(r) => r.trim_end_matches('/').to_owned(),
            None => {
                let dir = std::path::absolute(self.data_dir.join("blobs"))
                    .unwrap_or_else(|_| self.data_dir.join("blobs"));
                format!("file://{}", dir.display())
            }
        }
    }

    /// The local provisioner's root, defaulting to `{data_dir}/clusters`.
    pub fn provisioner_root(&self) -> std::path::PathBuf {
        self.provisioner
            .root
            .clone()
            .unwrap_or_else(|| self.data_dir.join("clusters"))
    }

    /// Loads defaults → file → environment (`env` is the process environment in production).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError::MissingFile {
                    path: path.display().to_string(),
                });
            }
            fig = fig.merge(Toml::file_exact(path));
        }
        // Not figment's Env provider: it reads the live process environment,
        // which tests cannot set without racing each other.
        let vars: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| {
                k.starts_with("SLUICE_")
                    && !k.starts_with("SLUICE_DEV_")
                    && !k.starts_with("SLUICE_CLI_")
                    && k != "SLUICE_CONFIG"
            })
            .collect();
        for (k, v) in vars {
            let key = k["SLUICE_".len()..].to_ascii_lowercase().replace("__", ".");
            fig = fig.merge(Serialized::global(&key, parse_env_value(&v)));
        }
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Invalid(format_figment_error(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.database.url.is_empty() {
            return Err(ConfigError::Invalid(
                "database.url is required (SLUICE_DATABASE__URL or [database] url in the file)"
                    .into(),
            ));
        }
        if !(self.database.url.starts_with("postgres://")
            || self.database.url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid(
                "database.url must be a postgres:// URL".into(),
            ));
        }
        if self.auth.token_ttl_s == 0 || self.auth.signing_key_rotate_after_s == 0 {
            return Err(ConfigError::Invalid(
                "auth.token_ttl_s and auth.signing_key_rotate_after_s must be at least 1".into(),
            ));
        }
        if !self.auth.admin_token.is_empty() && self.auth.admin_token.len() < 24 {
            return Err(ConfigError::Invalid(
                "auth.admin_token must be at least 24 characters (or empty to disable /admin/v1)"
                    .into(),
            ));
        }
        if let Some(o) = &self.auth.oidc
            && (o.issuer.is_empty()
                || o.audience.is_empty()
                || !(o.jwks_url.starts_with("http://") || o.jwks_url.starts_with("https://")))
        {
            return Err(ConfigError::Invalid(
                "auth.oidc needs issuer, audience and an http(s) jwks_url".into(),
            ));
        }
        if self.limits.requests_per_second == 0 || self.limits.burst == 0 {
            return Err(ConfigError::Invalid(
                "limits.requests_per_second and limits.burst must be at least 1".into(),
            ));
        }
        if self.regions.is_empty() {
            return Err(ConfigError::Invalid(
                "regions must name at least one region".into(),
            ));
        }
        if self.savepoints.min_interval_s == 0 || self.savepoints.tick_ms == 0 {
            return Err(ConfigError::Invalid(
                "savepoints.min_interval_s and savepoints.tick_ms must be at least 1".into(),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(ConfigError::Invalid(
                "database.max_connections must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Environment values are strings; numbers and booleans are recognised so that
/// `SLUICE_DATABASE__MAX_CONNECTIONS=4` deserialises into a u32.
fn parse_env_value(v: &str) -> figment::value::Value {
    use figment::value::{Num, Value};
    if let Ok(i) = v.parse::<i64>() {
        return Value::from(Num::I64(i));
    }
    match v {
        "true" => Value::from(true),
        "false" => Value::from(false),
        _ => Value::from(v.to_string()),
    }
}

fn format_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = if e.path.is_empty() {
                String::new()
            } else {
                format!("{}: ", e.path.join("."))
            };
            let source = e
                .metadata
                .as_ref()
                .map(|m| format!(" (from {})", m.name))
                .unwrap_or_default();
            format!("{path}{}{source}", e.kind)
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn environment_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sluice.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.1:9000\"\n[database]\nurl = \"postgres://a@h/db\"\nmax_connections = 3\n",
        )
        .unwrap();
        let c = Config::load(
            Some(&f),
            env(&[
                ("SLUICE_DATABASE__MAX_CONNECTIONS", "7"),
                ("SLUICE_LOG__FORMAT", "json"),
                ("SLUICE_DEV_STATE_DIR", "/ignored"),
                ("HOME", "/root"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.database.max_connections, 7);
        assert_eq!(c.database.url, "postgres://a@h/db");
        assert_eq!(c.log.format, LogFormat::Json);
        assert!(c.database.migrate_on_start);
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sluice.toml");
        std::fs::write(
            &f,
            "[database]\nurl = \"postgres://h/db\"\nmax_conections = 3\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), env(&[])).unwrap_err().to_string();
        assert!(e.contains("max_conections"), "{e}");

        let e = Config::load(
            None,
            env(&[
                ("SLUICE_DATABASE__URL", "postgres://h/db"),
                ("SLUICE_LISTN", "x"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("listn"), "{e}");
    }

    #[test]
    fn missing_database_url_is_explained() {
        let e = Config::load(None, env(&[])).unwrap_err().to_string();
        assert!(e.contains("database.url is required"), "{e}");
        let e = Config::load(None, env(&[("SLUICE_DATABASE__URL", "mysql://x")]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("postgres://"), "{e}");
    }

    #[test]
    fn missing_file_is_an_error() {
        let e = Config::load(Some(Path::new("/nonexistent/sluice.toml")), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/sluice.toml"), "{e}");
    }
}

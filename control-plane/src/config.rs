//! Server configuration: built-in defaults, then a TOML file (`--config` or
//! `SLUICE_CONFIG`), then environment variables `SLUICE_<KEY>` with `__`
//! between nesting levels (`SLUICE_DATABASE__URL`). Unknown keys are an error,
//! so a typo never silently falls back to a default. `SLUICE_DEV_*` variables
//! belong to the dev and test scripts and are not configuration.

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/database`
    pub url: String,
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
                k.starts_with("SLUICE_") && !k.starts_with("SLUICE_DEV_") && k != "SLUICE_CONFIG"
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

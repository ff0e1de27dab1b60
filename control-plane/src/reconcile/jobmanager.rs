//! The control plane's client of a cluster's JobManager REST API (Flink-compatible subset),
//! authenticated with the cluster's bearer token. Tenants never reach this API directly.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::{DateTime, Utc};
use serde_json::Value;
use sluice_api_types::LastCheckpoint;

pub struct JobManager<'a> {
    pub http: &'a reqwest::Client,
    pub base: String,
    pub token: String,
    pub job_id: String,
}

/// Where a savepoint trigger is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trigger {
    InProgress,
    Completed { location: String },
    Failed { cause: String },
}

const TIMEOUT: Duration = Duration::from_secs(5);

/// The JobManager answered 4xx: it understood and refused (e.g. no savepoint possible).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl JobManager<'_> {
    async fn get(&self, path: &str) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let r = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .timeout(TIMEOUT)
            .send()
            .await
            .with_context(|| format!("GET {url}"))?;
        let status = r.status();
        if !status.is_success() {
            let body = r.text().await.unwrap_or_default();
            bail!(
                "GET {url}: {status}: {}",
                body.chars().take(300).collect::<String>()
            );
        }
        r.json().await.with_context(|| format!("GET {url}: body"))
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(&self.token)
            .timeout(TIMEOUT);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = r.status();
        let text = r.text().await.unwrap_or_default();
        if status.is_client_error() {
            return Err(Refused(format!(
                "{method} {url}: {status}: {}",
                text.chars().take(300).collect::<String>()
            ))
            .into());
        }
        if !status.is_success() {
            bail!(
                "{method} {url}: {status}: {}",
                text.chars().take(300).collect::<String>()
            );
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {url}: body"))
    }

    /// `RUNNING`, `RESTARTING`, `FAILED`, `FINISHED`, `CANCELED`, `CREATED`, …
    pub async fn job_state(&self) -> Result<String> {
        let v = self.get(&format!("/jobs/{}", self.job_id)).await?;
        v["state"]
            .as_str()
            .map(str::to_owned)
            .context("GET /jobs/{id}: no state")
    }

    pub async fn latest_checkpoint(&self) -> Result<Option<LastCheckpoint>> {
        let v = self
            .get(&format!("/jobs/{}/checkpoints", self.job_id))
            .await?;
        let c = &v["latest"]["completed"];
        if c.is_null() {
            return Ok(None);
        }
        let at_ms = c["latest_ack_timestamp"].as_i64().unwrap_or(0);
        Ok(Some(LastCheckpoint {
            id: c["id"].as_i64().unwrap_or(0),
            at: DateTime::<Utc>::from_timestamp_millis(at_ms).unwrap_or_default(),
            size_bytes: c["state_size"].as_u64().unwrap_or(0),
        }))
    }

    /// Stop-with-savepoint; returns the trigger id.
    pub async fn stop_with_savepoint(&self, target: &str) -> Result<String> {
        let v = self
            .send(
                reqwest::Method::POST,
                &format!("/jobs/{}/stop", self.job_id),
                Some(serde_json::json!({ "targetDirectory": target, "drain": false })),
            )
            .await?;
        v["request-id"]
            .as_str()
            .map(str::to_owned)
            .context("POST /jobs/{id}/stop: no request-id")
    }

    pub async fn trigger(&self, trigger: &str) -> Result<Trigger> {
        let v = self
            .get(&format!("/jobs/{}/savepoints/{trigger}", self.job_id))
            .await?;
        match v["status"]["id"].as_str() {
            Some("COMPLETED") => {
                if let Some(loc) = v["operation"]["location"].as_str() {
                    Ok(Trigger::Completed {
                        location: loc.to_owned(),
                    })
                } else {
                    Ok(Trigger::Failed {
                        cause: v["operation"]["failure-cause"]
                            .as_str()
                            .map(str::to_owned)
                            .unwrap_or_else(|| v["operation"]["failure-cause"].to_string()),
                    })
                }
            }
            _ => Ok(Trigger::InProgress),
        }
    }

    /// `GET /jobs/{id}/metrics?get=…` as name → value.
    pub async fn metrics(&self, names: &[&str]) -> Result<BTreeMap<String, String>> {
        let v = self
            .get(&format!(
                "/jobs/{}/metrics?get={}",
                self.job_id,
                names.join(",")
            ))
            .await?;
        let mut out = BTreeMap::new();
        for m in v.as_array().into_iter().flatten() {
            if let (Some(id), Some(value)) = (m["id"].as_str(), m.get("value")) {
                let value = match value {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                out.insert(id.to_owned(), value);
            }
        }
        Ok(out)
    }
}

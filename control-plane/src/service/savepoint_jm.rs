//! The JobManager's Flink-compatible savepoint REST, as the savepoint worker uses it:
//! `GET /jobs`, `POST /jobs/{id}/savepoints` → `{"request-id"}` and
//! `GET /jobs/{id}/savepoints/{trigger}` → `{"status": {"id"}, "operation": {"location" |
//! "failure-cause"}}`.

use std::time::Duration;

use serde_json::{Value, json};

/// Why a call to the JobManager failed.
#[derive(Debug, thiserror::Error)]
pub enum JmError {
    /// Not reachable, timed out, or a 5xx: worth retrying.
    #[error("JobManager {url}: {detail}")]
    Transient { url: String, detail: String },
    /// The JobManager does not know the trigger (it restarted): trigger again.
    #[error("JobManager {url}: unknown savepoint trigger")]
    UnknownTrigger { url: String },
    /// A 4xx or an answer that is not the documented shape: retrying will not help.
    #[error("JobManager {url}: {detail}")]
    Rejected { url: String, detail: String },
}

/// What a trigger reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TriggerState {
    InProgress,
    Completed { location: String },
    Failed { cause: String },
}

pub struct JobManager {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl JobManager {
    pub fn new(http: reqwest::Client, rest_url: &str, token: Option<String>) -> Self {
        JobManager {
            http,
            base: rest_url.trim_end_matches('/').to_owned(),
            token,
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, JmError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method, &url)
            .timeout(Duration::from_secs(30));
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.map_err(|e| JmError::Transient {
            url: url.clone(),
            detail: format!("{e:#}"),
        })?;
        let status = res.status();
        let text = res.text().await.map_err(|e| JmError::Transient {
            url: url.clone(),
            detail: format!("reading the response: {e:#}"),
        })?;
        let short: String = text.chars().take(500).collect();
        if status == reqwest::StatusCode::NOT_FOUND && path.contains("/savepoints/") {
            return Err(JmError::UnknownTrigger { url });
        }
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(JmError::Transient {
                url,
                detail: format!("HTTP {status}: {short}"),
            });
        }
        if !status.is_success() {
            return Err(JmError::Rejected {
                url,
                detail: format!("HTTP {status}: {short}"),
            });
        }
        serde_json::from_str(&text).map_err(|e| JmError::Rejected {
            url,
            detail: format!("not JSON ({e}): {short}"),
        })
    }

    /// The cluster's job and its status (`CREATED`, `RUNNING`, `RESTARTING`, …), if any.
    pub async fn job(&self) -> Result<Option<(String, String)>, JmError> {
        let v = self.call(reqwest::Method::GET, "/jobs", None).await?;
        let jobs = v["jobs"].as_array().ok_or_else(|| JmError::Rejected {
            url: format!("{}/jobs", self.base),
            detail: format!("no 'jobs' array in {v}"),
        })?;
        // A running job first; a cluster runs one job, but a finished one may still be listed.
        let pick = jobs
            .iter()
            .find(|j| j["status"].as_str() == Some("RUNNING"))
            .or_else(|| jobs.first());
        Ok(pick.and_then(|j| {
            Some((
                j["id"].as_str()?.to_owned(),
                j["status"].as_str().unwrap_or("UNKNOWN").to_owned(),
            ))
        }))
    }

    /// Asks for a canonical savepoint into `target`; with `cancel_job` the job stops after it
    /// (stop-with-savepoint). Returns the trigger id.
    pub async fn trigger(
        &self,
        job: &str,
        target: &str,
        cancel_job: bool,
    ) -> Result<String, JmError> {
        let path = format!("/jobs/{job}/savepoints");
        let v = self
            .call(
                reqwest::Method::POST,
                &path,
                Some(json!({ "target-directory": target, "cancel-job": cancel_job, "formatType": "CANONICAL" })),
            )
            .await?;
        v["request-id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| JmError::Rejected {
                url: format!("{}{path}", self.base),
                detail: format!("no 'request-id' in {v}"),
            })
    }

    pub async fn poll(&self, job: &str, trigger: &str) -> Result<TriggerState, JmError> {
        let path = format!("/jobs/{job}/savepoints/{trigger}");
        let v = self.call(reqwest::Method::GET, &path, None).await?;
        parse_trigger(&v).map_err(|detail| JmError::Rejected {
            url: format!("{}{path}", self.base),
            detail,
        })
    }
}

fn parse_trigger(v: &Value) -> Result<TriggerState, String> {
    match v["status"]["id"].as_str() {
        Some("IN_PROGRESS") => Ok(TriggerState::InProgress),
        Some("COMPLETED") => {
            let op = &v["operation"];
            if let Some(loc) = op["location"].as_str() {
                return Ok(TriggerState::Completed {
                    location: loc.to_owned(),
                });
            }
            let cause = &op["failure-cause"];
            let cause = match cause {
                Value::String(s) => s.clone(),
                Value::Null => "the JobManager reported neither a location nor a cause".into(),
                other => other
                    .get("stack-trace")
                    .or_else(|| other.get("class"))
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| other.to_string()),
            };
            Ok(TriggerState::Failed {
                cause: cause.chars().take(2000).collect(),
            })
        }
        _ => Err(format!("unexpected savepoint status {v}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_answers_are_read_as_flink_writes_them() {
        assert_eq!(
            parse_trigger(&json!({"status": {"id": "IN_PROGRESS"}})),
            Ok(TriggerState::InProgress)
        );
        assert_eq!(
            parse_trigger(
                &json!({"status": {"id": "COMPLETED"}, "operation": {"location": "s3://b/x"}})
            ),
            Ok(TriggerState::Completed {
                location: "s3://b/x".into()
            })
        );
        assert_eq!(
            parse_trigger(
                &json!({"status": {"id": "COMPLETED"}, "operation": {"failure-cause": {"class": "java.io.IOException", "stack-trace": "disk full"}}})
            ),
            Ok(TriggerState::Failed {
                cause: "disk full".into()
            })
        );
        assert!(parse_trigger(&json!({"status": {}})).is_err());
    }
}

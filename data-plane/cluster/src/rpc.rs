//! Control messages between the JobManager and its TaskManagers: JSON in length-prefixed
//! frames on one TCP connection per TaskManager, opened by the TaskManager. Task-layer
//! payloads (commands, events, subtask states) travel as the task layer serializes them.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// Identifies one subtask of one deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SubtaskRef {
    pub attempt: u64,
    pub vertex: usize,
    pub subtask: usize,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToJm {
    /// First message: who this TaskManager is and what it offers.
    Register {
        tm_id: String,
        slots: usize,
        data_addr: SocketAddr,
        pid: u32,
        #[serde(default)]
        token: Option<String>,
    },
    Heartbeat,
    /// An event of a subtask (the task layer's event, serialized).
    Event {
        subtask: SubtaskRef,
        event: serde_json::Value,
    },
    /// Counters and gauges of this TaskManager's subtasks of deployment `attempt`.
    Metrics {
        attempt: u64,
        samples: Vec<Sample>,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToTm {
    Registered {
        generation: u64,
        heartbeat_interval_ms: u64,
    },
    Refused {
        reason: String,
    },
    Heartbeat,
    Deploy(Box<Deployment>),
    /// A command for one subtask (the task layer's command, serialized).
    Command {
        subtask: SubtaskRef,
        command: serde_json::Value,
    },
    /// Stop every subtask of `attempt` now (failover or cancel).
    Cancel {
        attempt: u64,
    },
}

/// What a TaskManager needs to run its share of a deployment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Deployment {
    pub job_id: String,
    pub attempt: u64,
    pub generation: u64,
    /// The job's SQL: every TaskManager plans it itself (the plan is deterministic).
    pub sql: String,
    pub parallelism: usize,
    pub max_parallelism: u16,
    pub state_backend: String,
    pub checkpoint_dir: String,
    pub exactly_once: bool,
    /// Subtasks to run here.
    pub subtasks: Vec<(usize, usize)>,
    /// `locations[vertex][subtask]`: the data address of the TaskManager running it.
    pub locations: Vec<Vec<SocketAddr>>,
    /// The snapshot to start from (`None`: a fresh start).
    #[serde(default)]
    pub restore: Option<RestoreRef>,
}

/// A completed checkpoint or savepoint: the store it is in and its directory there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreRef {
    /// Blob store URI (`file:///…`, `s3://bucket/prefix`).
    pub store: String,
    /// The snapshot's directory in that store (holds `_metadata`).
    pub dir: String,
}

/// One metric sample as a TaskManager reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// Parses the Prometheus text the runtime's registry renders (`name{k="v",…} value`).
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((head, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.split_once('{') {
            None => (head.to_string(), Vec::new()),
            Some((n, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or(rest);
                let mut labels = Vec::new();
                // Label values never contain `",` in what the runtime renders.
                for part in body.split("\",") {
                    if let Some((k, v)) = part.split_once("=\"") {
                        labels.push((k.to_string(), v.trim_end_matches('"').replace("\\\"", "\"")));
                    }
                }
                (n.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_parses() {
        let s = parse_prometheus(
            "# HELP x\nsluice_source_records_total{pipeline=\"0\",source=\"events\"} 42\nup 1\n",
        );
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "sluice_source_records_total");
        assert_eq!(
            s[0].labels,
            vec![
                ("pipeline".to_string(), "0".to_string()),
                ("source".to_string(), "events".to_string())
            ]
        );
        assert_eq!(s[0].value, 42.0);
        assert_eq!(s[1].labels, vec![]);
    }

    #[test]
    fn messages_are_tagged_json() {
        let m = serde_json::to_value(ToTm::Cancel { attempt: 3 }).expect("json");
        assert_eq!(m, serde_json::json!({"type":"cancel","attempt":3}));
        let back: ToJm =
            serde_json::from_value(serde_json::json!({"type":"heartbeat"})).expect("parse");
        assert!(matches!(back, ToJm::Heartbeat));
    }
}

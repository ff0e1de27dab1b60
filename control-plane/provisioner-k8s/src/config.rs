//! Settings of the Kubernetes provisioner (the `[provisioner.kubernetes]` table of the
//! server's configuration, once the integrator wires it in).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct K8sConfig {
    /// Each organization's clusters live in the namespace `{namespace_prefix}{org}`.
    pub namespace_prefix: String,
    /// The engine image (name and tag); every process of every cluster runs it.
    pub image: String,
    pub image_pull_policy: String,
    /// The engine binary inside the image.
    pub engine_command: String,
    /// Who may connect to an engine cluster besides its own pods.
    pub control_plane: ControlPlaneSelector,
    pub connection: Connection,
    /// The in-cluster DNS domain, for the JobManager's service name.
    pub cluster_domain: String,
    pub termination_grace_period_s: u32,
    /// How long `delete` waits for the pods to be gone before it reports an error (the
    /// deletion goes on in the API server; calling `delete` again resumes the wait).
    pub delete_timeout_s: u32,
    /// A container in CrashLoopBackOff with at least this many restarts makes the cluster
    /// `Failed`.
    pub max_container_restarts: u32,
    /// The JobManager's CPU floor in milli-KPU, when the spec's orchestration share is smaller.
    pub jobmanager_min_milli: u64,
    /// The non-root user the engine runs as (the namespace enforces the `restricted` Pod
    /// Security Standard).
    pub run_as_user: i64,
}

impl Default for K8sConfig {
    fn default() -> Self {
        K8sConfig {
            namespace_prefix: "sluice-".to_owned(),
            image: format!("sluice-engine:{}", env!("CARGO_PKG_VERSION")),
            image_pull_policy: "IfNotPresent".to_owned(),
            engine_command: "sluice-engine".to_owned(),
            control_plane: ControlPlaneSelector::default(),
            connection: Connection::Infer,
            cluster_domain: "cluster.local".to_owned(),
            termination_grace_period_s: 30,
            delete_timeout_s: 120,
            max_container_restarts: 5,
            jobmanager_min_milli: 250,
            run_as_user: 65532,
        }
    }
}

/// Selects the control plane's pods in the NetworkPolicy of every engine cluster. Both
/// maps must be non-empty: an empty selector would admit every namespace or every pod.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlPlaneSelector {
    pub namespace_labels: BTreeMap<String, String>,
    pub pod_labels: BTreeMap<String, String>,
}

impl Default for ControlPlaneSelector {
    fn default() -> Self {
        ControlPlaneSelector {
            namespace_labels: BTreeMap::from([(
                "kubernetes.io/metadata.name".to_owned(),
                "sluice-system".to_owned(),
            )]),
            pod_labels: BTreeMap::from([(
                "app.kubernetes.io/name".to_owned(),
                "sluice-control-plane".to_owned(),
            )]),
        }
    }
}

/// How to reach the API server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case", deny_unknown_fields)]
pub enum Connection {
    /// `$KUBECONFIG` or `~/.kube/config`, else the in-cluster service account.
    Infer,
    /// The pod's service account (the control plane runs inside the cluster).
    InCluster,
    /// A kubeconfig file (default: `$KUBECONFIG` or `~/.kube/config`) and context.
    Kubeconfig {
        #[serde(default)]
        path: Option<PathBuf>,
        #[serde(default)]
        context: Option<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("provisioner.kubernetes.{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("connecting to Kubernetes: {0}")]
    Connect(String),
}

impl K8sConfig {
    /// Rejects settings that would produce invalid or unsafe manifests, before any request.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if self.image.trim().is_empty() {
            return Err(invalid("image", "must not be empty"));
        }
        if !matches!(
            self.image_pull_policy.as_str(),
            "Always" | "IfNotPresent" | "Never"
        ) {
            return Err(invalid(
                "image_pull_policy",
                "must be Always, IfNotPresent or Never",
            ));
        }
        if self.engine_command.trim().is_empty() {
            return Err(invalid("engine_command", "must not be empty"));
        }
        let prefix_ok = self.namespace_prefix.len() <= 20
            && self
                .namespace_prefix
                .starts_with(|c: char| c.is_ascii_lowercase())
            && self
                .namespace_prefix
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !prefix_ok {
            return Err(invalid(
                "namespace_prefix",
                "must be at most 20 characters of [a-z0-9-], starting with a letter",
            ));
        }
        if self.control_plane.namespace_labels.is_empty() {
            return Err(invalid(
                "control_plane.namespace_labels",
                "must not be empty (an empty selector admits every namespace)",
            ));
        }
        if self.control_plane.pod_labels.is_empty() {
            return Err(invalid(
                "control_plane.pod_labels",
                "must not be empty (an empty selector admits every pod of the namespace)",
            ));
        }
        if self.cluster_domain.is_empty() || self.cluster_domain.starts_with('.') {
            return Err(invalid(
                "cluster_domain",
                "must be a DNS domain such as cluster.local",
            ));
        }
        if self.delete_timeout_s == 0 {
            return Err(invalid("delete_timeout_s", "must be positive"));
        }
        if self.run_as_user <= 0 {
            return Err(invalid("run_as_user", "must be a non-root uid"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_empty_selectors_are_refused() {
        K8sConfig::default().validate().expect("defaults");
        let mut c = K8sConfig::default();
        c.control_plane.namespace_labels.clear();
        assert!(c.validate().is_err());
        let mut c = K8sConfig::default();
        c.control_plane.pod_labels.clear();
        assert!(c.validate().is_err());
        let c = K8sConfig {
            namespace_prefix: "Sluice_".into(),
            ..K8sConfig::default()
        };
        assert!(c.validate().is_err());
        let c = K8sConfig {
            run_as_user: 0,
            ..K8sConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn connection_modes_deserialize_from_tagged_tables() {
        let c: K8sConfig = serde_json::from_value(serde_json::json!({
            "image": "registry.example/sluice-engine:1.2.3",
            "connection": {"mode": "kubeconfig", "path": "/etc/kube/config", "context": "prod"}
        }))
        .expect("config");
        assert_eq!(
            c.connection,
            Connection::Kubeconfig {
                path: Some(PathBuf::from("/etc/kube/config")),
                context: Some("prod".into())
            }
        );
        assert_eq!(c.namespace_prefix, "sluice-");
        let err = serde_json::from_value::<K8sConfig>(serde_json::json!({"imag": "x"}));
        assert!(err.is_err(), "unknown keys are refused");
    }
}

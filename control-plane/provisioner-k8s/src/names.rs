//! Object names and labels. Control-plane ids (`org_…`, `app_…`) contain `_`, which
//! Kubernetes names refuse, so names use a DNS form of the id while labels keep the id
//! itself: list and observe select by label, and the external id is read back from it.

use std::collections::BTreeMap;

use sluice_provisioner::{ClusterId, ClusterSpec, ProvisionError};

pub const FIELD_MANAGER: &str = "sluice-control-plane";

pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_ORG: &str = "sluice.dev/organization";
pub const LABEL_APP: &str = "sluice.dev/application";
pub const LABEL_RUN: &str = "sluice.dev/run";
pub const LABEL_GENERATION: &str = "sluice.dev/generation";

pub const ENGINE_NAME: &str = "sluice-engine";
pub const COMPONENT_ROOT: &str = "cluster";
pub const COMPONENT_JM: &str = "jobmanager";
pub const COMPONENT_TM: &str = "taskmanager";

/// The longest StatefulSet name: its pods carry a `controller-revision-hash` label of the
/// name plus an 11-character suffix, and label values stop at 63.
const MAX_STATEFULSET_NAME: usize = 52;

/// Names of one organization's namespace and of one cluster's objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterNames {
    pub namespace: String,
    /// `{app}-g{generation}`: the root ConfigMap, the Secret and the NetworkPolicy. A new
    /// generation is a new set of objects, so a replacement never mixes two clusters.
    pub cluster: String,
    /// JobManager Deployment and Service.
    pub jobmanager: String,
    /// TaskManager StatefulSet and its headless Service.
    pub taskmanager: String,
}

impl ClusterNames {
    pub fn new(prefix: &str, spec: &ClusterSpec) -> Result<Self, ProvisionError> {
        let namespace = namespace_name(prefix, &spec.id.org_id)?;
        let cluster = format!(
            "{}-g{}",
            dns_label(&spec.id.application_id)?,
            spec.generation
        );
        let names = ClusterNames {
            namespace,
            jobmanager: format!("{cluster}-jm"),
            taskmanager: format!("{cluster}-tm"),
            cluster,
        };
        if names.taskmanager.len() > MAX_STATEFULSET_NAME {
            return Err(ProvisionError::InvalidSpec(format!(
                "application id and generation give the object name {:?}, longer than {MAX_STATEFULSET_NAME} characters",
                names.taskmanager
            )));
        }
        Ok(names)
    }

    /// The in-cluster DNS name of the JobManager's Service.
    pub fn jobmanager_host(&self, cluster_domain: &str) -> String {
        format!(
            "{}.{}.svc.{cluster_domain}",
            self.jobmanager, self.namespace
        )
    }
}

pub fn namespace_name(prefix: &str, org_id: &str) -> Result<String, ProvisionError> {
    let ns = format!("{prefix}{}", dns_label(org_id)?);
    if ns.len() > 63 {
        return Err(ProvisionError::InvalidSpec(format!(
            "namespace name {ns:?} is longer than 63 characters"
        )));
    }
    Ok(ns)
}

/// A DNS-1035 label from a control-plane id: lowercase, `_` and `.` become `-`.
pub fn dns_label(id: &str) -> Result<String, ProvisionError> {
    let s: String = id
        .chars()
        .map(|c| match c {
            '_' | '.' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(s)
    } else {
        Err(ProvisionError::InvalidSpec(format!(
            "id {id:?} cannot be part of a Kubernetes name"
        )))
    }
}

/// Label values: at most 63 of `[A-Za-z0-9_.-]`, alphanumeric at both ends.
pub fn check_label_value(what: &str, v: &str) -> Result<(), ProvisionError> {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.starts_with(alnum)
        && v.ends_with(alnum)
        && v.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ProvisionError::InvalidSpec(format!(
            "{what} {v:?} is not a valid Kubernetes label value"
        )))
    }
}

/// Every object of a cluster carries these; pods are selected by instance + component.
pub fn cluster_labels(
    spec: &ClusterSpec,
    names: &ClusterNames,
    component: &str,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), ENGINE_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), names.cluster.clone()),
        (LABEL_COMPONENT.to_owned(), component.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned()),
        (LABEL_PART_OF.to_owned(), "sluice".to_owned()),
        (LABEL_ORG.to_owned(), spec.id.org_id.clone()),
        (LABEL_APP.to_owned(), spec.id.application_id.clone()),
        (LABEL_RUN.to_owned(), spec.run_id.clone()),
        (LABEL_GENERATION.to_owned(), spec.generation.to_string()),
    ])
}

pub fn selector_labels(names: &ClusterNames, component: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_INSTANCE.to_owned(), names.cluster.clone()),
        (LABEL_COMPONENT.to_owned(), component.to_owned()),
    ])
}

/// Selects the root ConfigMaps of one application (every generation).
pub fn roots_selector(id: &ClusterId) -> String {
    format!(
        "{LABEL_MANAGED_BY}={FIELD_MANAGER},{LABEL_COMPONENT}={COMPONENT_ROOT},{LABEL_APP}={}",
        id.application_id
    )
}

/// Selects the root ConfigMaps of every cluster this control plane manages.
pub fn all_roots_selector() -> String {
    format!("{LABEL_MANAGED_BY}={FIELD_MANAGER},{LABEL_COMPONENT}={COMPONENT_ROOT}")
}

/// Selects the engine pods of one application (every generation).
pub fn pods_selector(id: &ClusterId) -> String {
    format!(
        "{LABEL_MANAGED_BY}={FIELD_MANAGER},{LABEL_NAME}={ENGINE_NAME},{LABEL_APP}={}",
        id.application_id
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_dns_labels_and_bad_ids_are_refused() {
        assert_eq!(
            dns_label("app_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b").expect("app id"),
            "app-0193a1b2c3d47e8f9a0b1c2d3e4f5a6b"
        );
        assert_eq!(
            namespace_name("sluice-", "org_ABC").expect("ns"),
            "sluice-org-abc"
        );
        assert!(dns_label("").is_err());
        assert!(
            dns_label("9abc").is_err(),
            "DNS-1035 labels start with a letter"
        );
        assert!(dns_label("app_x/y").is_err());
        assert!(dns_label("app_").is_err());
        assert!(namespace_name("sluice-", &format!("org_{}", "a".repeat(60))).is_err());
    }

    #[test]
    fn label_values_follow_the_kubernetes_syntax() {
        check_label_value("run id", "run_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b").expect("run id");
        assert!(check_label_value("x", "").is_err());
        assert!(check_label_value("x", "_a").is_err());
        assert!(check_label_value("x", "a b").is_err());
        assert!(check_label_value("x", &"a".repeat(64)).is_err());
    }
}

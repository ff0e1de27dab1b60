//! The permissions the provisioner needs, as a ClusterRole for the control plane's service
//! account (namespaces are created per organization, so a namespaced Role cannot cover them).

use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::names::{FIELD_MANAGER, LABEL_MANAGED_BY, LABEL_PART_OF};

fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![group.to_owned()]),
        resources: Some(resources.iter().map(|r| (*r).to_owned()).collect()),
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..Default::default()
    }
}

/// Server-side apply of an object that does not exist yet needs `create` as well as `patch`.
pub fn cluster_role(name: &str) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(
                [(LABEL_MANAGED_BY, FIELD_MANAGER), (LABEL_PART_OF, "sluice")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
            ),
            ..Default::default()
        },
        rules: Some(vec![
            rule(
                "",
                &["namespaces", "resourcequotas", "services"],
                &["create", "patch"],
            ),
            rule("", &["configmaps"], &["list", "create", "patch", "delete"]),
            // blockOwnerDeletion on the dependents needs this on the owner (the root ConfigMap).
            rule("", &["configmaps/finalizers"], &["update"]),
            rule("", &["secrets"], &["get", "create", "patch"]),
            rule("", &["pods"], &["list", "watch"]),
            rule("", &["events"], &["list"]),
            rule(
                "apps",
                &["deployments", "statefulsets"],
                &["create", "patch"],
            ),
            rule(
                "networking.k8s.io",
                &["networkpolicies"],
                &["create", "patch"],
            ),
        ]),
        ..Default::default()
    }
}

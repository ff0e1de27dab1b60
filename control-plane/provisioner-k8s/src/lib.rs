//! The Kubernetes provisioner: one engine cluster per application, in a namespace per
//! organization, made by server-side apply (field manager `sluice-control-plane`).
//!
//! A cluster of generation N of application `app_x` in organization `org_y` is, in the
//! namespace `{prefix}org-y` (labelled for the `restricted` Pod Security Standard, capped
//! by a ResourceQuota sized from the pool's `max_kpu`):
//! - the root ConfigMap `app-x-gN` holding the job SQL; every other object below names it
//!   as controlling owner, so deleting it (foreground propagation) deletes the cluster;
//! - a Secret (the cluster token and the engine's environment);
//! - a NetworkPolicy admitting only the cluster's own pods and the control plane;
//! - the JobManager: Deployment (1 replica, `Recreate`) and Service (`rpc`, `rest`);
//! - the TaskManagers: StatefulSet (`taskmanagers` replicas, one KPU each: 1 vCPU, 4 GiB,
//!   50 GiB ephemeral storage for state) and a headless Service.
//!
//! A new generation is a new set of objects; `apply` deletes older generations once the
//! new one is applied, and refuses a generation older than one that exists.
//! `observe` reads pods (container start/exit times, restart counts, readiness) and, for
//! a cluster that is not running, the Warning events of its objects. `delete` deletes the
//! roots and watches the pods until they are gone, so that the exit times it reports are
//! the kubelet's.
//!
//! [`cluster_role`] lists the permissions this needs, for the deployment's RBAC.
//!
//! No Kubernetes API server runs where this is developed and tested: the tests drive the
//! provisioner against kube's mock service and check every request, and validate every
//! generated manifest against the Kubernetes 1.37 schemas offline (`kubernetes-validate
//! --strict`). See the README.

mod config;
mod manifest;
mod names;
mod provisioner;
mod rbac;
mod status;

pub use config::{ConfigError, Connection, ControlPlaneSelector, K8sConfig};
pub use manifest::{
    ClusterManifests, cluster as cluster_manifests, jobmanager_args,
    namespace as namespace_manifest, resource_quota as resource_quota_manifest,
    root as root_manifest, taskmanager_args, validate_spec,
};
pub use names::{ClusterNames, FIELD_MANAGER};
pub use provisioner::{ApiError, K8sProvisioner};
pub use rbac::cluster_role;

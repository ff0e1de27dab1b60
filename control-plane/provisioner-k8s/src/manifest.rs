//! The Kubernetes objects of one engine cluster, built from a [`ClusterSpec`]. Pure
//! functions: the provisioner applies them; the tests validate them against the
//! Kubernetes schemas and compare them with reviewed golden files.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, StatefulSet, StatefulSetSpec,
};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapProjection, Container, ContainerPort, EmptyDirVolumeSource,
    EnvVar, EnvVarSource, KeyToPath, Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ProjectedVolumeSource, ResourceQuota, ResourceQuotaSpec,
    ResourceRequirements, SeccompProfile, Secret, SecretKeySelector, SecretProjection,
    SecurityContext, Service, ServicePort, ServiceSpec, TCPSocketAction, Volume, VolumeMount,
    VolumeProjection,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sluice_provisioner::{ClusterSpec, ProvisionError, RestoreFrom};

use crate::config::K8sConfig;
use crate::names::{
    self, COMPONENT_JM, COMPONENT_ROOT, COMPONENT_TM, ClusterNames, FIELD_MANAGER,
    LABEL_MANAGED_BY, LABEL_ORG, LABEL_PART_OF, cluster_labels, selector_labels,
};

pub const RPC_PORT: i32 = 6123;
pub const DATA_PORT: i32 = 6124;
pub const REST_PORT: i32 = 8081;
pub const JOB_SQL_KEY: &str = "job.sql";
pub const TOKEN_KEY: &str = "token";
pub const ENV_KEY_PREFIX: &str = "env.";
pub const QUOTA_NAME: &str = "sluice-quota";
pub const JM_CONTAINER: &str = "jobmanager";
pub const TM_CONTAINER: &str = "taskmanager";
const CONFIG_DIR: &str = "/etc/sluice";
const TOKEN_DIR: &str = "/etc/sluice/token";
const WORK_DIR: &str = "/var/lib/sluice";
const MAX_TASKMANAGERS: u32 = 10_000;
/// ConfigMaps stop at 1 MiB in etcd; leave room for metadata.
const MAX_SQL_BYTES: usize = 900 * 1024;

/// A KPU (DESIGN §3): 1 vCPU, 4 GiB memory, 50 GiB local state storage.
const MEMORY_MIB_PER_KPU: u64 = 4 * 1024;
const STORAGE_MIB_PER_KPU: u64 = 50 * 1024;

/// The objects of one cluster, in the order they are applied. The root ConfigMap (the job
/// SQL) owns all the others, so deleting it deletes the cluster.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterManifests {
    pub root: ConfigMap,
    pub secret: Secret,
    pub network_policy: NetworkPolicy,
    pub jobmanager_service: Service,
    pub taskmanager_service: Service,
    pub jobmanager: Deployment,
    pub taskmanagers: StatefulSet,
}

impl ClusterManifests {
    /// Every object as JSON, named `{kind}-{name}` (for validation and golden files).
    pub fn to_json(&self) -> Vec<(String, serde_json::Value)> {
        fn entry<T: serde::Serialize>(
            kind: &str,
            name: &Option<String>,
            v: &T,
        ) -> (String, serde_json::Value) {
            let value =
                serde_json::to_value(v).unwrap_or_else(|e| panic!("{kind} serializes: {e}"));
            (
                format!("{kind}-{}", name.as_deref().unwrap_or_default()),
                value,
            )
        }
        vec![
            entry("configmap", &self.root.metadata.name, &self.root),
            entry("secret", &self.secret.metadata.name, &self.secret),
            entry(
                "networkpolicy",
                &self.network_policy.metadata.name,
                &self.network_policy,
            ),
            entry(
                "service",
                &self.jobmanager_service.metadata.name,
                &self.jobmanager_service,
            ),
            entry(
                "service",
                &self.taskmanager_service.metadata.name,
                &self.taskmanager_service,
            ),
            entry(
                "deployment",
                &self.jobmanager.metadata.name,
                &self.jobmanager,
            ),
            entry(
                "statefulset",
                &self.taskmanagers.metadata.name,
                &self.taskmanagers,
            ),
        ]
    }
}

/// Checks what the manifests cannot express, before any request is made.
pub fn validate_spec(spec: &ClusterSpec) -> Result<(), ProvisionError> {
    let invalid = |m: String| Err(ProvisionError::InvalidSpec(m));
    names::check_label_value("organization id", &spec.id.org_id)?;
    names::check_label_value("application id", &spec.id.application_id)?;
    names::check_label_value("run id", &spec.run_id)?;
    if spec.job_id.len() != 32 || !spec.job_id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return invalid(format!("job id {:?} is not 32 hex digits", spec.job_id));
    }
    if spec.taskmanagers == 0 || spec.slots_per_taskmanager == 0 || spec.parallelism == 0 {
        return invalid(
            "parallelism, slots per TaskManager and TaskManagers must be positive".into(),
        );
    }
    if spec.taskmanagers > MAX_TASKMANAGERS {
        return invalid(format!(
            "{} TaskManagers: at most {MAX_TASKMANAGERS}",
            spec.taskmanagers
        ));
    }
    if u64::from(spec.taskmanagers) * u64::from(spec.slots_per_taskmanager)
        < u64::from(spec.parallelism)
    {
        return invalid(format!(
            "{} TaskManagers with {} slots cannot run parallelism {}",
            spec.taskmanagers, spec.slots_per_taskmanager, spec.parallelism
        ));
    }
    // Every pod has its own filesystem: a `file://` job root would scatter checkpoints.
    if !spec.checkpoint_dir.contains("://") || spec.checkpoint_dir.starts_with("file://") {
        return invalid(format!(
            "checkpoint dir {:?}: Kubernetes clusters need a shared blob store (s3://…)",
            spec.checkpoint_dir
        ));
    }
    if spec.sql.len() > MAX_SQL_BYTES {
        return invalid(format!(
            "the job SQL is {} bytes, more than a ConfigMap holds",
            spec.sql.len()
        ));
    }
    for k in spec.engine_env.keys() {
        let ok = k.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return invalid(format!(
                "engine environment variable name {k:?} is not valid"
            ));
        }
    }
    Ok(())
}

/// `restricted` Pod Security: the engine needs no privileges at all.
pub fn namespace(names: &ClusterNames, org_id: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(names.namespace.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned()),
                (LABEL_PART_OF.to_owned(), "sluice".to_owned()),
                (LABEL_ORG.to_owned(), org_id.to_owned()),
                (
                    "pod-security.kubernetes.io/enforce".to_owned(),
                    "restricted".to_owned(),
                ),
                (
                    "pod-security.kubernetes.io/warn".to_owned(),
                    "restricted".to_owned(),
                ),
            ])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Caps the namespace at the pool's `max_kpu`: a second wall behind the control plane's
/// admission. `None` when the spec carries no cap.
pub fn resource_quota(names: &ClusterNames, spec: &ClusterSpec) -> Option<ResourceQuota> {
    let max_milli = spec.max_kpu_milli?;
    let cpu = Quantity(format!("{max_milli}m"));
    let memory = Quantity(format!(
        "{}Mi",
        (max_milli * MEMORY_MIB_PER_KPU).div_ceil(1000)
    ));
    let storage = Quantity(format!(
        "{}Mi",
        (max_milli * STORAGE_MIB_PER_KPU).div_ceil(1000)
    ));
    let hard = BTreeMap::from([
        ("requests.cpu".to_owned(), cpu.clone()),
        ("limits.cpu".to_owned(), cpu),
        ("requests.memory".to_owned(), memory.clone()),
        ("limits.memory".to_owned(), memory),
        ("requests.ephemeral-storage".to_owned(), storage.clone()),
        ("limits.ephemeral-storage".to_owned(), storage),
    ]);
    Some(ResourceQuota {
        metadata: ObjectMeta {
            name: Some(QUOTA_NAME.to_owned()),
            namespace: Some(names.namespace.clone()),
            labels: Some(BTreeMap::from([
                (LABEL_MANAGED_BY.to_owned(), FIELD_MANAGER.to_owned()),
                (LABEL_PART_OF.to_owned(), "sluice".to_owned()),
                (LABEL_ORG.to_owned(), spec.id.org_id.clone()),
            ])),
            ..Default::default()
        },
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The root object: the job SQL. It has no owner; everything else names it as owner.
pub fn root(spec: &ClusterSpec, names: &ClusterNames) -> ConfigMap {
    ConfigMap {
        metadata: meta(spec, names, &names.cluster, COMPONENT_ROOT, None),
        data: Some(BTreeMap::from([(JOB_SQL_KEY.to_owned(), spec.sql.clone())])),
        ..Default::default()
    }
}

pub fn owner_reference(names: &ClusterNames, root_uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: "v1".to_owned(),
        kind: "ConfigMap".to_owned(),
        name: names.cluster.clone(),
        uid: root_uid.to_owned(),
        controller: Some(true),
        // Foreground deletion of the root waits for dependents that block it.
        block_owner_deletion: Some(true),
    }
}

/// Everything but the root, owned by the root whose uid the API server returned.
pub fn cluster(
    config: &K8sConfig,
    spec: &ClusterSpec,
    names: &ClusterNames,
    root_uid: &str,
    token: &str,
) -> ClusterManifests {
    let owner = owner_reference(names, root_uid);
    ClusterManifests {
        root: root(spec, names),
        secret: secret(spec, names, &owner, token),
        network_policy: network_policy(config, spec, names, &owner),
        jobmanager_service: jobmanager_service(spec, names, &owner),
        taskmanager_service: taskmanager_service(spec, names, &owner),
        jobmanager: jobmanager(config, spec, names, &owner),
        taskmanagers: taskmanagers(config, spec, names, &owner),
    }
}

fn meta(
    spec: &ClusterSpec,
    names: &ClusterNames,
    name: &str,
    component: &str,
    owner: Option<&OwnerReference>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(names.namespace.clone()),
        labels: Some(cluster_labels(spec, names, component)),
        owner_references: owner.map(|o| vec![o.clone()]),
        ..Default::default()
    }
}

/// The cluster token (REST bearer token and TaskManager handshake) and the engine's
/// environment, which carries blob-store credentials and so never goes into a pod spec.
fn secret(spec: &ClusterSpec, names: &ClusterNames, owner: &OwnerReference, token: &str) -> Secret {
    let mut data = BTreeMap::from([(TOKEN_KEY.to_owned(), ByteString(token.as_bytes().to_vec()))]);
    for (k, v) in &spec.engine_env {
        data.insert(
            format!("{ENV_KEY_PREFIX}{k}"),
            ByteString(v.as_bytes().to_vec()),
        );
    }
    Secret {
        metadata: meta(spec, names, &names.cluster, COMPONENT_ROOT, Some(owner)),
        type_: Some("Opaque".to_owned()),
        data: Some(data),
        ..Default::default()
    }
}

/// Ingress only from the cluster's own pods, and from the control plane to the REST port;
/// egress stays open (the job reaches Kafka, the blob store and DNS, wherever the
/// tenant's SQL points).
fn network_policy(
    config: &K8sConfig,
    spec: &ClusterSpec,
    names: &ClusterNames,
    owner: &OwnerReference,
) -> NetworkPolicy {
    let own_pods = LabelSelector {
        match_labels: Some(BTreeMap::from([(
            names::LABEL_INSTANCE.to_owned(),
            names.cluster.clone(),
        )])),
        ..Default::default()
    };
    let control_plane = NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(config.control_plane.namespace_labels.clone()),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(config.control_plane.pod_labels.clone()),
            ..Default::default()
        }),
        ..Default::default()
    };
    NetworkPolicy {
        metadata: meta(spec, names, &names.cluster, COMPONENT_ROOT, Some(owner)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(own_pods.clone()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(own_pods),
                        ..Default::default()
                    }]),
                    ports: None,
                },
                // The control plane only needs the JobManager's REST API.
                NetworkPolicyIngressRule {
                    from: Some(vec![control_plane]),
                    ports: Some(vec![NetworkPolicyPort {
                        port: Some(IntOrString::Int(REST_PORT)),
                        protocol: Some("TCP".to_owned()),
                        end_port: None,
                    }]),
                },
            ]),
            ..Default::default()
        }),
    }
}

fn service_port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.to_owned()),
        port,
        target_port: Some(IntOrString::String(name.to_owned())),
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

fn jobmanager_service(spec: &ClusterSpec, names: &ClusterNames, owner: &OwnerReference) -> Service {
    Service {
        metadata: meta(spec, names, &names.jobmanager, COMPONENT_JM, Some(owner)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(names, COMPONENT_JM)),
            ports: Some(vec![
                service_port("rpc", RPC_PORT),
                service_port("rest", REST_PORT),
            ]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Headless: gives the StatefulSet's pods stable DNS names.
fn taskmanager_service(
    spec: &ClusterSpec,
    names: &ClusterNames,
    owner: &OwnerReference,
) -> Service {
    Service {
        metadata: meta(spec, names, &names.taskmanager, COMPONENT_TM, Some(owner)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".to_owned()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(names, COMPONENT_TM)),
            ports: Some(vec![service_port("data", DATA_PORT)]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Kubernetes expands `$(NAME)` in args; data from the spec must not be expanded.
fn literal(s: &str) -> String {
    s.replace("$(", "$$(")
}

fn resources(cpu_milli: u64) -> ResourceRequirements {
    let q = BTreeMap::from([
        ("cpu".to_owned(), Quantity(format!("{cpu_milli}m"))),
        (
            "memory".to_owned(),
            Quantity(format!(
                "{}Mi",
                (cpu_milli * MEMORY_MIB_PER_KPU).div_ceil(1000)
            )),
        ),
        (
            "ephemeral-storage".to_owned(),
            Quantity(format!(
                "{}Mi",
                (cpu_milli * STORAGE_MIB_PER_KPU).div_ceil(1000)
            )),
        ),
    ]);
    // Requests equal limits: guaranteed QoS, and the quota counts exactly what is billed.
    ResourceRequirements {
        requests: Some(q.clone()),
        limits: Some(q),
        ..Default::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            add: None,
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        ..Default::default()
    }
}

fn pod_security(config: &K8sConfig) -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(config.run_as_user),
        run_as_group: Some(config.run_as_user),
        fs_group: Some(config.run_as_user),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".to_owned(),
            localhost_profile: None,
        }),
        ..Default::default()
    }
}

/// Engine variables come from the Secret, one key each (an `envFrom` would also export
/// the token).
fn engine_env(spec: &ClusterSpec, names: &ClusterNames) -> Vec<EnvVar> {
    spec.engine_env
        .keys()
        .map(|k| EnvVar {
            name: k.clone(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: names.cluster.clone(),
                    key: format!("{ENV_KEY_PREFIX}{k}"),
                    optional: Some(false),
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect()
}

fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.to_owned(),
                api_version: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..Default::default()
    }
}

fn tcp_probe(port_name: &str) -> Probe {
    Probe {
        tcp_socket: Some(TCPSocketAction {
            port: IntOrString::String(port_name.to_owned()),
            host: None,
        }),
        period_seconds: Some(2),
        failure_threshold: Some(3),
        ..Default::default()
    }
}

fn secret_projection(names: &ClusterNames, key: &str, path: &str) -> VolumeProjection {
    VolumeProjection {
        secret: Some(SecretProjection {
            name: names.cluster.clone(),
            items: Some(vec![KeyToPath {
                key: key.to_owned(),
                path: path.to_owned(),
                mode: Some(0o440),
                user: None,
            }]),
            optional: Some(false),
        }),
        ..Default::default()
    }
}

fn projected(name: &str, sources: Vec<VolumeProjection>) -> Volume {
    Volume {
        name: name.to_owned(),
        projected: Some(ProjectedVolumeSource {
            sources: Some(sources),
            default_mode: Some(0o440),
            default_user: None,
        }),
        ..Default::default()
    }
}

fn empty_dir(name: &str, size_mib: Option<u64>) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: size_mib.map(|m| Quantity(format!("{m}Mi"))),
            medium: None,
            mode: None,
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(read_only),
        ..Default::default()
    }
}

fn pod_spec(config: &K8sConfig, container: Container, volumes: Vec<Volume>) -> PodSpec {
    PodSpec {
        containers: vec![container],
        volumes: Some(volumes),
        security_context: Some(pod_security(config)),
        // The engine never talks to the Kubernetes API.
        automount_service_account_token: Some(false),
        // Service links would export every Service of the organization's namespace.
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(i64::from(config.termination_grace_period_s)),
        restart_policy: Some("Always".to_owned()),
        ..Default::default()
    }
}

/// The JobManager's share of the cluster's KPUs: what the spec bills beyond the
/// TaskManagers (the orchestration share), at least the configured floor.
pub fn jobmanager_milli(config: &K8sConfig, spec: &ClusterSpec) -> u64 {
    spec.kpu_milli
        .saturating_sub(u64::from(spec.taskmanagers) * 1000)
        .max(config.jobmanager_min_milli)
}

pub fn jobmanager_args(spec: &ClusterSpec) -> Vec<String> {
    let restore = match &spec.restore.from {
        RestoreFrom::None => "none".to_owned(),
        RestoreFrom::Latest => "latest".to_owned(),
        RestoreFrom::Uri { uri } => literal(uri),
    };
    let mut args = vec![
        "jobmanager".to_owned(),
        format!("{CONFIG_DIR}/{JOB_SQL_KEY}"),
        "--job-id".to_owned(),
        spec.job_id.clone(),
        "--generation".to_owned(),
        spec.generation.to_string(),
        "--checkpoint-dir".to_owned(),
        literal(&spec.checkpoint_dir),
        "--rest-addr".to_owned(),
        format!("0.0.0.0:{REST_PORT}"),
        "--rpc-addr".to_owned(),
        format!("0.0.0.0:{RPC_PORT}"),
        "--parallelism".to_owned(),
        spec.parallelism.to_string(),
        "--state-backend".to_owned(),
        spec.state_backend.as_str().to_owned(),
        "--checkpoint-interval-ms".to_owned(),
        spec.checkpoint.interval_ms.to_string(),
        "--checkpoint-min-pause-ms".to_owned(),
        spec.checkpoint.min_pause_ms.to_string(),
        "--checkpoint-mode".to_owned(),
        spec.checkpoint.mode.as_str().to_owned(),
        "--restore".to_owned(),
        restore,
    ];
    if spec.restore.allow_non_restored_state {
        args.push("--allow-non-restored-state".to_owned());
    }
    args.extend([
        "--auth-token-file".to_owned(),
        format!("{TOKEN_DIR}/{TOKEN_KEY}"),
    ]);
    args
}

pub fn taskmanager_args(
    spec: &ClusterSpec,
    names: &ClusterNames,
    config: &K8sConfig,
) -> Vec<String> {
    vec![
        "taskmanager".to_owned(),
        "--jobmanager".to_owned(),
        format!(
            "{}:{RPC_PORT}",
            names.jobmanager_host(&config.cluster_domain)
        ),
        "--slots".to_owned(),
        spec.slots_per_taskmanager.to_string(),
        "--id".to_owned(),
        "$(POD_NAME)".to_owned(),
        "--work-dir".to_owned(),
        WORK_DIR.to_owned(),
        // The TaskManager advertises the address it binds to other TaskManagers, so it
        // binds the pod IP rather than 0.0.0.0.
        "--data-addr".to_owned(),
        format!("$(POD_IP):{DATA_PORT}"),
        "--auth-token-file".to_owned(),
        format!("{TOKEN_DIR}/{TOKEN_KEY}"),
    ]
}

fn jobmanager(
    config: &K8sConfig,
    spec: &ClusterSpec,
    names: &ClusterNames,
    owner: &OwnerReference,
) -> Deployment {
    let milli = jobmanager_milli(config, spec);
    let container = Container {
        name: JM_CONTAINER.to_owned(),
        image: Some(config.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec![config.engine_command.clone()]),
        args: Some(jobmanager_args(spec)),
        env: Some(engine_env(spec, names)),
        ports: Some(vec![port("rpc", RPC_PORT), port("rest", REST_PORT)]),
        readiness_probe: Some(tcp_probe("rest")),
        resources: Some(resources(milli)),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR, true),
            mount("tmp", "/tmp", false),
        ]),
        ..Default::default()
    };
    let config_volume = projected(
        "config",
        vec![
            VolumeProjection {
                config_map: Some(ConfigMapProjection {
                    name: names.cluster.clone(),
                    items: Some(vec![KeyToPath {
                        key: JOB_SQL_KEY.to_owned(),
                        path: JOB_SQL_KEY.to_owned(),
                        mode: None,
                        user: None,
                    }]),
                    optional: Some(false),
                }),
                ..Default::default()
            },
            secret_projection(names, TOKEN_KEY, &format!("token/{TOKEN_KEY}")),
        ],
    );
    Deployment {
        metadata: meta(spec, names, &names.jobmanager, COMPONENT_JM, Some(owner)),
        spec: DeploymentSpec {
            replicas: Some(1),
            // Never two JobManagers of one cluster at once.
            strategy: Some(DeploymentStrategy {
                type_: Some("Recreate".to_owned()),
                rolling_update: None,
            }),
            revision_history_limit: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector_labels(names, COMPONENT_JM)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(cluster_labels(spec, names, COMPONENT_JM)),
                    ..Default::default()
                }),
                spec: Some(pod_spec(
                    config,
                    container,
                    vec![config_volume, empty_dir("tmp", Some(1024))],
                )),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

fn taskmanagers(
    config: &K8sConfig,
    spec: &ClusterSpec,
    names: &ClusterNames,
    owner: &OwnerReference,
) -> StatefulSet {
    let mut env = vec![
        field_env("POD_NAME", "metadata.name"),
        field_env("POD_IP", "status.podIP"),
    ];
    env.extend(engine_env(spec, names));
    let container = Container {
        name: TM_CONTAINER.to_owned(),
        image: Some(config.image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(vec![config.engine_command.clone()]),
        args: Some(taskmanager_args(spec, names, config)),
        env: Some(env),
        ports: Some(vec![port("data", DATA_PORT)]),
        readiness_probe: Some(tcp_probe("data")),
        resources: Some(resources(1000)),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![
            mount("token", TOKEN_DIR, true),
            mount("state", WORK_DIR, false),
            mount("tmp", "/tmp", false),
        ]),
        ..Default::default()
    };
    let volumes = vec![
        projected(
            "token",
            vec![secret_projection(names, TOKEN_KEY, TOKEN_KEY)],
        ),
        // Local state (RocksDB files) lives and dies with the pod: checkpoints are in the
        // blob store. The tmp volume's 1 GiB is part of the same KPU storage limit.
        empty_dir("state", Some(STORAGE_MIB_PER_KPU - 1024)),
        empty_dir("tmp", Some(1024)),
    ];
    StatefulSet {
        metadata: meta(spec, names, &names.taskmanager, COMPONENT_TM, Some(owner)),
        spec: StatefulSetSpec {
            // validate_spec caps taskmanagers far below i32::MAX.
            replicas: Some(i32::try_from(spec.taskmanagers).unwrap_or(i32::MAX)),
            service_name: Some(names.taskmanager.clone()),
            // TaskManagers are peers: start and replace them all at once, not one by one.
            pod_management_policy: Some("Parallel".to_owned()),
            revision_history_limit: Some(1),
            selector: LabelSelector {
                match_labels: Some(selector_labels(names, COMPONENT_TM)),
                ..Default::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(cluster_labels(spec, names, COMPONENT_TM)),
                    ..Default::default()
                }),
                spec: Some(pod_spec(config, container, volumes)),
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

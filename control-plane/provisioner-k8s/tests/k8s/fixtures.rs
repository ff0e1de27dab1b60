//! One application's cluster spec and the API objects a server would hold for it.

use std::collections::BTreeMap;

use serde_json::{Value, json};
use sluice_provisioner::{
    CheckpointMode, CheckpointSpec, ClusterId, ClusterSpec, RestoreFrom, RestoreSpec, StateBackend,
};

pub const ORG: &str = "org_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b";
pub const APP: &str = "app_0193a1b2c3d47e8f9a0b1c2d3e4f5a6c";
pub const RUN: &str = "run_0193a1b2c3d47e8f9a0b1c2d3e4f5a6d";
pub const NS: &str = "sluice-org-0193a1b2c3d47e8f9a0b1c2d3e4f5a6b";
pub const CLUSTER: &str = "app-0193a1b2c3d47e8f9a0b1c2d3e4f5a6c-g3";
pub const ROOT_UID: &str = "6f1e0c1a-9a43-4d6e-8d0a-2b8c7f1e5a01";

pub fn id() -> ClusterId {
    ClusterId {
        org_id: ORG.into(),
        application_id: APP.into(),
    }
}

/// Three subtasks on two TaskManagers of two slots, RocksDB, restoring a savepoint.
pub fn spec() -> ClusterSpec {
    ClusterSpec {
        id: id(),
        run_id: RUN.into(),
        generation: 3,
        job_id: "0123456789abcdef0123456789abcdef".into(),
        sql: "CREATE TABLE src (k STRING) WITH ('connector' = 'datagen');\n\
              CREATE TABLE out (k STRING, c BIGINT) WITH ('connector' = 'blackhole');\n\
              INSERT INTO out SELECT k, COUNT(*) FROM src GROUP BY k;\n"
            .into(),
        parallelism: 3,
        slots_per_taskmanager: 2,
        taskmanagers: 2,
        state_backend: StateBackend::Rocksdb,
        checkpoint: CheckpointSpec {
            interval_ms: 10_000,
            min_pause_ms: 1_000,
            mode: CheckpointMode::ExactlyOnce,
        },
        restore: RestoreSpec {
            from: RestoreFrom::Uri {
                uri: format!("s3://sluice/{ORG}/{APP}/savepoints/sp_1/"),
            },
            allow_non_restored_state: true,
        },
        checkpoint_dir: format!("s3://sluice/{ORG}/{APP}/"),
        engine_env: BTreeMap::from([
            ("AWS_ACCESS_KEY_ID".into(), "sluice-app".into()),
            (
                "AWS_ENDPOINT_URL".into(),
                "http://seaweedfs.sluice-system.svc:8333".into(),
            ),
            ("AWS_SECRET_ACCESS_KEY".into(), "s3cr3t".into()),
        ]),
        kpu_milli: 2_250,
        max_kpu_milli: Some(8_000),
    }
}

pub fn labels(generation: u64, component: &str) -> Value {
    json!({
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/instance": format!("app-0193a1b2c3d47e8f9a0b1c2d3e4f5a6c-g{generation}"),
        "app.kubernetes.io/managed-by": "sluice-control-plane",
        "app.kubernetes.io/name": "sluice-engine",
        "app.kubernetes.io/part-of": "sluice",
        "sluice.dev/application": APP,
        "sluice.dev/generation": generation.to_string(),
        "sluice.dev/organization": ORG,
        "sluice.dev/run": RUN,
    })
}

/// The root ConfigMap of a generation as the API server returns it.
pub fn root(generation: u64, deleting: bool) -> Value {
    let mut v = json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {
            "name": format!("app-0193a1b2c3d47e8f9a0b1c2d3e4f5a6c-g{generation}"),
            "namespace": NS, "uid": format!("uid-root-{generation}"), "resourceVersion": "7",
            "labels": labels(generation, "cluster"),
        },
        "data": {"job.sql": "INSERT INTO out SELECT 1;"}
    });
    if deleting {
        v["metadata"]["deletionTimestamp"] = json!("2026-03-01T10:00:00Z");
        v["metadata"]["finalizers"] = json!(["foregroundDeletion"]);
    }
    v
}

pub fn secret(token: &str) -> Value {
    use base64::Engine as _;
    json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": CLUSTER, "namespace": NS, "labels": labels(3, "cluster")},
        "type": "Opaque",
        "data": {"token": base64::engine::general_purpose::STANDARD.encode(token)}
    })
}

/// An engine pod of generation 3 with one container status.
pub fn pod(name: &str, component: &str, container_status: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "resourceVersion": "20", "labels": labels(3, component)},
        "spec": {"containers": [{"name": component, "image": "sluice-engine:0.1.0"}]},
        "status": {"phase": "Running", "startTime": "2026-03-01T09:00:00Z", "containerStatuses": [container_status]}
    })
}

pub fn running(container: &str, started_at: &str, ready: bool, restarts: i32) -> Value {
    json!({"name": container, "image": "sluice-engine:0.1.0", "imageID": "", "ready": ready,
        "restartCount": restarts, "state": {"running": {"startedAt": started_at}}})
}

pub fn terminated(container: &str, started_at: &str, finished_at: &str, exit_code: i32) -> Value {
    json!({"name": container, "image": "sluice-engine:0.1.0", "imageID": "", "ready": false,
        "restartCount": 0, "state": {"terminated": {"startedAt": started_at, "finishedAt": finished_at,
        "exitCode": exit_code, "reason": "Completed"}}})
}

pub fn jm_pod(status: Value) -> Value {
    pod(
        &format!("{CLUSTER}-jm-5d8f7c9b4-x7k2p"),
        "jobmanager",
        status,
    )
}

pub fn tm_pod(ordinal: u32, status: Value) -> Value {
    pod(&format!("{CLUSTER}-tm-{ordinal}"), "taskmanager", status)
}

pub fn roots_query() -> [(&'static str, String); 1] {
    [(
        "labelSelector",
        format!(
            "app.kubernetes.io/managed-by=sluice-control-plane,app.kubernetes.io/component=cluster,sluice.dev/application={APP}"
        ),
    )]
}

pub fn pods_selector() -> String {
    format!(
        "app.kubernetes.io/managed-by=sluice-control-plane,app.kubernetes.io/name=sluice-engine,sluice.dev/application={APP}"
    )
}

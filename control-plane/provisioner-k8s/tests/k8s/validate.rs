//! Every manifest the provisioner can generate, checked against the Kubernetes 1.37
//! OpenAPI schemas (the version k8s-openapi's `latest` feature targets) by
//! `kubernetes-validate --strict`, which also rejects fields the schema does not know.
//! The tool comes from the project venv (`dev/install-deps`); without it these tests fail.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Value, json};
use sluice_provisioner::{RestoreFrom, StateBackend};
use sluice_provisioner_k8s::{
    ClusterNames, ControlPlaneSelector, K8sConfig, cluster_manifests, namespace_manifest,
    resource_quota_manifest,
};

use crate::fixtures::{self, ROOT_UID};

const KUBERNETES_VERSION: &str = "1.37.0";

fn validator() -> PathBuf {
    let state = std::env::var_os("SLUICE_DEV_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.state"));
    let bin = state.join("venv/bin/kubernetes-validate");
    assert!(
        bin.is_file(),
        "{} is missing: run dev/install-deps (it installs the pinned kubernetes-validate into the project venv)",
        bin.display()
    );
    bin
}

/// Writes each object to its own file and validates them all in one run.
fn validate(objects: &[(String, Value)]) -> Result<(), String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut files = Vec::new();
    for (i, (name, v)) in objects.iter().enumerate() {
        let path = dir.path().join(format!("{i:03}-{name}.json"));
        std::fs::write(&path, serde_json::to_vec_pretty(v).expect("json")).expect("write manifest");
        files.push(path);
    }
    let out = Command::new(validator())
        .args([
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            "--quiet",
        ])
        .args(&files)
        .output()
        .expect("running kubernetes-validate");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "kubernetes-validate exited {}:\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn all_objects(config: &K8sConfig, spec: &sluice_provisioner::ClusterSpec) -> Vec<(String, Value)> {
    let names = ClusterNames::new(&config.namespace_prefix, spec).expect("names");
    let mut objects = vec![(
        "namespace".to_owned(),
        serde_json::to_value(namespace_manifest(&names, &spec.id.org_id)).expect("json"),
    )];
    if let Some(q) = resource_quota_manifest(&names, spec) {
        objects.push((
            "resourcequota".to_owned(),
            serde_json::to_value(q).expect("json"),
        ));
    }
    objects.extend(
        cluster_manifests(config, spec, &names, ROOT_UID, "0f".repeat(32).as_str()).to_json(),
    );
    objects
}

#[test]
fn every_generated_manifest_passes_strict_schema_validation() {
    let mut cases = Vec::new();
    cases.push((K8sConfig::default(), fixtures::spec()));

    let mut s = fixtures::spec();
    s.state_backend = StateBackend::Memory;
    s.restore.from = RestoreFrom::None;
    s.restore.allow_non_restored_state = false;
    s.engine_env.clear();
    s.max_kpu_milli = None;
    s.taskmanagers = 1;
    s.slots_per_taskmanager = 3;
    s.kpu_milli = 1_000;
    s.generation = 1;
    cases.push((K8sConfig::default(), s));

    let mut s = fixtures::spec();
    s.restore.from = RestoreFrom::Latest;
    s.taskmanagers = 8;
    s.slots_per_taskmanager = 1;
    s.parallelism = 8;
    s.kpu_milli = 8_250;
    s.max_kpu_milli = Some(64_500);
    let config = K8sConfig {
        namespace_prefix: "tenant-".into(),
        image: "registry.example:5000/sluice/sluice-engine@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
        image_pull_policy: "Always".into(),
        control_plane: ControlPlaneSelector {
            namespace_labels: BTreeMap::from([("sluice.dev/control-plane".into(), "true".into())]),
            pod_labels: BTreeMap::from([
                ("app.kubernetes.io/name".into(), "sluice".into()),
                ("app.kubernetes.io/component".into(), "control-plane".into()),
            ]),
        },
        cluster_domain: "k8s.internal".into(),
        termination_grace_period_s: 60,
        ..K8sConfig::default()
    };
    cases.push((config, s));

    let mut objects = Vec::new();
    for (config, spec) in &cases {
        sluice_provisioner_k8s::validate_spec(spec).expect("valid spec");
        let generated = all_objects(config, spec);
        assert_eq!(
            generated.len(),
            9 - usize::from(spec.max_kpu_milli.is_none())
        );
        objects.extend(generated);
    }
    let role = serde_json::to_value(sluice_provisioner_k8s::cluster_role("sluice-control-plane"))
        .expect("json");
    crate::mock::assert_golden("clusterrole", &role);
    objects.push(("clusterrole".to_owned(), role));
    validate(&objects).unwrap_or_else(|e| panic!("{e}"));
}

/// The check above proves something only if the validator refuses what an API server
/// refuses: an unknown field (strict mode), a wrong type and a missing required field.
#[test]
fn the_validator_refuses_broken_manifests() {
    let objects = all_objects(&K8sConfig::default(), &fixtures::spec());
    let deployment = objects
        .iter()
        .find(|(n, _)| n.starts_with("deployment-"))
        .map(|(_, v)| v.clone())
        .expect("deployment");
    validate(&[("deployment".into(), deployment.clone())])
        .expect("the unmodified Deployment is valid");

    let mut unknown = deployment.clone();
    unknown["spec"]["template"]["spec"]["containers"][0]["cpuLimit"] = json!("1");
    let mut wrong_type = deployment.clone();
    wrong_type["spec"]["replicas"] = json!("one");
    let mut missing = deployment;
    missing["spec"]
        .as_object_mut()
        .expect("spec")
        .remove("selector");
    for (what, v) in [
        ("unknown field", unknown),
        ("wrong type", wrong_type),
        ("missing selector", missing),
    ] {
        assert!(
            validate(&[(what.replace(' ', "-"), v)]).is_err(),
            "{what} passed validation"
        );
    }
}

//! The generated containers run `sluice-engine` with flags the engine defines: the command
//! lines are parsed with the engine's own clap definitions (`sluice-cluster`) after the
//! kubelet's `$(VAR)` expansion, and the files they name are resolved through the pod's
//! volume mounts to the ConfigMap and Secret keys that hold them.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use k8s_openapi::api::core::v1::{Container, PodSpec};
use sluice_cluster::{JobManagerArgs, TaskManagerArgs};
use sluice_provisioner::RestoreFrom;
use sluice_provisioner_k8s::{ClusterNames, K8sConfig, cluster_manifests};

use crate::fixtures::{self, CLUSTER, NS, ROOT_UID};

#[derive(Parser, Debug)]
#[command(name = "sluice-engine")]
enum Engine {
    Jobmanager(JobManagerArgs),
    Taskmanager(TaskManagerArgs),
}

/// What the kubelet does to `command` and `args`: `$(NAME)` becomes the variable's value
/// when the container defines it, `$$` becomes `$`.
fn expand(arg: &str, env: &BTreeMap<&str, &str>) -> String {
    let mut out = String::new();
    let mut rest = arg;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("$$") {
            out.push('$');
            rest = after;
        } else if let Some(name) = tail.strip_prefix("$(").and_then(|t| t.split_once(')'))
            && let Some(value) = env.get(name.0)
        {
            out.push_str(value);
            rest = name.1;
        } else {
            out.push('$');
            rest = &tail[1..];
        }
    }
    out.push_str(rest);
    out
}

fn command_line(c: &Container, env: &BTreeMap<&str, &str>) -> Vec<String> {
    let command = c.command.clone().expect("command");
    let args = c.args.clone().expect("args");
    command
        .iter()
        .chain(args.iter())
        .map(|a| expand(a, env))
        .collect()
}

/// `(kind, object, key)` of the file at `path` in the container, through its mounts.
fn file_source(
    pod: &PodSpec,
    c: &Container,
    path: &Path,
) -> Option<(&'static str, String, String)> {
    for m in c.volume_mounts.as_ref()? {
        let Ok(rel) = path.strip_prefix(&m.mount_path) else {
            continue;
        };
        let volume = pod.volumes.as_ref()?.iter().find(|v| v.name == m.name)?;
        for source in volume.projected.as_ref()?.sources.as_ref()? {
            if let Some(cm) = &source.config_map {
                for item in cm.items.as_ref()? {
                    if Path::new(&item.path) == rel {
                        return Some(("configmap", cm.name.clone(), item.key.clone()));
                    }
                }
            }
            if let Some(secret) = &source.secret {
                for item in secret.items.as_ref()? {
                    if Path::new(&item.path) == rel {
                        return Some(("secret", secret.name.clone(), item.key.clone()));
                    }
                }
            }
        }
    }
    None
}

fn mounted_at(c: &Container, path: &Path) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| Path::new(&m.mount_path) == path && m.read_only == Some(false))
}

#[test]
fn the_engine_parses_the_generated_command_lines_and_finds_its_files() {
    let mut spec = fixtures::spec();
    // Spec data is passed literally, even where it looks like a Kubernetes variable.
    let uri = format!("s3://sluice/{}/$(HOME)/sp_1/", fixtures::APP);
    spec.restore.from = RestoreFrom::Uri { uri: uri.clone() };
    let config = K8sConfig::default();
    let names = ClusterNames::new(&config.namespace_prefix, &spec).expect("names");
    let m = cluster_manifests(&config, &spec, &names, ROOT_UID, "token");

    let jm_pod = m.jobmanager.spec.template.spec.as_ref().expect("pod spec");
    let jm = &jm_pod.containers[0];
    let env = BTreeMap::from([("HOME", "/home/nonroot")]);
    let Engine::Jobmanager(a) =
        Engine::try_parse_from(command_line(jm, &env)).expect("jobmanager args parse")
    else {
        panic!("not a jobmanager command line")
    };
    assert_eq!(a.job_id, spec.job_id);
    assert_eq!(a.generation, 3);
    assert_eq!(a.checkpoint_dir, spec.checkpoint_dir);
    assert_eq!(
        a.rest_addr,
        "0.0.0.0:8081".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(
        a.rpc_addr,
        "0.0.0.0:6123".parse::<SocketAddr>().expect("addr")
    );
    assert_eq!(a.parallelism, Some(3));
    assert_eq!(
        (a.state_backend.as_str(), a.checkpoint_mode.as_str()),
        ("rocksdb", "exactly_once")
    );
    assert_eq!(
        (a.checkpoint_interval_ms, a.checkpoint_min_pause_ms),
        (10_000, 1_000)
    );
    assert_eq!(a.restore, uri);
    assert!(a.allow_non_restored_state);
    assert_eq!(
        file_source(jm_pod, jm, &a.job),
        Some(("configmap", CLUSTER.to_owned(), "job.sql".to_owned())),
        "the job file is the root ConfigMap's SQL"
    );
    let token = a.auth_token_file.expect("token file");
    assert_eq!(
        file_source(jm_pod, jm, &token),
        Some(("secret", CLUSTER.to_owned(), "token".to_owned()))
    );

    let tm_pod = m
        .taskmanagers
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec");
    let tm = &tm_pod.containers[0];
    let pod_name = format!("{CLUSTER}-tm-1");
    let env = BTreeMap::from([("POD_NAME", pod_name.as_str()), ("POD_IP", "10.42.0.17")]);
    let declared: Vec<&str> = tm.env.iter().flatten().map(|e| e.name.as_str()).collect();
    assert!(
        declared.contains(&"POD_NAME") && declared.contains(&"POD_IP"),
        "{declared:?}"
    );
    let Engine::Taskmanager(t) =
        Engine::try_parse_from(command_line(tm, &env)).expect("taskmanager args parse")
    else {
        panic!("not a taskmanager command line")
    };
    assert_eq!(
        t.jobmanager,
        format!("{CLUSTER}-jm.{NS}.svc.cluster.local:6123")
    );
    assert_eq!(t.slots, 2);
    assert_eq!(t.id, pod_name);
    assert_eq!(
        t.data_addr,
        "10.42.0.17:6124".parse::<SocketAddr>().expect("addr")
    );
    assert!(
        mounted_at(tm, &t.work_dir),
        "the work dir {} is a writable volume",
        t.work_dir.display()
    );
    let token = t.auth_token_file.expect("token file");
    assert_eq!(
        file_source(tm_pod, tm, &token),
        Some(("secret", CLUSTER.to_owned(), "token".to_owned()))
    );
    assert!(mounted_at(tm, &PathBuf::from("/tmp")) && mounted_at(jm, &PathBuf::from("/tmp")));
}

#[test]
fn the_expansion_helper_behaves_like_the_kubelet() {
    let env = BTreeMap::from([("A", "x")]);
    assert_eq!(expand("$(A):1", &env), "x:1");
    assert_eq!(expand("$$(A)", &env), "$(A)");
    assert_eq!(expand("$(B)", &env), "$(B)");
    assert_eq!(expand("a$b", &env), "a$b");
}

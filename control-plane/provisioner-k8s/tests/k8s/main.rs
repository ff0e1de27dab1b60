//! The Kubernetes provisioner against kube's mock service (no API server runs here):
//! each test answers the provisioner's requests one by one, checking method, path, query,
//! patch type, field manager and body, and checks what the provisioner makes of the answers.
//! `validate` checks the generated manifests against the Kubernetes schemas offline.

mod cli;
mod fixtures;
mod mock;
mod validate;

use std::sync::Arc;

use base64::Engine as _;
use http::Method;
use serde_json::{Value, json};
use sluice_provisioner::{ClusterPhase, ProcessRole, ProvisionError, Provisioner};
use sluice_provisioner_k8s::{Connection, K8sConfig, K8sProvisioner};

use fixtures::{
    APP, CLUSTER, NS, ORG, RUN, id, jm_pod, pods_selector, root, roots_query, running, spec, tm_pod,
};
use mock::{ApiHandle, Call, expect, expect_apply, finish, list, next};

fn query<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn expect_roots(handle: &mut ApiHandle) -> Call {
    let q = roots_query();
    expect(
        handle,
        Method::GET,
        &format!("/api/v1/namespaces/{NS}/configmaps"),
        &query(&q),
    )
    .await
}

async fn expect_pods(handle: &mut ApiHandle) -> Call {
    let sel = pods_selector();
    expect(
        handle,
        Method::GET,
        &format!("/api/v1/namespaces/{NS}/pods"),
        &[("labelSelector", sel.as_str())],
    )
    .await
}

async fn expect_secret_get(handle: &mut ApiHandle) -> Call {
    expect(
        handle,
        Method::GET,
        &format!("/api/v1/namespaces/{NS}/secrets/{CLUSTER}"),
        &[],
    )
    .await
}

fn decoded_token(secret_body: &Value) -> String {
    let b64 = secret_body["data"]["token"]
        .as_str()
        .expect("token in the secret");
    String::from_utf8(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("base64"),
    )
    .expect("utf8")
}

/// The apply requests after the namespace and quota: list, root, secret, the rest.
async fn answer_cluster_applies(handle: &mut ApiHandle, existing_token: Option<&str>) -> String {
    expect_apply(
        handle,
        &format!("/api/v1/namespaces/{NS}/configmaps/{CLUSTER}"),
        "configmap-root",
    )
    .await
    .respond_applied(fixtures::ROOT_UID);
    let get = expect_secret_get(handle).await;
    match existing_token {
        Some(t) => get.respond(200, &fixtures::secret(t)),
        None => get.not_found(),
    }
    let call = expect(
        handle,
        Method::PATCH,
        &format!("/api/v1/namespaces/{NS}/secrets/{CLUSTER}"),
        &[("fieldManager", "sluice-control-plane"), ("force", "true")],
    )
    .await;
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/apply-patch+yaml")
    );
    let mut body = call.body.clone().expect("secret body");
    let token = decoded_token(&body);
    assert_eq!(token.len(), 64, "a 256-bit token in hex");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(t) = existing_token {
        assert_eq!(
            token, t,
            "a re-apply keeps the token the engine already read"
        );
    }
    // The token is random: compare everything else with the reviewed copy.
    body["data"]["token"] = json!("<random>");
    mock::assert_golden("secret", &body);
    call.respond_applied("uid-secret");

    let ns = format!("/api/v1/namespaces/{NS}");
    let apps = format!("/apis/apps/v1/namespaces/{NS}");
    let net = format!("/apis/networking.k8s.io/v1/namespaces/{NS}");
    for (path, golden) in [
        (format!("{net}/networkpolicies/{CLUSTER}"), "networkpolicy"),
        (format!("{ns}/services/{CLUSTER}-jm"), "service-jobmanager"),
        (format!("{ns}/services/{CLUSTER}-tm"), "service-taskmanager"),
        (
            format!("{apps}/deployments/{CLUSTER}-jm"),
            "deployment-jobmanager",
        ),
        (
            format!("{apps}/statefulsets/{CLUSTER}-tm"),
            "statefulset-taskmanager",
        ),
    ] {
        expect_apply(handle, &path, golden)
            .await
            .respond_applied(&format!("uid-{golden}"));
    }
    token
}

#[tokio::test]
async fn apply_creates_the_cluster_by_server_side_apply_and_replaces_the_older_generation() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.apply(&spec()).await });

    expect_apply(
        &mut handle,
        &format!("/api/v1/namespaces/{NS}"),
        "namespace",
    )
    .await
    .respond_applied("uid-ns");
    expect_apply(
        &mut handle,
        &format!("/api/v1/namespaces/{NS}/resourcequotas/sluice-quota"),
        "resourcequota",
    )
    .await
    .respond_applied("uid-quota");
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(2, false)], "30"));
    let token = answer_cluster_applies(&mut handle, None).await;

    // Generation 2 is replaced: its root goes, and with it (foreground) its objects.
    let old = "app-0193a1b2c3d47e8f9a0b1c2d3e4f5a6c-g2";
    let del = expect(
        &mut handle,
        Method::DELETE,
        &format!("/api/v1/namespaces/{NS}/configmaps/{old}"),
        &[],
    )
    .await;
    assert_eq!(
        del.body
            .as_ref()
            .and_then(|b| b["propagationPolicy"].as_str()),
        Some("Foreground")
    );
    del.respond(200, &root(2, true));

    // The observation that apply returns: no pods yet, so events explain why.
    let mut new_root = root(3, false);
    new_root["metadata"]["uid"] = json!(fixtures::ROOT_UID);
    expect_roots(&mut handle).await.respond(
        200,
        &list("ConfigMapList", vec![root(2, true), new_root], "31"),
    );
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![], "31"));
    expect_secret_get(&mut handle)
        .await
        .respond(200, &fixtures::secret(&token));
    let quota_event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"name": format!("{CLUSTER}-tm.1"), "namespace": NS},
        "involvedObject": {"kind": "StatefulSet", "name": format!("{CLUSTER}-tm"), "namespace": NS},
        "reason": "FailedCreate", "type": "Warning", "lastTimestamp": "2026-03-01T10:00:01Z",
        "message": "create Pod app-…-tm-1 failed: exceeded quota: sluice-quota"
    });
    // Generation 30 of the same application shares the prefix `…-g3`: not this cluster.
    let other_app = json!({
        "apiVersion": "v1", "kind": "Event", "metadata": {"name": format!("{CLUSTER}0-jm.1"), "namespace": NS},
        "involvedObject": {"kind": "Pod", "name": format!("{CLUSTER}0-jm-abc")}, "reason": "BackOff", "type": "Warning",
        "message": "not ours"
    });
    expect(
        &mut handle,
        Method::GET,
        &format!("/api/v1/namespaces/{NS}/events"),
        &[("fieldSelector", "type=Warning")],
    )
    .await
    .respond(200, &list("EventList", vec![other_app, quota_event], "31"));

    let obs = finish(handle, task).await.expect("apply");
    assert_eq!(obs.phase, ClusterPhase::Starting);
    assert_eq!(
        (obs.run_id.as_deref(), obs.generation),
        (Some(RUN), Some(3))
    );
    assert_eq!(obs.auth_token.as_deref(), Some(token.as_str()));
    assert_eq!(
        obs.rest_url, None,
        "not known before the JobManager is ready"
    );
    assert!(obs.processes.is_empty());
    let msg = obs.message.expect("message");
    assert!(
        msg.contains("FailedCreate") && msg.contains("exceeded quota"),
        "{msg}"
    );
    assert!(!msg.contains("not ours"), "{msg}");
}

#[tokio::test]
async fn reapplying_a_generation_keeps_its_token_and_deletes_nothing() {
    let mut s = spec();
    s.max_kpu_milli = None;
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.apply(&s).await });
    expect_apply(
        &mut handle,
        &format!("/api/v1/namespaces/{NS}"),
        "namespace",
    )
    .await
    .respond_applied("uid-ns");
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(3, false)], "40"));
    let token = "ab".repeat(32);
    answer_cluster_applies(&mut handle, Some(&token)).await;
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(3, false)], "41"));
    let jm = jm_pod(running("jobmanager", "2026-03-01T10:00:05Z", true, 0));
    let tm0 = tm_pod(0, running("taskmanager", "2026-03-01T10:00:06Z", true, 0));
    let tm1 = tm_pod(1, running("taskmanager", "2026-03-01T10:00:07Z", true, 0));
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![jm, tm0, tm1], "41"));
    expect_secret_get(&mut handle)
        .await
        .respond(200, &fixtures::secret(&token));
    let obs = finish(handle, task).await.expect("apply");
    assert_eq!(obs.phase, ClusterPhase::Running);
    assert_eq!(obs.auth_token, Some(token));
}

#[tokio::test]
async fn apply_refuses_a_generation_older_than_the_running_one() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.apply(&spec()).await });
    expect_apply(
        &mut handle,
        &format!("/api/v1/namespaces/{NS}"),
        "namespace",
    )
    .await
    .respond_applied("uid-ns");
    expect_apply(
        &mut handle,
        &format!("/api/v1/namespaces/{NS}/resourcequotas/sluice-quota"),
        "resourcequota",
    )
    .await
    .respond_applied("uid-quota");
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(4, false)], "50"));
    match finish(handle, task).await {
        Err(ProvisionError::InvalidSpec(m)) => assert!(m.contains("generation 4"), "{m}"),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
}

#[tokio::test]
async fn apply_rejects_specs_kubernetes_cannot_run_before_any_request() {
    let (p, handle) = mock::provisioner(K8sConfig::default());
    let mut file_dir = spec();
    file_dir.checkpoint_dir = "file:///var/lib/sluice/jobs".into();
    let mut too_few_slots = spec();
    too_few_slots.parallelism = 5;
    let mut bad_env = spec();
    bad_env.engine_env.insert("NOT-A-NAME".into(), "x".into());
    let task = tokio::spawn(async move {
        let mut results = Vec::new();
        for s in [file_dir, too_few_slots, bad_env] {
            results.push(p.apply(&s).await);
        }
        results
    });
    for r in finish(handle, task).await {
        assert!(matches!(r, Err(ProvisionError::InvalidSpec(_))), "{r:?}");
    }
}

#[tokio::test]
async fn api_refusals_map_to_provision_errors_with_context() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { (p.apply(&spec()).await, p.observe(&id()).await) });
    let invalid = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 422,
        "reason": "Invalid", "message": "Namespace \"x\" is invalid: metadata.labels: Invalid value"});
    expect_apply(
        &mut handle,
        &format!("/api/v1/namespaces/{NS}"),
        "namespace",
    )
    .await
    .respond(422, &invalid);
    let broken = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 500,
        "reason": "InternalError", "message": "etcdserver: request timed out"});
    expect_roots(&mut handle).await.respond(500, &broken);
    let (applied, observed) = finish(handle, task).await;
    match applied {
        Err(ProvisionError::InvalidSpec(m)) => assert!(
            m.contains("applying Namespace") && m.contains("Invalid value"),
            "{m}"
        ),
        other => panic!("expected InvalidSpec, got {other:?}"),
    }
    match observed {
        Err(e @ ProvisionError::Other(_)) => {
            let m = e.to_string();
            assert!(
                m.contains(&format!("listing clusters of {ORG}/{APP}")) && m.contains("etcdserver"),
                "{m}"
            );
        }
        other => panic!("expected Other, got {other:?}"),
    }
}

/// role, slot, pod, exit time, exit code
type ProcessRow<'a> = (ProcessRole, &'a str, &'a str, Option<String>, Option<i32>);

#[tokio::test]
async fn observe_reports_a_running_cluster_from_its_pods() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.observe(&id()).await });
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(3, false)], "60"));
    let jm = jm_pod(running("jobmanager", "2026-03-01T10:00:05Z", true, 0));
    let mut tm0_status = running("taskmanager", "2026-03-01T10:02:00Z", true, 1);
    tm0_status["lastState"] = json!({"terminated": {"startedAt": "2026-03-01T10:00:06Z",
        "finishedAt": "2026-03-01T10:01:58Z", "exitCode": 137, "reason": "OOMKilled"}});
    let tm0 = tm_pod(0, tm0_status);
    let tm1 = tm_pod(1, running("taskmanager", "2026-03-01T10:00:07Z", true, 0));
    // A pod of the replaced generation 2, still terminating, is not part of this cluster.
    let mut old = tm_pod(0, running("taskmanager", "2026-03-01T09:00:00Z", true, 0));
    old["metadata"]["name"] = json!("app-0193a1b2c3d47e8f9a0b1c2d3e4f5a6c-g2-tm-0");
    old["metadata"]["labels"] = fixtures::labels(2, "taskmanager");
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![old, tm1, jm, tm0], "60"));
    expect_secret_get(&mut handle)
        .await
        .respond(200, &fixtures::secret("tok"));
    let obs = finish(handle, task).await.expect("observe");

    assert_eq!(obs.phase, ClusterPhase::Running);
    assert_eq!(
        obs.rest_url.as_deref(),
        Some(format!("http://{CLUSTER}-jm.{NS}.svc.cluster.local:8081").as_str())
    );
    assert_eq!(obs.auth_token.as_deref(), Some("tok"));
    let procs: Vec<ProcessRow<'_>> = obs
        .processes
        .iter()
        .map(|p| {
            (
                p.role,
                p.name.as_str(),
                p.pod.as_deref().unwrap_or(""),
                p.exited_at.map(|t| t.to_rfc3339()),
                p.exit_code,
            )
        })
        .collect();
    let jm_name = format!("{CLUSTER}-jm-5d8f7c9b4-x7k2p");
    let tm0_name = format!("{CLUSTER}-tm-0");
    let tm1_name = format!("{CLUSTER}-tm-1");
    assert_eq!(
        procs,
        [
            (ProcessRole::Jobmanager, "jm", jm_name.as_str(), None, None),
            (
                ProcessRole::Taskmanager,
                "tm-0",
                tm0_name.as_str(),
                Some("2026-03-01T10:01:58+00:00".into()),
                Some(137)
            ),
            (
                ProcessRole::Taskmanager,
                "tm-1",
                tm1_name.as_str(),
                None,
                None
            ),
            (
                ProcessRole::Taskmanager,
                "tm-0",
                tm0_name.as_str(),
                None,
                None
            ),
        ]
    );
    assert_eq!(obs.process_restarts(), 1);
    assert_eq!(
        obs.started_at.map(|t| t.to_rfc3339()).as_deref(),
        Some("2026-03-01T10:00:05+00:00")
    );
}

#[tokio::test]
async fn observe_of_an_unknown_cluster_is_absent() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.observe(&id()).await });
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![], "1"));
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![], "1"));
    let obs = finish(handle, task).await.expect("observe");
    assert_eq!(obs, sluice_provisioner::ClusterObservation::absent(id()));
}

#[tokio::test]
async fn list_finds_every_managed_cluster_by_label_for_readoption() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.list().await });
    let mut foreign = root(1, false);
    foreign["metadata"]["namespace"] = json!("someone-else");
    foreign["metadata"]["labels"]["sluice.dev/application"] = json!("app_foreign");
    expect(
        &mut handle,
        Method::GET,
        "/api/v1/configmaps",
        &[(
            "labelSelector",
            "app.kubernetes.io/managed-by=sluice-control-plane,app.kubernetes.io/component=cluster",
        )],
    )
    .await
    .respond(
        200,
        &list(
            "ConfigMapList",
            vec![root(3, false), foreign, root(2, true)],
            "70",
        ),
    );
    // One observation per application, not per generation; the foreign namespace is ignored.
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(3, false)], "70"));
    let jm = jm_pod(running("jobmanager", "2026-03-01T10:00:05Z", true, 0));
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![jm], "70"));
    expect_secret_get(&mut handle)
        .await
        .respond(200, &fixtures::secret("tok"));
    let all = finish(handle, task).await.expect("list");
    assert_eq!(all.len(), 1);
    assert_eq!(
        (all[0].id.clone(), all[0].phase, all[0].generation),
        (id(), ClusterPhase::Running, Some(3))
    );
}

fn watch_event(kind: &str, object: Value) -> Value {
    json!({"type": kind, "object": object})
}

#[tokio::test]
async fn delete_cascades_from_the_root_and_reports_the_kubelets_exit_times() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.delete(&id()).await });
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(3, false)], "80"));
    let jm = jm_pod(running("jobmanager", "2026-03-01T10:00:05Z", true, 0));
    let tm0 = tm_pod(0, running("taskmanager", "2026-03-01T10:00:06Z", true, 0));
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![jm, tm0.clone()], "80"));
    let del = expect(
        &mut handle,
        Method::DELETE,
        &format!("/api/v1/namespaces/{NS}/configmaps/{CLUSTER}"),
        &[],
    )
    .await;
    assert_eq!(
        del.body
            .as_ref()
            .and_then(|b| b["propagationPolicy"].as_str()),
        Some("Foreground")
    );
    del.respond(200, &root(3, true));

    let sel = pods_selector();
    let watch = next(&mut handle).await;
    assert_eq!(
        (watch.method.clone(), watch.path.as_str()),
        (
            Method::GET,
            format!("/api/v1/namespaces/{NS}/pods").as_str()
        )
    );
    assert_eq!(watch.query.get("watch").map(String::as_str), Some("true"));
    assert_eq!(
        watch.query.get("resourceVersion").map(String::as_str),
        Some("80")
    );
    assert_eq!(watch.query.get("labelSelector"), Some(&sel));
    let timeout: u32 = watch
        .query
        .get("timeoutSeconds")
        .expect("timeoutSeconds")
        .parse()
        .expect("number");
    assert!(
        (100..=120).contains(&timeout),
        "the watch is bounded by delete_timeout_s: {timeout}"
    );

    let jm_done = jm_pod(fixtures::terminated(
        "jobmanager",
        "2026-03-01T10:00:05Z",
        "2026-03-01T11:00:02Z",
        0,
    ));
    let mut tm_killed = tm0;
    tm_killed["metadata"]["deletionTimestamp"] = json!("2026-03-01T11:00:31Z");
    watch.respond_watch(&[
        watch_event("MODIFIED", jm_done.clone()),
        watch_event("DELETED", jm_done),
        // Removed without a final status: the end of its grace period bounds its exit.
        watch_event("DELETED", tm_killed),
    ]);
    let obs = finish(handle, task).await.expect("delete");
    assert_eq!(obs.phase, ClusterPhase::Terminated);
    assert_eq!(
        (obs.run_id.as_deref(), obs.generation),
        (Some(RUN), Some(3))
    );
    let exits: Vec<(&str, Option<String>, Option<i32>)> = obs
        .processes
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.exited_at.map(|t| t.to_rfc3339()),
                p.exit_code,
            )
        })
        .collect();
    assert_eq!(
        exits,
        [
            ("jm", Some("2026-03-01T11:00:02+00:00".into()), Some(0)),
            ("tm-0", Some("2026-03-01T11:00:31+00:00".into()), None),
        ]
    );
    assert_eq!(
        obs.ended_at.map(|t| t.to_rfc3339()).as_deref(),
        Some("2026-03-01T11:00:31+00:00")
    );
    assert_eq!(obs.rest_url, None);
}

#[tokio::test]
async fn delete_lists_again_when_the_watch_ends_before_the_pods_are_gone() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.delete(&id()).await });
    // A second delete: the root is already going; it is not deleted again.
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(3, true)], "90"));
    let mut tm0 = tm_pod(0, running("taskmanager", "2026-03-01T10:00:06Z", true, 0));
    tm0["metadata"]["deletionTimestamp"] = json!("2026-03-01T11:00:31Z");
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![tm0.clone()], "90"));
    let watch = next(&mut handle).await;
    assert_eq!(
        watch.query.get("resourceVersion").map(String::as_str),
        Some("90")
    );
    watch.respond_watch(&[watch_event("MODIFIED", tm0)]);
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![], "95"));
    let obs = finish(handle, task).await.expect("delete");
    assert_eq!(obs.phase, ClusterPhase::Terminated);
    assert_eq!(obs.processes.len(), 1);
    assert_eq!(
        obs.processes[0]
            .exited_at
            .map(|t| t.to_rfc3339())
            .as_deref(),
        Some("2026-03-01T11:00:31+00:00"),
        "bounded by the deletion deadline, which is earlier than when we saw it gone"
    );
}

#[tokio::test]
async fn delete_resumes_from_a_fresh_list_when_the_watch_version_expired() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.delete(&id()).await });
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(3, true)], "100"));
    let jm = jm_pod(running("jobmanager", "2026-03-01T10:00:05Z", true, 0));
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![jm.clone()], "100"));
    let gone = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410,
        "reason": "Expired", "message": "too old resource version: 100 (180)"});
    next(&mut handle)
        .await
        .respond_watch(&[watch_event("ERROR", gone)]);
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![jm], "180"));
    let watch = next(&mut handle).await;
    assert_eq!(
        watch.query.get("resourceVersion").map(String::as_str),
        Some("180"),
        "resumes at the new list"
    );
    let done = jm_pod(fixtures::terminated(
        "jobmanager",
        "2026-03-01T10:00:05Z",
        "2026-03-01T11:00:02Z",
        143,
    ));
    watch.respond_watch(&[watch_event("DELETED", done)]);
    let obs = finish(handle, task).await.expect("delete");
    assert_eq!(obs.phase, ClusterPhase::Terminated);
    assert_eq!(obs.processes[0].exit_code, Some(143));
    assert_eq!(
        obs.ended_at.map(|t| t.to_rfc3339()).as_deref(),
        Some("2026-03-01T11:00:02+00:00")
    );
}

#[tokio::test]
async fn delete_of_nothing_is_absent_and_sends_no_delete() {
    let (p, mut handle) = mock::provisioner(K8sConfig::default());
    let task = tokio::spawn(async move { p.delete(&id()).await });
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![], "1"));
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![], "1"));
    let obs = finish(handle, task).await.expect("delete");
    assert_eq!(obs.phase, ClusterPhase::Absent);
}

#[tokio::test]
async fn delete_gives_up_after_its_timeout_and_says_how_many_pods_remain() {
    let config = K8sConfig {
        delete_timeout_s: 1,
        ..K8sConfig::default()
    };
    let (p, mut handle) = mock::provisioner(config);
    let task = tokio::spawn(async move { p.delete(&id()).await });
    expect_roots(&mut handle)
        .await
        .respond(200, &list("ConfigMapList", vec![root(3, true)], "1"));
    let tm0 = tm_pod(0, running("taskmanager", "2026-03-01T10:00:06Z", true, 0));
    expect_pods(&mut handle)
        .await
        .respond(200, &list("PodList", vec![tm0.clone()], "1"));
    // Watches end at once and the pod stays listed, until the deadline passes.
    while let Some(call) = mock::try_next(&mut handle, std::time::Duration::from_secs(5)).await {
        if call.query.contains_key("watch") {
            call.respond_watch(&[]);
        } else {
            call.respond(200, &list("PodList", vec![tm0.clone()], "2"));
        }
    }
    match finish(handle, task).await {
        Err(e @ ProvisionError::Other(_)) => {
            assert!(e.to_string().contains("1 pods still terminating"), "{e}")
        }
        other => panic!("expected a timeout error, got {other:?}"),
    }
}

#[tokio::test]
async fn connect_reads_a_kubeconfig_and_reports_an_unreachable_server() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("config");
    std::fs::write(
        &path,
        "apiVersion: v1\nkind: Config\ncurrent-context: other\n\
         clusters:\n- name: c\n  cluster:\n    server: https://127.0.0.1:1\n    insecure-skip-tls-verify: true\n\
         users:\n- name: u\n  user:\n    token: t\n\
         contexts:\n- name: sluice\n  context:\n    cluster: c\n    user: u\n- name: other\n  context:\n    cluster: missing\n    user: u\n",
    )
    .expect("kubeconfig");
    let config = K8sConfig {
        connection: Connection::Kubeconfig {
            path: Some(path.clone()),
            context: Some("sluice".into()),
        },
        ..K8sConfig::default()
    };
    let p = Arc::new(K8sProvisioner::connect(config).await.expect("connect"));
    assert_eq!(p.kind(), "kubernetes");
    match p.observe(&id()).await {
        Err(e @ ProvisionError::Other(_)) => {
            assert!(e.to_string().contains("listing clusters"), "{e}")
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
    let missing = K8sConfig {
        connection: Connection::Kubeconfig {
            path: Some(dir.path().join("nope")),
            context: None,
        },
        ..K8sConfig::default()
    };
    assert!(K8sProvisioner::connect(missing).await.is_err());
    let unsafe_selector = K8sConfig {
        control_plane: sluice_provisioner_k8s::ControlPlaneSelector {
            namespace_labels: Default::default(),
            pod_labels: Default::default(),
        },
        connection: Connection::Kubeconfig {
            path: Some(path),
            context: Some("sluice".into()),
        },
        ..K8sConfig::default()
    };
    assert!(K8sProvisioner::connect(unsafe_selector).await.is_err());
}

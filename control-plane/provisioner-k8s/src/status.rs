//! What the API server says about a cluster, turned into a [`ClusterObservation`]. Pure
//! functions over the listed objects, so every phase rule is tested without a server.
//!
//! Times are the kubelet's: a process starts at its container's `startedAt` and exits at
//! its `finishedAt`. A pod that was removed before its final status was seen exits, as far
//! as we can prove, no later than its `deletionTimestamp` (the end of its grace period,
//! after which the kubelet kills it) or the moment we saw it gone, whichever is earlier.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use k8s_openapi::api::core::v1::{ConfigMap, ContainerStatus, Event, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use sluice_provisioner::{
    ClusterId, ClusterObservation, ClusterPhase, ProcessObservation, ProcessRole,
};

use crate::names::{
    COMPONENT_JM, COMPONENT_TM, LABEL_COMPONENT, LABEL_GENERATION, LABEL_INSTANCE, LABEL_RUN,
};

/// Waiting reasons that no amount of waiting fixes.
const FATAL_WAITING: &[&str] = &[
    "InvalidImageName",
    "ErrImageNeverPull",
    "CreateContainerConfigError",
];

pub fn time(t: &Time) -> DateTime<Utc> {
    from_jiff(t.0)
}

/// When an event last happened: old-style events set `lastTimestamp`, new-style ones
/// only `eventTime`.
pub fn event_time(e: &Event) -> Option<DateTime<Utc>> {
    e.last_timestamp
        .as_ref()
        .map(time)
        .or_else(|| e.event_time.as_ref().map(|t| from_jiff(t.0)))
}

fn from_jiff(ts: k8s_openapi::jiff::Timestamp) -> DateTime<Utc> {
    // jiff gives sub-second nanoseconds the sign of the timestamp; chrono wants 0..1e9.
    let (secs, nanos) = match ts.subsec_nanosecond() {
        n if n < 0 => (ts.as_second() - 1, n + 1_000_000_000),
        n => (ts.as_second(), n),
    };
    // jiff's range (years -9999..=9999) lies inside chrono's, so neither fallback is taken.
    DateTime::from_timestamp(secs, u32::try_from(nanos).unwrap_or(0))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub fn label<'a>(
    meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    key: &str,
) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

pub fn generation_of(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Option<u64> {
    label(meta, LABEL_GENERATION)?.parse().ok()
}

/// The root ConfigMap of the newest generation that is not being deleted.
pub fn current_root(roots: &[ConfigMap]) -> Option<&ConfigMap> {
    roots
        .iter()
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .max_by_key(|r| generation_of(&r.metadata))
}

/// A pod as last seen, and whether (and when) it was seen gone.
#[derive(Debug, Clone)]
pub struct PodRecord {
    pub pod: Pod,
    pub gone_at: Option<DateTime<Utc>>,
}

fn role_and_slot(pod: &Pod) -> Option<(ProcessRole, String)> {
    let name = pod.metadata.name.as_deref()?;
    match label(&pod.metadata, LABEL_COMPONENT)? {
        COMPONENT_JM => Some((ProcessRole::Jobmanager, "jm".to_owned())),
        // StatefulSet pods are `{statefulset}-{ordinal}`: the ordinal is the stable slot.
        COMPONENT_TM => {
            let ordinal = name.rsplit('-').next()?;
            Some((ProcessRole::Taskmanager, format!("tm-{ordinal}")))
        }
        _ => None,
    }
}

fn engine_status(pod: &Pod) -> Option<&ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.first()
}

/// The incarnations of one pod's engine container that the API still shows: the previous
/// one (`lastState`) and the current one.
pub fn processes_of(record: &PodRecord) -> Vec<ProcessObservation> {
    let pod = &record.pod;
    let Some((role, name)) = role_and_slot(pod) else {
        return Vec::new();
    };
    let entry = |started_at, exited_at, exit_code| ProcessObservation {
        role,
        name: name.clone(),
        pid: None,
        pod: pod.metadata.name.clone(),
        started_at,
        exited_at,
        exit_code,
    };
    let mut out = Vec::new();
    let Some(cs) = engine_status(pod) else {
        return out;
    };
    if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref())
        && let Some(started) = &t.started_at
    {
        out.push(entry(
            time(started),
            t.finished_at.as_ref().map(time),
            Some(t.exit_code),
        ));
    }
    let state = cs.state.as_ref();
    if let Some(r) = state.and_then(|s| s.running.as_ref())
        && let Some(started) = &r.started_at
    {
        let exited = record.gone_at.map(|gone| {
            let deadline = pod.metadata.deletion_timestamp.as_ref().map(time);
            deadline.map_or(gone, |d| d.min(gone))
        });
        out.push(entry(time(started), exited, None));
    } else if let Some(t) = state.and_then(|s| s.terminated.as_ref())
        && let Some(started) = &t.started_at
    {
        out.push(entry(
            time(started),
            t.finished_at.as_ref().map(time),
            Some(t.exit_code),
        ));
    }
    out
}

/// Why a pod is not serving, in words, or `None` if it is ready.
fn pod_problem(pod: &Pod, max_restarts: u32) -> Option<(bool, String)> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let status = pod.status.as_ref();
    // With restartPolicy Always a pod only ends this way when it is evicted or its node is
    // lost; its controller replaces it, so the cluster has not failed.
    if let Some(phase @ ("Failed" | "Succeeded")) = status.and_then(|s| s.phase.as_deref()) {
        let reason = status.and_then(|s| s.reason.clone()).unwrap_or_default();
        return Some((
            false,
            format!("pod {name} {phase} {reason}").trim_end().to_owned(),
        ));
    }
    let Some(cs) = engine_status(pod) else {
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("Pending");
        return Some((false, format!("pod {name} is {phase}")));
    };
    if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
        let reason = w.reason.as_deref().unwrap_or("Waiting");
        let message = w
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let restarts = u32::try_from(cs.restart_count).unwrap_or(0);
        let fatal = FATAL_WAITING.contains(&reason)
            || (reason == "CrashLoopBackOff" && restarts >= max_restarts);
        return Some((
            fatal,
            format!("pod {name} {reason} after {restarts} restarts{message}"),
        ));
    }
    if !cs.ready {
        return Some((false, format!("pod {name} is not ready")));
    }
    None
}

/// What `observe` saw of one application.
pub struct Seen<'a> {
    pub id: &'a ClusterId,
    pub roots: &'a [ConfigMap],
    pub pods: &'a [PodRecord],
    /// Warning events about the current cluster's objects, newest last.
    pub events: &'a [Event],
    pub auth_token: Option<String>,
    pub rest_url: Option<String>,
    pub max_restarts: u32,
}

pub fn observation(seen: &Seen<'_>) -> ClusterObservation {
    let current = current_root(seen.roots);
    let Some(root) =
        current.or_else(|| seen.roots.iter().max_by_key(|r| generation_of(&r.metadata)))
    else {
        return absent_or_terminated(seen);
    };
    let instance = label(&root.metadata, LABEL_INSTANCE).unwrap_or_default();
    let mine: Vec<&PodRecord> = seen
        .pods
        .iter()
        .filter(|p| label(&p.pod.metadata, LABEL_INSTANCE) == Some(instance))
        .collect();
    let mut processes: Vec<ProcessObservation> =
        mine.iter().flat_map(|p| processes_of(p)).collect();
    processes.sort_by(|a, b| (a.started_at, &a.name).cmp(&(b.started_at, &b.name)));

    let mut notes = Vec::new();
    let mut fatal = false;
    let mut jm_ready = false;
    let mut restarts = BTreeMap::new();
    for p in mine.iter().filter(|p| p.gone_at.is_none()) {
        if let Some((_, slot)) = role_and_slot(&p.pod)
            && let Some(cs) = engine_status(&p.pod)
            && cs.restart_count > 0
        {
            restarts.insert(slot, cs.restart_count);
        }
        match pod_problem(&p.pod, seen.max_restarts) {
            Some((f, note)) => {
                fatal |= f;
                notes.push(note);
            }
            None => jm_ready |= label(&p.pod.metadata, LABEL_COMPONENT) == Some(COMPONENT_JM),
        }
    }
    if !restarts.is_empty() {
        let list: Vec<String> = restarts.iter().map(|(s, n)| format!("{s}: {n}")).collect();
        notes.push(format!("container restarts {}", list.join(", ")));
    }
    for e in seen.events.iter().rev().take(3) {
        let what = e.involved_object.name.as_deref().unwrap_or("?");
        let reason = e.reason.as_deref().unwrap_or("");
        let msg = e.message.as_deref().unwrap_or("");
        notes.push(format!("{what}: {reason} {msg}").trim_end().to_owned());
    }
    let deleting = current.is_none();
    if deleting {
        notes.insert(0, "deletion in progress".to_owned());
    }
    let live = mine.iter().any(|p| p.gone_at.is_none());
    let phase = if deleting && !live {
        ClusterPhase::Terminated
    } else if fatal {
        ClusterPhase::Failed
    } else if jm_ready && !deleting {
        ClusterPhase::Running
    } else {
        ClusterPhase::Starting
    };
    let ended_at = if phase == ClusterPhase::Terminated {
        latest_exit(&processes)
    } else {
        None
    };
    ClusterObservation {
        id: seen.id.clone(),
        run_id: label(&root.metadata, LABEL_RUN).map(str::to_owned),
        generation: generation_of(&root.metadata),
        phase,
        rest_url: if phase == ClusterPhase::Running {
            seen.rest_url.clone()
        } else {
            None
        },
        auth_token: seen.auth_token.clone(),
        started_at: processes.iter().map(|p| p.started_at).min(),
        ended_at,
        processes,
        message: if notes.is_empty() {
            None
        } else {
            Some(notes.join("; "))
        },
    }
}

fn latest_exit(processes: &[ProcessObservation]) -> Option<DateTime<Utc>> {
    if processes.iter().any(|p| p.exited_at.is_none()) {
        return None;
    }
    processes.iter().filter_map(|p| p.exited_at).max()
}

/// No root object: either nothing was ever applied, or a delete finished. Pods that are
/// still listed (their owners are gone) are reported so that their exit is not lost.
fn absent_or_terminated(seen: &Seen<'_>) -> ClusterObservation {
    let mut obs = ClusterObservation::absent(seen.id.clone());
    if seen.pods.is_empty() {
        return obs;
    }
    let mut processes: Vec<ProcessObservation> = seen.pods.iter().flat_map(processes_of).collect();
    processes.sort_by(|a, b| (a.started_at, &a.name).cmp(&(b.started_at, &b.name)));
    let live = seen.pods.iter().any(|p| p.gone_at.is_none());
    obs.phase = if live {
        ClusterPhase::Starting
    } else {
        ClusterPhase::Terminated
    };
    obs.message = live.then(|| "deletion in progress".to_owned());
    obs.run_id = seen
        .pods
        .iter()
        .find_map(|p| label(&p.pod.metadata, LABEL_RUN).map(str::to_owned));
    obs.generation = seen
        .pods
        .iter()
        .filter_map(|p| generation_of(&p.pod.metadata))
        .max();
    obs.started_at = processes.iter().map(|p| p.started_at).min();
    obs.ended_at = if live { None } else { latest_exit(&processes) };
    obs.processes = processes;
    obs
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn id() -> ClusterId {
        ClusterId {
            org_id: "org_a".into(),
            application_id: "app_b".into(),
        }
    }

    fn root(generation: u64, deleting: bool) -> ConfigMap {
        let mut v = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("app-b-g{generation}"), "namespace": "sluice-org-a", "uid": "u1",
                "labels": {"app.kubernetes.io/instance": format!("app-b-g{generation}"),
                           "sluice.dev/run": "run_1", "sluice.dev/generation": generation.to_string()}}
        });
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:10:00Z");
        }
        serde_json::from_value(v).expect("configmap")
    }

    fn pod(name: &str, component: &str, status: serde_json::Value) -> PodRecord {
        let pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/instance": "app-b-g2",
                "app.kubernetes.io/component": component, "sluice.dev/generation": "2", "sluice.dev/run": "run_1"}},
            "status": status
        }))
        .expect("pod");
        PodRecord { pod, gone_at: None }
    }

    fn running(
        ready: bool,
        started: &str,
        restarts: i32,
        last: Option<(&str, &str, i32)>,
    ) -> serde_json::Value {
        let mut cs = json!({"name": "c", "image": "i", "imageID": "", "ready": ready, "restartCount": restarts,
            "state": {"running": {"startedAt": started}}});
        if let Some((s, f, code)) = last {
            cs["lastState"] =
                json!({"terminated": {"startedAt": s, "finishedAt": f, "exitCode": code}});
        }
        json!({"phase": "Running", "containerStatuses": [cs]})
    }

    fn seen<'a>(id: &'a ClusterId, roots: &'a [ConfigMap], pods: &'a [PodRecord]) -> Seen<'a> {
        Seen {
            id,
            roots,
            pods,
            events: &[],
            auth_token: Some("t".into()),
            rest_url: Some("http://jm:8081".into()),
            max_restarts: 5,
        }
    }

    #[test]
    fn ready_jobmanager_means_running_with_incarnations_oldest_first() {
        let roots = [root(2, false)];
        let pods = [
            pod(
                "app-b-g2-jm-7f9c-x2",
                "jobmanager",
                running(true, "2026-01-01T00:00:05Z", 0, None),
            ),
            pod(
                "app-b-g2-tm-0",
                "taskmanager",
                running(
                    true,
                    "2026-01-01T00:01:00Z",
                    1,
                    Some(("2026-01-01T00:00:06Z", "2026-01-01T00:00:59Z", 137)),
                ),
            ),
        ];
        let obs = observation(&seen(&id(), &roots, &pods));
        assert_eq!(obs.phase, ClusterPhase::Running);
        assert_eq!(obs.rest_url.as_deref(), Some("http://jm:8081"));
        assert_eq!(obs.generation, Some(2));
        assert_eq!(obs.run_id.as_deref(), Some("run_1"));
        let names: Vec<(&str, Option<i32>)> = obs
            .processes
            .iter()
            .map(|p| (p.name.as_str(), p.exit_code))
            .collect();
        assert_eq!(names, [("jm", None), ("tm-0", Some(137)), ("tm-0", None)]);
        assert_eq!(obs.process_restarts(), 1);
        assert_eq!(
            obs.started_at.map(|t| t.to_rfc3339()),
            Some("2026-01-01T00:00:05+00:00".into())
        );
        assert!(
            obs.message
                .as_deref()
                .is_some_and(|m| m.contains("tm-0: 1")),
            "{:?}",
            obs.message
        );
    }

    #[test]
    fn unready_jobmanager_is_starting_and_hides_the_rest_url() {
        let roots = [root(2, false)];
        let pods = [pod(
            "app-b-g2-jm-1",
            "jobmanager",
            running(false, "2026-01-01T00:00:05Z", 0, None),
        )];
        let obs = observation(&seen(&id(), &roots, &pods));
        assert_eq!(obs.phase, ClusterPhase::Starting);
        assert_eq!(obs.rest_url, None);
    }

    #[test]
    fn crash_loops_past_the_budget_and_bad_images_fail_the_cluster() {
        let roots = [root(2, false)];
        let crash = json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
            "ready": false, "restartCount": 5, "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 5m"}}}]});
        let obs = observation(&seen(
            &id(),
            &roots,
            &[pod("app-b-g2-jm-1", "jobmanager", crash)],
        ));
        assert_eq!(obs.phase, ClusterPhase::Failed);
        assert!(
            obs.message
                .as_deref()
                .is_some_and(|m| m.contains("CrashLoopBackOff after 5 restarts"))
        );

        let few = json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
            "ready": false, "restartCount": 2, "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]});
        assert_eq!(
            observation(&seen(&id(), &roots, &[pod("p", "jobmanager", few)])).phase,
            ClusterPhase::Starting
        );

        let image = json!({"phase": "Pending", "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "InvalidImageName"}}}]});
        assert_eq!(
            observation(&seen(&id(), &roots, &[pod("p", "taskmanager", image)])).phase,
            ClusterPhase::Failed
        );
    }

    #[test]
    fn an_evicted_jobmanager_pod_is_an_exited_incarnation_not_a_failure() {
        let roots = [root(2, false)];
        let evicted = pod(
            "app-b-g2-jm-1",
            "jobmanager",
            json!({"phase": "Failed", "reason": "Evicted", "containerStatuses": [{"name": "c", "image": "i",
                "imageID": "", "ready": false, "restartCount": 0, "state": {"terminated": {
                "startedAt": "2026-01-01T00:00:05Z", "finishedAt": "2026-01-01T00:05:00Z", "exitCode": 137}}}]}),
        );
        let replacement = pod(
            "app-b-g2-jm-2",
            "jobmanager",
            running(true, "2026-01-01T00:05:03Z", 0, None),
        );
        let obs = observation(&seen(&id(), &roots, &[evicted, replacement]));
        assert_eq!(obs.phase, ClusterPhase::Running);
        let exits: Vec<Option<i32>> = obs.processes.iter().map(|p| p.exit_code).collect();
        assert_eq!(exits, [Some(137), None]);
        assert_eq!(
            obs.process_restarts(),
            1,
            "both incarnations are the jm slot"
        );
        assert!(
            obs.message
                .as_deref()
                .is_some_and(|m| m.contains("Failed Evicted")),
            "{:?}",
            obs.message
        );
    }

    #[test]
    fn older_generations_and_deleted_roots_are_not_the_current_cluster() {
        let roots = [root(1, true), root(2, false)];
        assert_eq!(
            current_root(&roots).and_then(|r| generation_of(&r.metadata)),
            Some(2)
        );
        let roots = [root(3, true)];
        assert!(current_root(&roots).is_none());
    }

    #[test]
    fn a_deleted_cluster_is_terminated_with_the_last_exit_time() {
        let roots = [root(2, true)];
        let done = json!({"phase": "Running", "containerStatuses": [{"name": "c", "image": "i", "imageID": "",
            "ready": false, "restartCount": 0, "state": {"terminated": {"startedAt": "2026-01-01T00:00:05Z",
            "finishedAt": "2026-01-01T00:10:02Z", "exitCode": 0}}}]});
        let mut jm = pod("app-b-g2-jm-1", "jobmanager", done);
        jm.gone_at = Some(
            DateTime::parse_from_rfc3339("2026-01-01T00:10:03Z")
                .expect("t")
                .to_utc(),
        );
        // Removed while still shown running: bounded by its deletion deadline.
        let mut tm = pod(
            "app-b-g2-tm-0",
            "taskmanager",
            running(true, "2026-01-01T00:00:06Z", 0, None),
        );
        tm.pod.metadata.deletion_timestamp =
            Some(serde_json::from_value(json!("2026-01-01T00:10:30Z")).expect("t"));
        tm.gone_at = Some(
            DateTime::parse_from_rfc3339("2026-01-01T00:10:40Z")
                .expect("t")
                .to_utc(),
        );
        let obs = observation(&seen(&id(), &roots, &[jm, tm]));
        assert_eq!(obs.phase, ClusterPhase::Terminated);
        let exits: Vec<String> = obs
            .processes
            .iter()
            .filter_map(|p| p.exited_at.map(|t| t.to_rfc3339()))
            .collect();
        assert_eq!(
            exits,
            ["2026-01-01T00:10:02+00:00", "2026-01-01T00:10:30+00:00"]
        );
        assert_eq!(
            obs.ended_at.map(|t| t.to_rfc3339()),
            Some("2026-01-01T00:10:30+00:00".into())
        );
        assert_eq!(obs.rest_url, None);
    }

    #[test]
    fn kubernetes_times_convert_exactly() {
        let t: Time = serde_json::from_value(json!("2026-03-01T10:00:05.25Z")).expect("time");
        assert_eq!(time(&t).to_rfc3339(), "2026-03-01T10:00:05.250+00:00");
        let t: Time = serde_json::from_value(json!("1969-12-31T23:59:59.5Z")).expect("time");
        assert_eq!(time(&t).to_rfc3339(), "1969-12-31T23:59:59.500+00:00");
    }

    #[test]
    fn nothing_at_all_is_absent() {
        let obs = observation(&seen(&id(), &[], &[]));
        assert_eq!(obs, ClusterObservation::absent(id()));
    }
}

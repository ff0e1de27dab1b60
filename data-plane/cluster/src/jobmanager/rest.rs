//! The JobManager's REST API: the subset of Flink's that tooling uses, with Flink's paths
//! and field names (`GET /overview`, `/jobs`, `/jobs/{id}`, checkpoints, savepoints, stop,
//! cancel, resource requirements, exceptions, metrics) plus Prometheus `GET /metrics`.
//! Errors are Flink's `{"errors": [...]}`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use sluice_runtime::coordinator::{CheckpointRecord, CheckpointStatus};

use super::Input;
use super::state::{Jm, JmState, JobStatus, TriggerStatus, now_ms};

/// The Flink version this API imitates.
pub const FLINK_VERSION: &str = "1.20.0";

pub fn router(jm: Arc<Jm>) -> Router {
    Router::new()
        .route("/overview", get(overview))
        .route("/config", get(config))
        .route("/taskmanagers", get(taskmanagers))
        .route("/jobs", get(jobs))
        .route("/jobs/overview", get(jobs_overview))
        .route("/jobs/{id}", get(job).patch(patch_job))
        .route("/jobs/{id}/checkpoints", get(checkpoints))
        .route("/jobs/{id}/savepoints", post(trigger_savepoint))
        .route("/jobs/{id}/savepoints/{trigger}", get(savepoint_status))
        .route("/jobs/{id}/stop", post(stop))
        .route(
            "/jobs/{id}/resource-requirements",
            get(get_requirements).put(put_requirements),
        )
        .route("/jobs/{id}/exceptions", get(exceptions))
        .route("/jobs/{id}/metrics", get(job_metrics))
        .route("/metrics", get(prometheus))
        .layer(axum::middleware::from_fn_with_state(jm.clone(), auth))
        .with_state(jm)
}

async fn auth(State(jm): State<Arc<Jm>>, req: Request, next: Next) -> Response {
    if let Some(token) = &jm.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !crate::auth::bearer_matches(token, given) {
            return error(StatusCode::UNAUTHORIZED, "missing or wrong bearer token");
        }
    }
    next.run(req).await
}

fn error(status: StatusCode, msg: &str) -> Response {
    (status, Json(json!({ "errors": [msg] }))).into_response()
}

fn check_job(jm: &Jm, id: &str) -> Result<(), Box<Response>> {
    if id.eq_ignore_ascii_case(&jm.job_id) {
        Ok(())
    } else {
        Err(Box::new(error(
            StatusCode::NOT_FOUND,
            &format!("Job {id} not found"),
        )))
    }
}

/// Flink's 32-hex vertex id, derived from the vertex uid (stable across restarts).
pub fn vertex_id(uid: &str) -> String {
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    format!("{hex:0>32}")
}

async fn overview(State(jm): State<Arc<Jm>>) -> Json<Value> {
    let st = jm.lock();
    let count = |s: JobStatus| u64::from(st.status == s);
    Json(json!({
        "taskmanagers": st.tms.len(),
        "slots-total": st.slots_total(),
        "slots-available": st.slots_available(),
        "jobs-running": u64::from(!st.status.is_terminal()),
        "jobs-finished": count(JobStatus::Finished),
        "jobs-cancelled": count(JobStatus::Canceled),
        "jobs-failed": count(JobStatus::Failed),
        "flink-version": FLINK_VERSION,
        "flink-commit": concat!("sluice-", env!("CARGO_PKG_VERSION")),
    }))
}

async fn taskmanagers(State(jm): State<Arc<Jm>>) -> Json<Value> {
    let st = jm.lock();
    let now = now_ms();
    let tms: Vec<Value> = st
        .tms
        .iter()
        .map(|(id, t)| {
            json!({
                "id": id,
                "path": format!("tcp://{}", t.data_addr),
                "dataPort": t.data_addr.port(),
                "timeSinceLastHeartbeat": now - t.last_seen.elapsed().as_millis() as i64,
                "slotsNumber": t.slots,
                "freeSlots": t.slots.saturating_sub(st.slots_used(id)),
                "pid": t.pid,
                "registeredAt": t.registered_at_ms,
            })
        })
        .collect();
    Json(json!({ "taskmanagers": tms }))
}

async fn config(State(jm): State<Arc<Jm>>) -> Json<Value> {
    Json(json!({
        "refresh-interval": 3000,
        "timezone-name": "Coordinated Universal Time",
        "timezone-offset": 0,
        "flink-version": FLINK_VERSION,
        "flink-revision": concat!("sluice-", env!("CARGO_PKG_VERSION")),
        "features": {"web-submit": false, "web-cancel": true, "web-rescale": true, "web-history": false},
        "generation": jm.args.generation,
    }))
}

async fn jobs(State(jm): State<Arc<Jm>>) -> Json<Value> {
    let st = jm.lock();
    Json(json!({"jobs": [{"id": jm.job_id, "status": st.status.as_str()}]}))
}

async fn jobs_overview(State(jm): State<Arc<Jm>>) -> Json<Value> {
    let st = jm.lock();
    let end = st.end_ms.unwrap_or(-1);
    let dur = st.end_ms.unwrap_or_else(now_ms) - st.start_ms;
    Json(json!({"jobs": [{
        "jid": jm.job_id, "name": jm.name, "state": st.status.as_str(),
        "start-time": st.start_ms, "end-time": end, "duration": dur,
        "last-modification": st.status_since_ms.values().max().copied().unwrap_or(st.start_ms),
    }]}))
}

/// Records read and written by a vertex, from the TaskManagers' samples.
fn vertex_records(st: &JmState, v: &sluice_runtime::task::VertexSpec) -> (f64, f64) {
    let sum = |name: &str, key: &str, val: &str| -> f64 {
        st.samples
            .values()
            .flatten()
            .filter(|s| s.name == name && s.labels.iter().any(|(k, x)| k == key && x == val))
            .map(|s| s.value)
            .sum()
    };
    let pipeline = v.pipeline.to_string();
    let read = match &v.input {
        None => sum("sluice_source_records_total", "pipeline", &pipeline),
        Some(i) => v
            .side_input
            .iter()
            .chain([i])
            .map(|i| {
                sum(
                    "sluice_exchange_records_total",
                    "vertex",
                    &i.upstream.to_string(),
                )
            })
            .sum(),
    };
    let written = if v.output.is_some() {
        sum("sluice_exchange_records_total", "vertex", &v.id.to_string())
    } else {
        sum("sluice_sink_records_total", "pipeline", &pipeline)
    };
    (read, written)
}

async fn job(State(jm): State<Arc<Jm>>, Path(id): Path<String>) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    let st = jm.lock();
    let now = now_ms();
    let end = st.end_ms.unwrap_or(-1);
    let duration = st.end_ms.unwrap_or(now) - st.start_ms;
    let vstatus = match st.status {
        JobStatus::Running if st.deployment.is_some() => "RUNNING",
        JobStatus::Created | JobStatus::Restarting => "CREATED",
        JobStatus::Finished => "FINISHED",
        JobStatus::Canceled | JobStatus::Cancelling => "CANCELED",
        JobStatus::Failed | JobStatus::Failing => "FAILED",
        JobStatus::Running => "DEPLOYING",
    };
    let mut status_counts: BTreeMap<&str, usize> = BTreeMap::new();
    let vertices: Vec<Value> = st
        .graph
        .vertices
        .iter()
        .map(|v| {
            *status_counts.entry(vstatus).or_default() += 1;
            let (read, written) = vertex_records(&st, v);
            json!({
                "id": vertex_id(&v.uid),
                "name": v.name,
                "maxParallelism": st.graph.max_parallelism,
                "parallelism": v.parallelism,
                "status": vstatus,
                "start-time": st.start_ms,
                "end-time": end,
                "duration": duration,
                "tasks": { vstatus: v.parallelism },
                "metrics": {
                    "read-bytes": 0, "read-bytes-complete": true,
                    "write-bytes": 0, "write-bytes-complete": true,
                    "read-records": read as u64, "read-records-complete": true,
                    "write-records": written as u64, "write-records-complete": true,
                    "accumulated-backpressured-time": st.sample_sum("sluice_backpressured_time_ms_total") as u64,
                    "accumulated-idle-time": 0,
                    "accumulated-busy-time": 0,
                },
            })
        })
        .collect();
    let timestamps: BTreeMap<&str, i64> = st
        .status_since_ms
        .iter()
        .map(|(s, t)| (s.as_str(), *t))
        .collect();
    let nodes: Vec<Value> = st
        .graph
        .vertices
        .iter()
        .map(|v| {
            json!({
                "id": vertex_id(&v.uid),
                "parallelism": v.parallelism,
                "operator": "",
                "operator_strategy": "",
                "description": v.name,
                "inputs": v.input.iter().chain(v.side_input.iter()).enumerate().map(|(num, i)| json!({
                    "num": num,
                    "id": vertex_id(&st.graph.vertices[i.upstream].uid),
                    "ship_strategy": format!("{:?}", i.exchange).to_uppercase(),
                    "exchange": "pipelined_bounded",
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(json!({
        "jid": jm.job_id,
        "name": jm.name,
        "isStoppable": false,
        "state": st.status.as_str(),
        "job-type": "STREAMING",
        "start-time": st.start_ms,
        "end-time": end,
        "duration": duration,
        "maxParallelism": st.graph.max_parallelism,
        "now": now,
        "timestamps": timestamps,
        "vertices": vertices,
        "status-counts": status_counts,
        "plan": {"jid": jm.job_id, "name": jm.name, "type": "STREAMING", "nodes": nodes},
    }))
    .into_response()
}

#[derive(Deserialize)]
struct PatchQuery {
    mode: Option<String>,
}

async fn patch_job(
    State(jm): State<Arc<Jm>>,
    Path(id): Path<String>,
    Query(q): Query<PatchQuery>,
) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    match q.mode.as_deref().unwrap_or("cancel") {
        "cancel" => {
            let _ = jm.inbox.send(Input::Cancel);
            (StatusCode::ACCEPTED, Json(json!({}))).into_response()
        }
        other => error(
            StatusCode::BAD_REQUEST,
            &format!("mode {other:?} is not supported (cancel)"),
        ),
    }
}

/// A snapshot directory relative to the job's store, as a URI.
fn full_path(jm: &Jm, path: &str) -> String {
    format!("{}/{path}", jm.store_base.trim_end_matches('/'))
}

fn record_json(jm: &Jm, r: &CheckpointRecord) -> Value {
    let status = match r.status {
        CheckpointStatus::InProgress => "IN_PROGRESS",
        CheckpointStatus::Completed => "COMPLETED",
        CheckpointStatus::Failed => "FAILED",
    };
    let mut v = json!({
        "className": match r.status {
            CheckpointStatus::InProgress => "in_progress",
            CheckpointStatus::Completed => "completed",
            CheckpointStatus::Failed => "failed",
        },
        "id": r.id,
        "status": status,
        "is_savepoint": r.savepoint.is_some(),
        "savepointFormat": r.savepoint.as_ref().map(|_| "CANONICAL"),
        "trigger_timestamp": r.trigger_timestamp_ms,
        "latest_ack_timestamp": r.latest_ack_timestamp_ms.map(|t| t as i64).unwrap_or(-1),
        "checkpointed_size": r.checkpointed_size_bytes,
        "state_size": r.state_size_bytes,
        "end_to_end_duration": r.end_to_end_duration_ms.unwrap_or(0),
        "alignment_buffered": 0,
        "processed_data": 0,
        "persisted_data": 0,
        "num_subtasks": r.num_subtasks,
        "num_acknowledged_subtasks": r.num_acknowledged_subtasks,
        "checkpoint_type": if r.savepoint.is_some() { "SAVEPOINT" } else { "CHECKPOINT" },
        "tasks": {},
        "external_path": r.external_path.as_deref().map(|p| full_path(jm, p)),
        "discarded": false,
    });
    if r.status == CheckpointStatus::Failed {
        v["failure_timestamp"] = json!(r.end_timestamp_ms.unwrap_or(0));
        v["failure_message"] = json!(r.failure_message);
    }
    v
}

fn min_max_avg(values: &[u64]) -> Value {
    if values.is_empty() {
        return json!({"min": 0, "max": 0, "avg": 0, "p50": 0.0, "p90": 0.0, "p95": 0.0, "p99": 0.0, "p999": 0.0});
    }
    let mut v = values.to_vec();
    v.sort_unstable();
    let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize] as f64;
    json!({
        "min": v[0],
        "max": v[v.len() - 1],
        "avg": v.iter().sum::<u64>() / v.len() as u64,
        "p50": q(0.5), "p90": q(0.9), "p95": q(0.95), "p99": q(0.99), "p999": q(0.999),
    })
}

async fn checkpoints(State(jm): State<Arc<Jm>>, Path(id): Path<String>) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    let st = jm.lock();
    let s = &st.checkpoints;
    let done: Vec<&CheckpointRecord> = s
        .history
        .iter()
        .filter(|r| r.status == CheckpointStatus::Completed)
        .collect();
    let sizes: Vec<u64> = done.iter().map(|r| r.state_size_bytes).collect();
    let uploaded: Vec<u64> = done.iter().map(|r| r.checkpointed_size_bytes).collect();
    let durations: Vec<u64> = done
        .iter()
        .map(|r| r.end_to_end_duration_ms.unwrap_or(0))
        .collect();
    let zeros = min_max_avg(&vec![0; done.len()]);
    Json(json!({
        "counts": {
            "restored": s.counts.restored,
            "total": s.counts.triggered,
            "in_progress": s.counts.in_progress,
            "completed": s.counts.completed,
            "failed": s.counts.failed,
        },
        "summary": {
            "checkpointed_size": min_max_avg(&uploaded),
            "state_size": min_max_avg(&sizes),
            "end_to_end_duration": min_max_avg(&durations),
            "alignment_buffered": zeros,
            "processed_data": zeros,
            "persisted_data": zeros,
        },
        "latest": {
            "completed": s.latest_completed.as_ref().map(|r| record_json(&jm, r)),
            "savepoint": s.latest_savepoint.as_ref().map(|r| record_json(&jm, r)),
            "failed": s.latest_failed.as_ref().map(|r| record_json(&jm, r)),
            "restored": s.restored.as_ref().map(|r| json!({
                "id": r.id,
                "restore_timestamp": r.restore_timestamp_ms,
                "is_savepoint": r.is_savepoint,
                "external_path": st.restored_from.clone().unwrap_or_else(|| full_path(&jm, &r.external_path)),
            })),
        },
        "history": s.history.iter().map(|r| record_json(&jm, r)).collect::<Vec<_>>(),
    }))
    .into_response()
}

#[derive(Deserialize, Default)]
struct SavepointBody {
    #[serde(rename = "target-directory")]
    target_directory: Option<String>,
    #[serde(rename = "cancel-job", default)]
    cancel_job: bool,
    #[serde(rename = "formatType")]
    format_type: Option<String>,
}

#[derive(Deserialize, Default)]
struct StopBody {
    #[serde(rename = "targetDirectory")]
    target_directory: Option<String>,
    #[serde(default)]
    drain: bool,
}

async fn request_savepoint(jm: &Jm, target: Option<String>, stop: Option<bool>) -> Response {
    let (reply, rx) = tokio::sync::oneshot::channel();
    if jm
        .inbox
        .send(Input::Savepoint {
            target,
            stop,
            reply,
        })
        .is_err()
    {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the jobmanager is stopping",
        );
    }
    match rx.await {
        Ok(Ok(trigger)) => {
            (StatusCode::ACCEPTED, Json(json!({ "request-id": trigger }))).into_response()
        }
        Ok(Err(e)) => error(StatusCode::CONFLICT, &e),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the jobmanager is stopping",
        ),
    }
}

async fn trigger_savepoint(
    State(jm): State<Arc<Jm>>,
    Path(id): Path<String>,
    body: Option<Json<SavepointBody>>,
) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    if let Some(f) = &body.format_type
        && !f.eq_ignore_ascii_case("CANONICAL")
        && !f.eq_ignore_ascii_case("NATIVE")
    {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("formatType {f:?} (CANONICAL, NATIVE)"),
        );
    }
    // Savepoints are always canonical; NATIVE is accepted and written canonically.
    let stop = body.cancel_job.then_some(false);
    request_savepoint(&jm, body.target_directory, stop).await
}

async fn stop(
    State(jm): State<Arc<Jm>>,
    Path(id): Path<String>,
    body: Option<Json<StopBody>>,
) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    let body = body.map(|Json(b)| b).unwrap_or_default();
    request_savepoint(&jm, body.target_directory, Some(body.drain)).await
}

async fn savepoint_status(
    State(jm): State<Arc<Jm>>,
    Path((id, trigger)): Path<(String, String)>,
) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    let st = jm.lock();
    match st.triggers.get(&trigger) {
        None => error(
            StatusCode::NOT_FOUND,
            &format!("There is no savepoint operation with trigger id {trigger}"),
        ),
        Some(TriggerStatus::InProgress) => {
            Json(json!({"status": {"id": "IN_PROGRESS"}, "operation": null})).into_response()
        }
        Some(TriggerStatus::Completed { location }) => Json(json!({
            "status": {"id": "COMPLETED"},
            "operation": {"location": location},
        }))
        .into_response(),
        Some(TriggerStatus::Failed { error }) => Json(json!({
            "status": {"id": "COMPLETED"},
            "operation": {"failure-cause": {
                "class": "org.apache.flink.runtime.checkpoint.CheckpointException",
                "stack-trace": error,
                "serialized-throwable": null,
            }},
        }))
        .into_response(),
    }
}

async fn get_requirements(State(jm): State<Arc<Jm>>, Path(id): Path<String>) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    let st = jm.lock();
    let body: BTreeMap<String, Value> = st
        .graph
        .vertices
        .iter()
        .map(|v| {
            (
                vertex_id(&v.uid),
                json!({"parallelism": {"lowerBound": 1, "upperBound": st.parallelism}}),
            )
        })
        .collect();
    Json(body).into_response()
}

#[derive(Deserialize)]
struct Bounds {
    #[serde(rename = "lowerBound")]
    _lower_bound: Option<i64>,
    #[serde(rename = "upperBound")]
    upper_bound: i64,
}

#[derive(Deserialize)]
struct Requirement {
    parallelism: Bounds,
}

async fn put_requirements(
    State(jm): State<Arc<Jm>>,
    Path(id): Path<String>,
    Json(body): Json<BTreeMap<String, Requirement>>,
) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    // Every vertex runs at one parallelism (slot sharing): the largest upper bound wins.
    let Some(p) = body.values().map(|r| r.parallelism.upper_bound).max() else {
        return error(StatusCode::BAD_REQUEST, "no vertex in the request");
    };
    if p < 1 || p > i64::from(jm.args.max_parallelism) {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("parallelism {p} is outside 1..={}", jm.args.max_parallelism),
        );
    }
    let _ = jm.inbox.send(Input::Rescale(p as usize));
    (StatusCode::OK, Json(json!({}))).into_response()
}

async fn exceptions(State(jm): State<Arc<Jm>>, Path(id): Path<String>) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    let st = jm.lock();
    let entries: Vec<Value> = st
        .exceptions
        .iter()
        .rev()
        .map(|e| {
            json!({
                "exceptionName": "org.apache.flink.runtime.JobException",
                "stacktrace": e.message,
                "timestamp": e.at_ms,
                "taskName": e.task,
                "location": e.location,
                "endpoint": e.location,
                "taskManagerId": e.location.as_deref().and_then(|l| l.split(' ').next()),
                "failureLabels": {},
                "concurrentExceptions": [],
            })
        })
        .collect();
    let root = st.exceptions.last();
    Json(json!({
        "root-exception": root.map(|e| e.message.clone()),
        "timestamp": root.map(|e| e.at_ms),
        "all-exceptions": [],
        "truncated": false,
        "exceptionHistory": {"entries": entries, "truncated": false},
    }))
    .into_response()
}

/// Job-level metrics by Flink name.
fn job_metric(jm: &Jm, st: &JmState, name: &str) -> Option<String> {
    let latest = st.checkpoints.latest_completed.as_ref();
    Some(match name {
        "numRestarts" | "fullRestarts" => st.restarts.to_string(),
        "lastCheckpointDuration" => latest
            .and_then(|r| r.end_to_end_duration_ms)
            .map(|d| d.to_string())
            .unwrap_or_else(|| "-1".into()),
        "lastCheckpointSize" | "lastCheckpointFullSize" => latest
            .map(|r| r.state_size_bytes.to_string())
            .unwrap_or_else(|| "-1".into()),
        "numberOfCompletedCheckpoints" => st.checkpoints.counts.completed.to_string(),
        "numberOfFailedCheckpoints" => st.checkpoints.counts.failed.to_string(),
        "numberOfInProgressCheckpoints" => st.checkpoints.counts.in_progress.to_string(),
        "totalNumberOfCheckpoints" => st.checkpoints.counts.triggered.to_string(),
        "lastCheckpointRestoreTimestamp" => st
            .checkpoints
            .restored
            .as_ref()
            .map(|r| r.restore_timestamp_ms.to_string())
            .unwrap_or_else(|| "-1".into()),
        "numRecordsIn" => (st.sample_sum("sluice_source_records_total") as u64).to_string(),
        "numRecordsOut" => (st.sample_sum("sluice_sink_records_total") as u64).to_string(),
        "numLateRecordsDropped" => {
            (st.sample_sum("sluice_late_records_dropped_total") as u64).to_string()
        }
        "uptime" => match st.status {
            JobStatus::Running => (now_ms()
                - st.status_since_ms
                    .get(&JobStatus::Running)
                    .copied()
                    .unwrap_or_else(now_ms))
            .to_string(),
            _ => "0".into(),
        },
        "lastRecoveryTimeMs" => st
            .last_recovery_ms
            .map(|m| m.to_string())
            .unwrap_or_else(|| "-1".into()),
        "generation" => jm.args.generation.to_string(),
        _ => return None,
    })
}

const JOB_METRICS: &[&str] = &[
    "numRestarts",
    "fullRestarts",
    "lastCheckpointDuration",
    "lastCheckpointSize",
    "numberOfCompletedCheckpoints",
    "numberOfFailedCheckpoints",
    "numberOfInProgressCheckpoints",
    "totalNumberOfCheckpoints",
    "lastCheckpointRestoreTimestamp",
    "numRecordsIn",
    "numRecordsOut",
    "numLateRecordsDropped",
    "uptime",
    "lastRecoveryTimeMs",
    "generation",
];

#[derive(Deserialize)]
struct MetricsQuery {
    get: Option<String>,
}

async fn job_metrics(
    State(jm): State<Arc<Jm>>,
    Path(id): Path<String>,
    Query(q): Query<MetricsQuery>,
) -> Response {
    if let Err(r) = check_job(&jm, &id) {
        return *r;
    }
    let st = jm.lock();
    let out: Vec<Value> = match q.get {
        None => JOB_METRICS.iter().map(|m| json!({"id": m})).collect(),
        Some(names) => names
            .split(',')
            .filter_map(|n| {
                let n = n.trim();
                job_metric(&jm, &st, n).map(|v| json!({"id": n, "value": v}))
            })
            .collect(),
    };
    Json(out).into_response()
}

async fn prometheus(State(jm): State<Arc<Jm>>) -> Response {
    let st = jm.lock();
    let mut out = String::new();
    let job = &jm.job_id;
    for (tm, samples) in &st.samples {
        for s in samples {
            let mut labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('"', "\\\"")))
                .collect();
            labels.push(format!("taskmanager=\"{tm}\""));
            labels.push(format!("job_id=\"{job}\""));
            out.push_str(&format!("{}{{{}}} {}\n", s.name, labels.join(","), s.value));
        }
    }
    // Watermark lag per pipeline: now minus the lowest sink watermark.
    let now = now_ms();
    let mut lag: BTreeMap<String, i64> = BTreeMap::new();
    for s in st.samples.values().flatten() {
        if s.name == "sluice_sink_watermark_ms" && s.value > i64::MIN as f64 / 2.0 {
            let p = s
                .labels
                .iter()
                .find(|(k, _)| k == "pipeline")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let l = now - s.value as i64;
            let e = lag.entry(p).or_insert(l);
            *e = (*e).max(l);
        }
    }
    for (p, l) in lag {
        out.push_str(&format!(
            "sluice_watermark_lag_ms{{pipeline=\"{p}\",job_id=\"{job}\"}} {l}\n"
        ));
    }
    let latest = st.checkpoints.latest_completed.as_ref();
    let lines = [
        ("sluice_job_restarts_total", st.restarts as f64),
        (
            "sluice_checkpoints_completed_total",
            st.checkpoints.counts.completed as f64,
        ),
        (
            "sluice_checkpoints_failed_total",
            st.checkpoints.counts.failed as f64,
        ),
        (
            "sluice_checkpoint_last_duration_ms",
            latest
                .and_then(|r| r.end_to_end_duration_ms)
                .map(|d| d as f64)
                .unwrap_or(-1.0),
        ),
        (
            "sluice_checkpoint_last_size_bytes",
            latest.map(|r| r.state_size_bytes as f64).unwrap_or(-1.0),
        ),
        ("sluice_taskmanagers", st.tms.len() as f64),
        ("sluice_slots_total", st.slots_total() as f64),
        ("sluice_slots_available", st.slots_available() as f64),
        (
            "sluice_last_recovery_ms",
            st.last_recovery_ms.map(|m| m as f64).unwrap_or(-1.0),
        ),
    ];
    for (n, v) in lines {
        out.push_str(&format!("{n}{{job_id=\"{job}\"}} {v}\n"));
    }
    out.push_str(&format!(
        "sluice_job_status{{job_id=\"{job}\",state=\"{}\"}} 1\n",
        st.status.as_str()
    ));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

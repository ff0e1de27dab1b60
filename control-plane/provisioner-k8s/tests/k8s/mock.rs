//! kube's mock service: the provisioner's client sends every request to a `tower-test`
//! handle, and the test answers each one after checking it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use kube::client::Body;
use serde_json::{Value, json};
use sluice_provisioner_k8s::{FIELD_MANAGER, K8sConfig, K8sProvisioner};
use tokio::task::JoinHandle;
use tower_test::mock::{Handle, SendResponse};

pub type ApiHandle = Handle<Request<Body>, Response<Body>>;

pub fn provisioner(config: K8sConfig) -> (Arc<K8sProvisioner>, ApiHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = kube::Client::new(service, "default");
    let p = K8sProvisioner::with_client(client, config).expect("valid config");
    (Arc::new(p), handle)
}

/// One request the provisioner made, waiting for its response.
pub struct Call {
    pub method: Method,
    pub path: String,
    pub query: BTreeMap<String, String>,
    pub content_type: Option<String>,
    pub body: Option<Value>,
    send: SendResponse<Response<Body>>,
}

impl Call {
    pub fn respond(self, status: u16, body: &Value) {
        self.respond_bytes(status, serde_json::to_vec(body).expect("json"));
    }

    pub fn respond_bytes(self, status: u16, body: Vec<u8>) {
        let mut resp = Response::new(Body::from(body));
        *resp.status_mut() = StatusCode::from_u16(status).expect("status");
        self.send.send_response(resp);
    }

    /// What the API server answers to an apply: the object as stored, with a uid.
    pub fn respond_applied(self, uid: &str) {
        let mut object = self.body.clone().expect("apply body");
        object["metadata"]["uid"] = json!(uid);
        object["metadata"]["resourceVersion"] = json!("1");
        self.respond(200, &object);
    }

    pub fn not_found(self) {
        let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": format!("{} not found", self.path), "reason": "NotFound", "code": 404});
        self.respond(404, &status);
    }

    /// A watch response: one JSON event per line, then the end of the stream.
    pub fn respond_watch(self, events: &[Value]) {
        let mut body = Vec::new();
        for e in events {
            body.extend(serde_json::to_vec(e).expect("json"));
            body.push(b'\n');
        }
        self.respond_bytes(200, body);
    }
}

pub async fn next(handle: &mut ApiHandle) -> Call {
    try_next(handle, Duration::from_secs(10))
        .await
        .expect("the provisioner made no request within 10 s, or its client was dropped")
}

/// The next request, or `None` once the provisioner's client is gone or after `wait`.
pub async fn try_next(handle: &mut ApiHandle, wait: Duration) -> Option<Call> {
    let (req, send) = tokio::time::timeout(wait, handle.next_request())
        .await
        .ok()??;
    let (parts, body) = req.into_parts();
    let bytes = body.collect_bytes().await.expect("request body");
    let query = parts
        .uri
        .query()
        .map(|q| {
            form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .filter(|(k, _)| !k.is_empty())
                .collect::<BTreeMap<String, String>>()
        })
        .unwrap_or_default();
    Some(Call {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query,
        content_type: parts
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: if bytes.is_empty() {
            None
        } else {
            Some(serde_json::from_slice(&bytes).expect("JSON request body"))
        },
        send,
    })
}

/// The next request must be `method path` with exactly these query parameters.
pub async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
    query: &[(&str, &str)],
) -> Call {
    let call = next(handle).await;
    assert_eq!(
        (&call.method, call.path.as_str()),
        (&method, path),
        "request {} {}",
        call.method,
        call.path
    );
    let want: BTreeMap<String, String> = query
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    assert_eq!(call.query, want, "query of {} {}", call.method, call.path);
    call
}

/// The next request must be a server-side apply of `path` by our field manager, with
/// `force`, and this exact body.
pub async fn expect_apply(handle: &mut ApiHandle, path: &str, golden_name: &str) -> Call {
    let call = expect(
        handle,
        Method::PATCH,
        path,
        &[("fieldManager", FIELD_MANAGER), ("force", "true")],
    )
    .await;
    assert_eq!(
        call.content_type.as_deref(),
        Some("application/apply-patch+yaml"),
        "patch type of {path}"
    );
    assert_golden(golden_name, call.body.as_ref().expect("apply body"));
    call
}

/// Reviewed copies of what the provisioner sends, under `tests/golden/`. Set
/// `SLUICE_BLESS_GOLDEN=1` to rewrite them after an intended change, then review the diff.
pub fn assert_golden(name: &str, actual: &Value) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.json"));
    let pretty = serde_json::to_string_pretty(actual).expect("json") + "\n";
    if std::env::var_os("SLUICE_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("dir")).expect("golden dir");
        std::fs::write(&path, &pretty).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (SLUICE_BLESS_GOLDEN=1 writes it)", path.display()));
    let expected: Value = serde_json::from_str(&expected).expect("golden json");
    assert!(
        expected == *actual,
        "{name} differs from {}:\n{pretty}",
        path.display()
    );
}

/// Waits for the provisioner call and checks that it made no request beyond those answered.
pub async fn finish<T: Send + 'static>(mut handle: ApiHandle, task: JoinHandle<T>) -> T {
    let result = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the provisioner call did not finish")
        .expect("the provisioner call panicked");
    let extra = tokio::time::timeout(Duration::from_secs(10), handle.next_request())
        .await
        .expect("the mock service was not released");
    if let Some((req, _)) = extra {
        panic!("unexpected request {} {}", req.method(), req.uri());
    }
    result
}

pub fn list(kind: &str, items: Vec<Value>, resource_version: &str) -> Value {
    json!({"apiVersion": "v1", "kind": kind, "metadata": {"resourceVersion": resource_version}, "items": items})
}

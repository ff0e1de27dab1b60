//! Typed client of the Sluice public API (`/v1`), used by the `sluice` CLI and
//! meant for the Terraform provider and the tests.
//!
//! Request and response types are those of `sluice-api-types`, the crate the
//! server's handlers (and so `openapi/openapi.json`) are generated from. The
//! routes are written here by hand; [`ROUTES`] lists every one and a test fails
//! when one of them is not in the committed OpenAPI document, so the client
//! cannot drift from the server. (Not generated: a generator such as
//! progenitor is not among this workspace's dependencies yet.)
//!
//! Test: `dev/cargo test -p sluice-client`.

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_api_types::*;

/// Every (method, OpenAPI path) this client calls.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/auth/token"),
    ("post", "/v1/auth/login"),
    ("get", "/v1/me"),
    ("get", "/v1/compute-pools"),
    ("post", "/v1/compute-pools"),
    ("get", "/v1/compute-pools/{id}"),
    ("patch", "/v1/compute-pools/{id}"),
    ("delete", "/v1/compute-pools/{id}"),
    ("get", "/v1/applications"),
    ("post", "/v1/applications"),
    ("get", "/v1/applications/{id}"),
    ("patch", "/v1/applications/{id}"),
    ("delete", "/v1/applications/{id}"),
    ("post", "/v1/applications/{id}:start"),
    ("post", "/v1/applications/{id}:stop"),
    ("post", "/v1/applications/{id}:rollback"),
    ("get", "/v1/applications/{id}/versions"),
    ("get", "/v1/applications/{id}/versions/{n}"),
    ("get", "/v1/applications/{id}/events"),
    ("get", "/v1/applications/{id}/metrics"),
    ("get", "/v1/api-keys"),
    ("post", "/v1/api-keys"),
    ("delete", "/v1/api-keys/{id}"),
    ("get", "/v1/operations/{id}"),
    ("post", "/v1/applications/{id}/savepoints"),
    ("get", "/v1/applications/{id}/savepoints"),
    ("get", "/v1/applications/{id}/savepoint-usage"),
    ("put", "/v1/applications/{id}/savepoint-schedule"),
    ("get", "/v1/applications/{id}/savepoint-schedule"),
    ("delete", "/v1/applications/{id}/savepoint-schedule"),
    ("get", "/v1/savepoints/{id}"),
    ("patch", "/v1/savepoints/{id}"),
    ("delete", "/v1/savepoints/{id}"),
    ("post", "/v1/savepoints/{id}:export"),
    ("get", "/v1/usage"),
    ("get", "/v1/usage/events"),
    ("get", "/v1/invoices"),
    ("get", "/v1/invoices/{month}"),
    ("get", "/v1/budget"),
    ("put", "/v1/budget"),
    ("delete", "/v1/budget"),
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a problem+json error.
    #[error("{} {}: {}{}", .0.status, .0.code, .0.detail, fields(&.0.errors))]
    Api(Problem),
    #[error("request to {url} failed: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("unexpected answer from {url} (status {status}): {body}")]
    Unexpected {
        url: String,
        status: u16,
        body: String,
    },
}

fn fields(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(|e| match (e.line, e.column) {
            (Some(l), Some(c)) => format!("\n  {} (line {l}, column {c}): {}", e.field, e.message),
            _ => format!("\n  {}: {}", e.field, e.message),
        })
        .collect()
}

pub type Result<T> = std::result::Result<T, Error>;

/// A value with the `ETag` version it was read at.
#[derive(Debug, Clone)]
pub struct Versioned<T> {
    pub value: T,
    pub etag: Option<String>,
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// `base` is the server's URL, e.g. `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            token: None,
        }
    }

    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_owned());
        self
    }

    fn req(&self, method: Method, path: &str) -> (String, RequestBuilder) {
        let url = format!("{}{path}", self.base);
        let mut r = self.http.request(method, &url);
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        (url, r)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: String,
        r: RequestBuilder,
    ) -> Result<Versioned<T>> {
        let res = r.send().await.map_err(|source| Error::Transport {
            url: url.clone(),
            source,
        })?;
        let status = res.status();
        let etag = res
            .headers()
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = res.bytes().await.map_err(|source| Error::Transport {
            url: url.clone(),
            source,
        })?;
        if !status.is_success() {
            return Err(match serde_json::from_slice::<Problem>(&body) {
                Ok(p) => Error::Api(p),
                Err(_) => Error::Unexpected {
                    url,
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body).into(),
                },
            });
        }
        let body = if status == StatusCode::NO_CONTENT || body.is_empty() {
            b"null".as_slice().into()
        } else {
            body
        };
        serde_json::from_slice(&body)
            .map(|value| Versioned { value, etag })
            .map_err(|e| Error::Unexpected {
                url,
                status: status.as_u16(),
                body: format!("{e}: {}", String::from_utf8_lossy(&body)),
            })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Versioned<T>> {
        let (url, r) = self.req(Method::GET, path);
        self.send(url, r).await
    }

    async fn write<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        if_match: Option<&str>,
    ) -> Result<Versioned<T>> {
        let (url, mut r) = self.req(method, path);
        if let Some(b) = body {
            r = r.json(b);
        }
        if let Some(v) = if_match {
            r = r.header("if-match", v);
        }
        self.send(url, r).await
    }

    fn page(path: &str, page: &PageParams) -> String {
        let mut q = Vec::new();
        if let Some(n) = page.page_size {
            q.push(format!("page_size={n}"));
        }
        if let Some(t) = &page.page_token {
            q.push(format!("page_token={t}"));
        }
        if q.is_empty() {
            path.to_owned()
        } else {
            format!("{path}?{}", q.join("&"))
        }
    }

    pub async fn token(&self, key_id: &str, secret: &str) -> Result<TokenResponse> {
        let body = TokenRequest {
            key_id: key_id.into(),
            secret: secret.into(),
        };
        Ok(self
            .write(Method::POST, "/v1/auth/token", Some(&body), None)
            .await?
            .value)
    }

    pub async fn login(&self, email: &str, password: &str) -> Result<TokenResponse> {
        let body = LoginRequest {
            email: email.into(),
            password: password.into(),
        };
        Ok(self
            .write(Method::POST, "/v1/auth/login", Some(&body), None)
            .await?
            .value)
    }

    pub async fn me(&self) -> Result<Me> {
        Ok(self.get("/v1/me").await?.value)
    }

    pub async fn list_compute_pools(&self, page: &PageParams) -> Result<ComputePoolList> {
        Ok(self
            .get(&Self::page("/v1/compute-pools", page))
            .await?
            .value)
    }

    pub async fn create_compute_pool(
        &self,
        req: &CreateComputePool,
    ) -> Result<Versioned<ComputePool>> {
        self.write(Method::POST, "/v1/compute-pools", Some(req), None)
            .await
    }

    pub async fn get_compute_pool(&self, id: &str) -> Result<Versioned<ComputePool>> {
        self.get(&format!("/v1/compute-pools/{id}")).await
    }

    pub async fn update_compute_pool(
        &self,
        id: &str,
        req: &UpdateComputePool,
        if_match: Option<&str>,
    ) -> Result<Versioned<ComputePool>> {
        self.write(
            Method::PATCH,
            &format!("/v1/compute-pools/{id}"),
            Some(req),
            if_match,
        )
        .await
    }

    pub async fn delete_compute_pool(&self, id: &str, if_match: Option<&str>) -> Result<()> {
        self.write::<(), ()>(
            Method::DELETE,
            &format!("/v1/compute-pools/{id}"),
            None,
            if_match,
        )
        .await
        .map(|_| ())
    }

    pub async fn list_applications(&self, page: &PageParams) -> Result<ApplicationList> {
        Ok(self.get(&Self::page("/v1/applications", page)).await?.value)
    }

    pub async fn create_application(
        &self,
        req: &CreateApplication,
    ) -> Result<Versioned<Application>> {
        self.write(Method::POST, "/v1/applications", Some(req), None)
            .await
    }

    pub async fn get_application(&self, id: &str) -> Result<Versioned<Application>> {
        self.get(&format!("/v1/applications/{id}")).await
    }

    pub async fn update_application(
        &self,
        id: &str,
        req: &UpdateApplication,
        if_match: Option<&str>,
    ) -> Result<Versioned<Application>> {
        self.write(
            Method::PATCH,
            &format!("/v1/applications/{id}"),
            Some(req),
            if_match,
        )
        .await
    }

    pub async fn delete_application(&self, id: &str, if_match: Option<&str>) -> Result<Operation> {
        Ok(self
            .write::<(), _>(
                Method::DELETE,
                &format!("/v1/applications/{id}"),
                None,
                if_match,
            )
            .await?
            .value)
    }

    /// `verb` is `start`, `stop` or `rollback`.
    pub async fn application_action(
        &self,
        id: &str,
        verb: &str,
        rollback: Option<&RollbackRequest>,
    ) -> Result<Operation> {
        let path = format!("/v1/applications/{id}:{verb}");
        Ok(match rollback {
            Some(b) => self.write(Method::POST, &path, Some(b), None).await?.value,
            None => {
                self.write::<(), _>(Method::POST, &path, None, None)
                    .await?
                    .value
            }
        })
    }

    pub async fn list_versions(
        &self,
        id: &str,
        page: &PageParams,
    ) -> Result<ApplicationVersionList> {
        Ok(self
            .get(&Self::page(
                &format!("/v1/applications/{id}/versions"),
                page,
            ))
            .await?
            .value)
    }

    pub async fn get_version(&self, id: &str, n: i64) -> Result<ApplicationVersion> {
        Ok(self
            .get(&format!("/v1/applications/{id}/versions/{n}"))
            .await?
            .value)
    }

    /// `:stop` with a body (`force`: no savepoint).
    pub async fn stop_application(&self, id: &str, req: &StopRequest) -> Result<Operation> {
        Ok(self
            .write(
                Method::POST,
                &format!("/v1/applications/{id}:stop"),
                Some(req),
                None,
            )
            .await?
            .value)
    }

    pub async fn list_events(&self, id: &str, page: &PageParams) -> Result<ApplicationEventList> {
        Ok(self
            .get(&Self::page(&format!("/v1/applications/{id}/events"), page))
            .await?
            .value)
    }

    pub async fn get_metrics(&self, id: &str) -> Result<ApplicationMetrics> {
        Ok(self
            .get(&format!("/v1/applications/{id}/metrics"))
            .await?
            .value)
    }

    pub async fn list_api_keys(&self, page: &PageParams) -> Result<ApiKeyList> {
        Ok(self.get(&Self::page("/v1/api-keys", page)).await?.value)
    }

    pub async fn create_api_key(&self, req: &CreateApiKey) -> Result<ApiKeyCreated> {
        Ok(self
            .write(Method::POST, "/v1/api-keys", Some(req), None)
            .await?
            .value)
    }

    pub async fn revoke_api_key(&self, id: &str) -> Result<()> {
        self.write::<(), ()>(Method::DELETE, &format!("/v1/api-keys/{id}"), None, None)
            .await
            .map(|_| ())
    }

    pub async fn get_operation(&self, id: &str) -> Result<Operation> {
        Ok(self.get(&format!("/v1/operations/{id}")).await?.value)
    }

    /// Take (or, with `source_uri`, import) a savepoint; it comes back PENDING.
    pub async fn create_savepoint(
        &self,
        app: &str,
        req: &CreateSavepoint,
    ) -> Result<Versioned<Savepoint>> {
        self.write(
            Method::POST,
            &format!("/v1/applications/{app}/savepoints"),
            Some(req),
            None,
        )
        .await
    }

    pub async fn list_savepoints(&self, app: &str, page: &PageParams) -> Result<SavepointList> {
        Ok(self
            .get(&Self::page(
                &format!("/v1/applications/{app}/savepoints"),
                page,
            ))
            .await?
            .value)
    }

    pub async fn get_savepoint(&self, id: &str) -> Result<Versioned<Savepoint>> {
        self.get(&format!("/v1/savepoints/{id}")).await
    }

    pub async fn update_savepoint(
        &self,
        id: &str,
        req: &UpdateSavepoint,
        if_match: Option<&str>,
    ) -> Result<Versioned<Savepoint>> {
        self.write(
            Method::PATCH,
            &format!("/v1/savepoints/{id}"),
            Some(req),
            if_match,
        )
        .await
    }

    /// Dispose of a savepoint; it comes back DELETING.
    pub async fn delete_savepoint(&self, id: &str, if_match: Option<&str>) -> Result<Savepoint> {
        Ok(self
            .write::<(), _>(
                Method::DELETE,
                &format!("/v1/savepoints/{id}"),
                None,
                if_match,
            )
            .await?
            .value)
    }

    pub async fn export_savepoint(&self, id: &str, req: &ExportSavepoint) -> Result<Operation> {
        Ok(self
            .write(
                Method::POST,
                &format!("/v1/savepoints/{id}:export"),
                Some(req),
                None,
            )
            .await?
            .value)
    }

    pub async fn savepoint_usage(&self, app: &str) -> Result<SavepointUsage> {
        Ok(self
            .get(&format!("/v1/applications/{app}/savepoint-usage"))
            .await?
            .value)
    }

    pub async fn get_savepoint_schedule(&self, app: &str) -> Result<Versioned<SavepointSchedule>> {
        self.get(&format!("/v1/applications/{app}/savepoint-schedule"))
            .await
    }

    pub async fn put_savepoint_schedule(
        &self,
        app: &str,
        req: &PutSavepointSchedule,
        if_match: Option<&str>,
    ) -> Result<Versioned<SavepointSchedule>> {
        self.write(
            Method::PUT,
            &format!("/v1/applications/{app}/savepoint-schedule"),
            Some(req),
            if_match,
        )
        .await
    }

    pub async fn delete_savepoint_schedule(&self, app: &str, if_match: Option<&str>) -> Result<()> {
        self.write::<(), ()>(
            Method::DELETE,
            &format!("/v1/applications/{app}/savepoint-schedule"),
            None,
            if_match,
        )
        .await
        .map(|_| ())
    }

    /// `from` and `to` are RFC 3339; `granularity` is `minute`, `hour` or `day`; `group_by`
    /// is `pool`, `application` or `region`.
    pub async fn usage(
        &self,
        from: &str,
        to: &str,
        granularity: &str,
        group_by: Option<&str>,
    ) -> Result<UsageReport> {
        let mut pairs = vec![("from", from), ("to", to), ("granularity", granularity)];
        if let Some(g) = group_by {
            pairs.push(("group_by", g));
        }
        Ok(self
            .get(&format!("/v1/usage{}", form_query(&pairs)))
            .await?
            .value)
    }

    /// CloudEvents of every run's whole minutes in `[from, to)` (at most a day).
    pub async fn usage_events(&self, from: &str, to: &str) -> Result<Vec<UsageEvent>> {
        let q = form_query(&[("from", from), ("to", to)]);
        Ok(self.get(&format!("/v1/usage/events{q}")).await?.value)
    }

    pub async fn list_invoices(&self, page: &PageParams) -> Result<InvoiceList> {
        Ok(self.get(&Self::page("/v1/invoices", page)).await?.value)
    }

    /// `month` is `YYYY-MM`.
    pub async fn get_invoice(&self, month: &str) -> Result<Invoice> {
        Ok(self.get(&format!("/v1/invoices/{month}")).await?.value)
    }

    pub async fn get_budget(&self) -> Result<Versioned<Budget>> {
        self.get("/v1/budget").await
    }

    pub async fn put_budget(
        &self,
        req: &PutBudget,
        if_match: Option<&str>,
    ) -> Result<Versioned<Budget>> {
        self.write(Method::PUT, "/v1/budget", Some(req), if_match)
            .await
    }

    pub async fn delete_budget(&self, if_match: Option<&str>) -> Result<()> {
        self.write::<(), ()>(Method::DELETE, "/v1/budget", None, if_match)
            .await
            .map(|_| ())
    }
}

/// `?k=v&…` with the values percent-encoded (RFC 3339 offsets carry a `+`).
fn form_query(pairs: &[(&str, &str)]) -> String {
    let mut s = form_urlencoded::Serializer::new(String::from("?"));
    s.extend_pairs(pairs);
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_route_is_in_the_committed_openapi_document() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../../openapi.json"))
            .expect("openapi/openapi.json parses");
        for (method, path) in ROUTES {
            assert!(
                doc["paths"][*path].get(*method).is_some(),
                "{method} {path} is not in openapi/openapi.json: the client drifted from the server"
            );
        }
    }
}

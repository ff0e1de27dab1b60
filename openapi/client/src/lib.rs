//! Typed client of the Sluice API, generated from `openapi/openapi.json`; used by the `sluice`
//! CLI and the API tests, and meant for the Terraform provider.
//!
//! [`Client`] has one method per operation of the document, named by its `operationId`
//! (`src/generated.rs`, written by `codegen.rs`; [`ROUTES`] lists them). Request and response
//! bodies are the types of `sluice-api-types`, the crate the server's handlers (and so the
//! document) are built from; query parameters are generated `…Query` structs. This file is the
//! hand-written part: the connection, authentication, and the mapping of answers: a
//! problem+json error becomes [`Error::Api`] with its status, `code`, `detail` and `errors[]`.
//!
//! Test: `dev/cargo test -p sluice-client` (fails when `src/generated.rs` is not what the
//! generator makes of the committed document).

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sluice_api_types::{FieldError, Problem};

mod generated;

pub use generated::*;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a problem+json error (boxed: it is the large variant).
    #[error("{} {}: {}{}", .0.status, .0.code, .0.detail, fields(&.0.errors))]
    Api(Box<Problem>),
    #[error("request to {url} failed: {source}")]
    Transport { url: String, source: reqwest::Error },
    #[error("unexpected answer from {url} (status {status}): {body}")]
    Unexpected {
        url: String,
        status: u16,
        body: String,
    },
    /// A path parameter that cannot be one path segment.
    #[error("path parameter {name} = {value:?} is not a valid path segment")]
    PathParameter { name: &'static str, value: String },
    #[error("cannot encode the {what} of the request to {url}: {message}")]
    Encode {
        url: String,
        what: &'static str,
        message: String,
    },
}

impl Error {
    /// The problem the server answered with, if it did.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Error::Api(p) => Some(p.as_ref()),
            _ => None,
        }
    }

    /// The HTTP status of the answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api(p) => Some(p.status),
            Error::Unexpected { status, .. } => Some(*status),
            Error::Transport { source, .. } => source.status().map(|s| s.as_u16()),
            Error::Encode { .. } | Error::PathParameter { .. } => None,
        }
    }
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

/// A value with the `ETag` it was read at (the `If-Match` of a later change).
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
        Client::with_http(base, reqwest::Client::new())
    }

    /// A client on an existing connection pool (clones of a `reqwest::Client` share it).
    pub fn with_http(base: &str, http: reqwest::Client) -> Client {
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http,
            token: None,
        }
    }

    /// The bearer token sent with every operation that declares a security requirement
    /// (an access token, or the platform operator's token for `/admin/v1`).
    pub fn with_token(mut self, token: &str) -> Client {
        self.token = Some(token.to_owned());
        self
    }

    fn call(&self, method: Method, path: &str, auth: bool) -> Call<'_> {
        Call {
            client: self,
            method,
            url: format!("{}{path}", self.base),
            auth,
            headers: Vec::new(),
            body: None,
        }
    }
}

/// One request being put together by a generated method.
struct Call<'a> {
    client: &'a Client,
    method: Method,
    url: String,
    auth: bool,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
}

impl Call<'_> {
    fn query<Q: Serialize>(mut self, query: &Q) -> Result<Self> {
        let q = serde_urlencoded::to_string(query).map_err(|e| Error::Encode {
            url: self.url.clone(),
            what: "query",
            message: e.to_string(),
        })?;
        if !q.is_empty() {
            self.url.push('?');
            self.url.push_str(&q);
        }
        Ok(self)
    }

    fn json<B: Serialize>(mut self, body: Option<&B>) -> Result<Self> {
        if let Some(b) = body {
            let bytes = serde_json::to_vec(b).map_err(|e| Error::Encode {
                url: self.url.clone(),
                what: "body",
                message: e.to_string(),
            })?;
            self.body = Some(bytes);
        }
        Ok(self)
    }

    fn header(mut self, name: &'static str, value: Option<&str>) -> Self {
        if let Some(v) = value {
            self.headers.push((name, v.to_owned()));
        }
        self
    }

    async fn send(self) -> Result<Answer> {
        let mut r = self.client.http.request(self.method, &self.url);
        if self.auth
            && let Some(t) = &self.client.token
        {
            r = r.bearer_auth(t);
        }
        for (name, value) in &self.headers {
            r = r.header(*name, value);
        }
        if let Some(b) = self.body {
            r = r.header("content-type", "application/json").body(b);
        }
        let url = self.url;
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
                Ok(p) => Error::Api(Box::new(p)),
                Err(_) => Error::Unexpected {
                    url,
                    status: status.as_u16(),
                    body: String::from_utf8_lossy(&body).into(),
                },
            });
        }
        Ok(Answer {
            url,
            status,
            etag,
            body,
        })
    }
}

/// A success answer, decoded as the operation's response declares.
struct Answer {
    url: String,
    status: StatusCode,
    etag: Option<String>,
    body: bytes::Bytes,
}

impl Answer {
    fn unexpected(&self, why: impl std::fmt::Display) -> Error {
        Error::Unexpected {
            url: self.url.clone(),
            status: self.status.as_u16(),
            body: format!("{why}: {}", String::from_utf8_lossy(&self.body)),
        }
    }

    fn json<T: DeserializeOwned>(self) -> Result<T> {
        serde_json::from_slice(&self.body).map_err(|e| self.unexpected(e))
    }

    fn versioned<T: DeserializeOwned>(self) -> Result<Versioned<T>> {
        let etag = self.etag.clone();
        self.json().map(|value| Versioned { value, etag })
    }

    fn text(self) -> Result<String> {
        String::from_utf8(self.body.to_vec()).map_err(|e| self.unexpected(e))
    }

    fn empty(self) -> Result<()> {
        if self.body.is_empty() {
            Ok(())
        } else {
            Err(self.unexpected("a body where the API declares none"))
        }
    }
}

/// A path parameter as one path segment: everything but RFC 3986 unreserved characters is
/// percent-encoded, and values a URL parser would drop or fold away (empty, `.`, `..`) are
/// refused, so an id typed by a user cannot reach another route.
fn segment(name: &'static str, value: &str) -> Result<String> {
    if matches!(value, "" | "." | "..") {
        return Err(Error::PathParameter {
            name,
            value: value.to_owned(),
        });
    }
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::segment;

    #[test]
    fn path_parameters_stay_one_segment() {
        let seg = |v| segment("id", v).map_err(|e| e.to_string());
        assert_eq!(seg("app_01J9-x.y~z"), Ok("app_01J9-x.y~z".to_owned()));
        assert_eq!(
            seg("../admin v1?x=1#f"),
            Ok("..%2Fadmin%20v1%3Fx%3D1%23f".to_owned())
        );
        assert_eq!(seg("é"), Ok("%C3%A9".to_owned()));
        for bad in ["", ".", ".."] {
            let e = seg(bad).unwrap_err();
            assert!(e.contains("path parameter id"), "{e}");
        }
    }
}

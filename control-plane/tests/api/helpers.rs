//! `spawn_app()` and request helpers shared by the test modules.

use std::sync::Once;

use reqwest::{Method, StatusCode, header::HeaderMap};
use serde_json::{Value, json};
use sluice_control_plane::config::Config;
use sluice_control_plane::server;

pub const ADMIN_TOKEN: &str = "test-platform-operator-token-0123456789";
pub const PASSWORD: &str = "correct horse battery staple";

pub struct TestApp {
    pub base: String,
    pub db_url: String,
    pub http: reqwest::Client,
    shutdown: tokio_util::sync::CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A response: status, headers and the JSON body (`Null` when empty).
pub struct Res {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Res {
    pub fn code(&self) -> &str {
        self.body["code"].as_str().unwrap_or("")
    }

    pub fn etag(&self) -> String {
        self.headers
            .get("etag")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    }

    /// Asserts a problem+json error with this status and code.
    #[track_caller]
    pub fn assert_problem(&self, status: u16, code: &str) {
        assert_eq!(self.status.as_u16(), status, "{}", self.body);
        assert_eq!(self.code(), code, "{}", self.body);
        let ct = self
            .headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert_eq!(ct, "application/problem+json", "{}", self.body);
        assert!(
            self.body["request_id"]
                .as_str()
                .is_some_and(|r| r.len() > 8),
            "{}",
            self.body
        );
        assert!(
            self.body["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{}",
            self.body
        );
    }
}

fn init_logs() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt()
                .with_env_filter("info,sqlx=warn")
                .with_test_writer()
                .try_init();
        }
    });
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_injected(None, tweak, server::Injected::default()).await
}

/// A server with injected dependencies (an engine), on `db_url` (another server's database,
/// for tests of several replicas) or on a fresh database.
pub async fn spawn_app_injected(
    db_url: Option<String>,
    tweak: impl FnOnce(&mut Config),
    injected: server::Injected,
) -> TestApp {
    init_logs();
    let db_url = match db_url {
        Some(u) => u,
        None => sluice_test_support::postgres()
            .fresh_database()
            .await
            .expect("fresh database"),
    };
    let mut cfg =
        Config::load(None, [("SLUICE_DATABASE__URL".to_string(), db_url.clone())]).expect("config");
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.database.max_connections = 4;
    cfg.auth.admin_token = ADMIN_TOKEN.into();
    cfg.limits.requests_per_second = 10_000;
    cfg.limits.burst = 10_000;
    cfg.regions = vec!["local".into(), "eu-west".into()];
    tweak(&mut cfg);
    let running = server::start_with(cfg, injected)
        .await
        .expect("server starts");
    TestApp {
        base: format!("http://{}", running.addr),
        db_url,
        http: reqwest::Client::new(),
        shutdown: running.shutdown,
    }
}

/// An organization with its admin's token.
pub struct Org {
    pub id: String,
    pub email: String,
    pub admin_user: String,
    pub admin: String,
}

impl TestApp {
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Res {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.send(req).await
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Res {
        let r = req.send().await.expect("request reaches the server");
        let status = r.status();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.expect("response body");
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()))
        };
        Res {
            status,
            headers,
            body,
        }
    }

    pub async fn get(&self, path: &str, token: &str) -> Res {
        self.call(Method::GET, path, Some(token), None).await
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> Res {
        self.call(Method::POST, path, Some(token), Some(body)).await
    }

    /// A new organization through the platform operator's API, and its admin logged in.
    pub async fn new_org(&self, name: &str) -> Org {
        let email = format!("{}@example.com", sluice_test_support::unique_name("admin"));
        let r = self
            .send(
                self.http
                    .post(format!("{}/admin/v1/organizations", self.base))
                    .bearer_auth(ADMIN_TOKEN)
                    .json(&json!({ "name": name, "admin": { "email": email, "name": "Admin", "password": PASSWORD } })),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        let id = r.body["organization"]["id"].as_str().unwrap().to_owned();
        let admin_user = r.body["admin"]["id"].as_str().unwrap().to_owned();
        let admin = self.login(&email, PASSWORD).await;
        Org {
            id,
            email,
            admin_user,
            admin,
        }
    }

    pub async fn login(&self, email: &str, password: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/v1/auth/login",
                None,
                Some(json!({ "email": email, "password": password })),
            )
            .await;
        assert_eq!(r.status, 200, "login: {}", r.body);
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    /// (key id, token) of a new service account with `role`, optionally limited to a pool.
    pub async fn token_with(&self, org: &Org, role: &str, pool: Option<&str>) -> (String, String) {
        let sa = self
            .post(
                "/v1/service-accounts",
                &org.admin,
                json!({ "name": sluice_test_support::unique_name("sa"), "role": role }),
            )
            .await;
        assert_eq!(sa.status, 201, "{}", sa.body);
        let key = self
            .post(
                "/v1/api-keys",
                &org.admin,
                json!({ "name": "k", "service_account_id": sa.body["id"], "compute_pool_id": pool }),
            )
            .await;
        assert_eq!(key.status, 201, "{}", key.body);
        let id = key.body["api_key"]["id"].as_str().unwrap().to_owned();
        let token = self
            .exchange(&id, key.body["secret"].as_str().unwrap())
            .await;
        (id, token)
    }

    pub async fn exchange(&self, key_id: &str, secret: &str) -> String {
        let r = self
            .call(
                Method::POST,
                "/v1/auth/token",
                None,
                Some(json!({ "key_id": key_id, "secret": secret })),
            )
            .await;
        assert_eq!(r.status, 200, "token exchange: {}", r.body);
        r.body["access_token"].as_str().unwrap().to_owned()
    }

    pub async fn create_pool(&self, token: &str, name: &str, max_kpu: u32) -> Value {
        let r = self
            .post(
                "/v1/compute-pools",
                token,
                json!({ "name": name, "region": "local", "max_kpu": max_kpu }),
            )
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body
    }

    pub async fn create_app(&self, token: &str, pool: &str, name: &str) -> Value {
        let r = self
            .post("/v1/applications", token, app_body(pool, name))
            .await;
        assert_eq!(r.status, 201, "{}", r.body);
        r.body
    }

    /// A direct connection to the test's database (for checks behind the API's back).
    pub async fn db(&self) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .connect(&self.db_url)
            .await
            .expect("connect to the test database")
    }
}

pub const SQL: &str = "CREATE TABLE clicks (\n  user_id BIGINT,\n  url STRING,\n  ts TIMESTAMP(3),\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH ('connector' = 'kafka', 'topic' = 'clicks', 'properties.bootstrap.servers' = 'kafka:9092', 'format' = 'json');\nCREATE TABLE counts (user_id BIGINT, n BIGINT, PRIMARY KEY (user_id) NOT ENFORCED) WITH ('connector' = 'upsert-kafka', 'topic' = 'counts', 'properties.bootstrap.servers' = 'kafka:9092', 'key.format' = 'json', 'value.format' = 'json');\nINSERT INTO counts SELECT user_id, COUNT(*) FROM clicks GROUP BY user_id;";

pub fn app_body(pool: &str, name: &str) -> Value {
    json!({ "name": name, "compute_pool_id": pool, "sql": SQL, "parallelism": 2 })
}

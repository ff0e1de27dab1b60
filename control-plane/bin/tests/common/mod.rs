//! What the binary's real-process tests share: start `sluice server` on a free port,
//! bootstrap an organization with `sluice admin bootstrap`, exchange its key for a token,
//! and call the API.
#![allow(
    dead_code,
    reason = "each test crate that includes this module uses a part of it"
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

/// How long a server may take to answer `/readyz`, or a failpoint to fire.
const T: Duration = Duration::from_secs(90);

/// The `sluice-engine` binary beside the `sluice` binary under test.
pub fn engine_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_sluice")).with_file_name("sluice-engine");
    assert!(
        bin.exists(),
        "{} is missing: build sluice-engine first",
        bin.display()
    );
    bin
}

pub struct Server {
    /// Killed when dropped.
    pub child: tokio::process::Child,
    pub base: String,
    pub pid: u32,
}

impl Server {
    /// SIGKILL, as a crashed host would.
    pub fn kill(&self) {
        sluice_test_support::process::send_signal(self.pid, libc::SIGKILL);
    }

    /// Waits for an armed failpoint to abort the process.
    pub async fn crashed(mut self) {
        let st = tokio::time::timeout(T, self.child.wait())
            .await
            .expect("the failpoint fired")
            .unwrap();
        assert!(!st.success(), "{st}");
    }
}

#[derive(Default)]
pub struct ServerOpts<'a> {
    /// `SLUICE_DEV_FAILPOINTS`: where the process aborts itself.
    pub failpoint: Option<&'a str>,
    /// More `SLUICE_*` settings.
    pub env: &'a [(&'a str, &'a str)],
    /// Where its stderr goes; else nowhere unless `TEST_LOG` is set.
    pub log: Option<&'a Path>,
}

/// `sluice server` on the database `url` with data directory `data`, once it is ready.
pub async fn start_server(url: &str, data: &Path, opts: ServerOpts<'_>) -> Server {
    let port = sluice_test_support::free_port().unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
    cmd.arg("server")
        .env("SLUICE_DATABASE__URL", url)
        .env("SLUICE_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLUICE_DATA_DIR", data)
        .env("SLUICE_ENGINE__BINARY", engine_binary())
        .env("SLUICE_RECONCILER__INTERVAL_MS", "100")
        .env("SLUICE_RECONCILER__BACKOFF_INITIAL_MS", "200")
        .env("SLUICE_DEV_FAILPOINTS", opts.failpoint.unwrap_or(""))
        .envs(opts.env.iter().copied())
        .kill_on_drop(true);
    match opts.log {
        Some(log) => {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::fs::File::create(log).unwrap());
        }
        None if std::env::var_os("TEST_LOG").is_none() => {
            cmd.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
        }
        None => {}
    }
    let child = cmd.spawn().unwrap();
    let pid = child.id().unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    sluice_test_support::wait_for("the server", T, || async {
        http.get(format!("{base}/readyz"))
            .send()
            .await
            .ok()
            .filter(|r| r.status() == 200)
    })
    .await
    .unwrap();
    Server { child, base, pid }
}

/// An organization made by `sluice admin bootstrap`: its admin API key (id, secret).
pub fn bootstrap(url: &str, data: &Path, org: &str) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "admin",
            "bootstrap",
            "--org",
            org,
            "--email",
            &format!("a@{org}.test"),
        ])
        .env("SLUICE_DATABASE__URL", url)
        .env("SLUICE_DATA_DIR", data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap()
            .trim()
            .to_owned()
    };
    (field("api key id:"), field("api secret:"))
}

/// An access token for an API key.
pub async fn token(base: &str, (key_id, secret): &(String, String)) -> String {
    call(
        base,
        "",
        reqwest::Method::POST,
        "/v1/auth/token",
        json!({ "key_id": key_id, "secret": secret }),
    )
    .await["access_token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// A successful API call's JSON body (`Null` when it has none); any other status fails the
/// test. An empty `token` sends no credentials.
pub async fn call(
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: impl Into<Option<Value>>,
) -> Value {
    let mut r = reqwest::Client::new().request(method, format!("{base}{path}"));
    if !token.is_empty() {
        r = r.bearer_auth(token);
    }
    if let Some(b) = body.into() {
        r = r.json(&b);
    }
    let r = r.send().await.unwrap();
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    assert!(status.is_success(), "{path}: {status} {v}");
    v
}

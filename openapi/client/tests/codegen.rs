//! The client is what the generator makes of the committed OpenAPI document, and it covers
//! every operation of that document.
//!
//! `openapi/openapi.json` is itself checked against the server's handlers by the API tests, so
//! a new route cannot escape the client: it fails the document's drift test, then this one.

#[path = "../codegen.rs"]
mod codegen;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

fn crate_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn document() -> Value {
    let path = crate_dir().join("../openapi.json");
    let text =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// `source` as `cargo fmt` leaves it, so the committed file passes `cargo fmt --check`.
fn rustfmt(source: &str) -> String {
    let rustfmt = std::env::var_os("RUSTFMT").unwrap_or_else(|| "rustfmt".into());
    let mut child = Command::new(&rustfmt)
        .args(["--edition", "2024", "--emit", "stdout"])
        .current_dir(crate_dir())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", Path::new(&rustfmt).display()));
    child
        .stdin
        .take()
        .expect("rustfmt stdin")
        .write_all(source.as_bytes())
        .expect("write to rustfmt");
    let out = child.wait_with_output().expect("rustfmt finishes");
    assert!(
        out.status.success(),
        "rustfmt rejected the generated client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("rustfmt writes UTF-8")
}

#[test]
fn committed_client_is_generated_from_the_committed_document() {
    let generated = rustfmt(&codegen::generate(&document()).unwrap_or_else(|e| panic!("{e}")));
    let path = crate_dir().join("src/generated.rs");
    if std::env::var_os("SLUICE_WRITE_CLIENT").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/client/src/generated.rs is out of date with openapi/openapi.json; regenerate it with\n  \
         SLUICE_WRITE_CLIENT=1 dev/cargo test -p sluice-client --test codegen\n\
         and commit the result"
    );
}

#[test]
fn every_operation_of_the_document_has_a_client_method() {
    let doc = document();
    let mut in_document = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            if method == "parameters" {
                continue;
            }
            let id = op["operationId"]
                .as_str()
                .unwrap_or_else(|| panic!("{method} {path} has no operationId"));
            in_document.insert((method.to_uppercase(), path.clone(), id.to_owned()));
        }
    }
    let in_client: BTreeSet<(String, String, String)> = sluice_client::ROUTES
        .iter()
        .map(|r| {
            (
                r.method.to_owned(),
                r.path.to_owned(),
                r.operation_id.to_owned(),
            )
        })
        .collect();
    let missing: Vec<_> = in_document.difference(&in_client).collect();
    let stale: Vec<_> = in_client.difference(&in_document).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "operations without a client method: {missing:?}; client methods without an operation: {stale:?}"
    );
    assert!(in_client.len() > 50, "{} operations", in_client.len());
}

/// The generator refuses what it cannot express instead of leaving an operation out.
#[test]
fn the_generator_names_what_it_cannot_handle() {
    let mut doc = document();
    let pools = doc["paths"]["/v1/compute-pools"].clone();
    doc["paths"]["/v1/pools-again"] = pools;
    let e = codegen::generate(&doc).unwrap_err().to_string();
    assert!(
        e.contains("GET /v1/") && e.contains("list_compute_pools") && e.contains("unique"),
        "{e}"
    );

    let mut doc = document();
    doc["paths"]["/v1/me"]["get"]
        .as_object_mut()
        .expect("GET /v1/me")
        .remove("operationId");
    let e = codegen::generate(&doc).unwrap_err().to_string();
    assert!(
        e.contains("GET /v1/me:") && e.contains("operationId"),
        "{e}"
    );

    let mut doc = document();
    doc["paths"]["/v1/me"]["get"]["responses"]["200"]["content"] =
        serde_json::json!({ "application/xml": { "schema": { "type": "string" } } });
    let e = codegen::generate(&doc).unwrap_err().to_string();
    assert!(
        e.contains("GET /v1/me responses.200:") && e.contains("application/xml"),
        "{e}"
    );

    let mut doc = document();
    doc["paths"]["/v1/usage.csv"]["get"]["operationId"] = "get_usage_text".into();
    let e = codegen::generate(&doc).unwrap_err().to_string();
    assert!(
        e.contains("GET /v1/usage:") && e.contains("get_usage_text"),
        "{e}"
    );

    let mut doc = document();
    doc["paths"]["/v1/compute-pools/{id}"]["get"]["parameters"][0]["name"] = "pool".into();
    let e = codegen::generate(&doc).unwrap_err().to_string();
    assert!(
        e.contains("GET /v1/compute-pools/{id}:") && e.contains("placeholders"),
        "{e}"
    );
}

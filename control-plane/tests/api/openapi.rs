//! The committed OpenAPI document matches the code, every `$ref` resolves, and
//! the server serves the document and the docs UI.

use std::path::PathBuf;

use reqwest::Method;
use serde_json::Value;

use crate::helpers::spawn_app;

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../openapi/openapi.json")
}

#[test]
fn committed_openapi_matches_the_code() {
    let generated = sluice_control_plane::http::openapi()
        .to_pretty_json()
        .unwrap()
        + "\n";
    let path = committed_path();
    if std::env::var_os("SLUICE_WRITE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "openapi/openapi.json is out of date with the handlers; regenerate it with\n  \
         SLUICE_WRITE_OPENAPI=1 dev/cargo test -p sluice-control-plane --test api openapi\n\
         (or `sluice openapi > openapi/openapi.json`), then the typed client with\n  \
         SLUICE_WRITE_CLIENT=1 dev/cargo test -p sluice-client --test codegen\n\
         and commit the results"
    );
}

fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    if let Some(s) = x.as_str() {
                        out.push(s);
                    }
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn every_ref_resolves_and_the_document_is_3_1() {
    let doc = serde_json::to_value(sluice_control_plane::http::openapi()).unwrap();
    assert!(
        doc["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        doc["openapi"]
    );
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(all.len() > 20, "{} refs", all.len());
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("external $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    // Every /v1 route except the token endpoints declares bearer auth.
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (_, op) in item.as_object().unwrap() {
            let bearer = op["security"][0].get("bearer").is_some();
            let public =
                !path.starts_with("/v1/") || path.starts_with("/v1/auth/") || path == "/v1/signup";
            assert_eq!(bearer, !public, "{path}");
        }
    }
}

#[tokio::test]
async fn the_server_serves_the_document_and_the_docs_ui() {
    let app = spawn_app().await;
    let doc = app.call(Method::GET, "/openapi.json", None, None).await;
    assert_eq!(doc.status, 200);
    assert_eq!(
        doc.body,
        serde_json::to_value(sluice_control_plane::http::openapi()).unwrap()
    );
    let ui = app.send(app.http.get(format!("{}/docs/", app.base))).await;
    assert_eq!(ui.status, 200);
    let html = ui.body.as_str().unwrap_or_default();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(
        !html.contains("cdn") && !html.contains("unpkg"),
        "the docs UI must not load from a CDN"
    );
}

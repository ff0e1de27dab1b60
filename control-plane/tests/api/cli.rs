//! The `sluice` CLI through the typed client against the real server.

use serde_json::{Value, json};
use sluice_control_plane::cli::{
    self, ApiKeysCmd, AppsCmd, ClientCmd, OperationsCmd, Opts, Output, PoolsCmd, VersionsCmd,
};

use crate::helpers::{app_body, spawn_app};

async fn run(opts: &Opts, cmd: ClientCmd) -> String {
    let mut out = Vec::new();
    cli::run(opts, cmd, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn login_pools_apps_versions_keys_operations_as_tables_and_json() {
    let app = spawn_app().await;
    let org = app.new_org("cli").await;
    let key = app
        .post("/v1/api-keys", &org.admin, json!({ "name": "cli" }))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let table = Opts {
        url: Some(app.base.clone()),
        token: None,
        output: Output::Table,
        session: Some(dir.path().join("session.json")),
    };
    let json_out = Opts {
        output: Output::Json,
        url: None,
        ..table.clone()
    };

    let out = run(
        &table,
        ClientCmd::Login {
            key_id: key.body["api_key"]["id"].as_str().map(str::to_owned),
            secret: key.body["secret"].as_str().map(str::to_owned),
            email: None,
            password: None,
        },
    )
    .await;
    assert!(out.contains("org_admin") && out.contains("cli"), "{out}");

    // From here on the session file alone carries URL and token.
    let out = run(
        &json_out,
        ClientCmd::Pools(PoolsCmd::Create {
            name: "main".into(),
            region: "local".into(),
            max_kpu: 4,
            admission: cli::AdmissionArg::Queue,
        }),
    )
    .await;
    let pool: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(pool["admission"], "queue");
    let pool_id = pool["id"].as_str().unwrap().to_owned();
    let out = run(
        &Opts {
            url: None,
            ..table.clone()
        },
        ClientCmd::Pools(PoolsCmd::List),
    )
    .await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("MAX_KPU"),
        "{out}"
    );
    assert!(
        lines[1].contains(&pool_id) && lines[1].contains("main"),
        "{out}"
    );

    let spec = dir.path().join("app.json");
    std::fs::write(&spec, app_body(&pool_id, "from-cli").to_string()).unwrap();
    let created: Value = serde_json::from_str(
        &run(&json_out, ClientCmd::Apps(AppsCmd::Create { file: spec })).await,
    )
    .unwrap();
    let app_id = created["id"].as_str().unwrap().to_owned();
    let op: Value = serde_json::from_str(
        &run(
            &json_out,
            ClientCmd::Apps(AppsCmd::Start { id: app_id.clone() }),
        )
        .await,
    )
    .unwrap();
    assert_eq!(op["kind"], "start");
    let got = run(
        &json_out,
        ClientCmd::Operations(OperationsCmd::Get {
            id: op["id"].as_str().unwrap().into(),
        }),
    )
    .await;
    assert_eq!(serde_json::from_str::<Value>(&got).unwrap(), op);
    let versions = run(
        &Opts {
            url: None,
            ..table.clone()
        },
        ClientCmd::Versions(VersionsCmd::List {
            app: app_id.clone(),
        }),
    )
    .await;
    assert_eq!(
        versions.lines().count(),
        3,
        "header + 2 versions: {versions}"
    );
    assert!(versions.contains("desired_state"), "{versions}");
    let keys = run(
        &Opts {
            url: None,
            ..table.clone()
        },
        ClientCmd::ApiKeys(ApiKeysCmd::List),
    )
    .await;
    assert!(keys.contains("cli"), "{keys}");

    // API errors come back with their problem: status, code and the field.
    let err = cli::run(
        &json_out,
        ClientCmd::Pools(PoolsCmd::Create {
            name: "x".into(),
            region: "mars".into(),
            max_kpu: 1,
            admission: cli::AdmissionArg::Reject,
        }),
        &mut Vec::new(),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(err.contains("422") && err.contains("region"), "{err}");
}

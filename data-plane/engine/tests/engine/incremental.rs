//! Incremental RocksDB checkpoints in the cluster: a TaskManager SIGKILL and a JobManager of
//! the next generation both restart from them, the output stays exact, and the shared files
//! every kept checkpoint lists are in the store.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use sluice_test_support::process::{send_signal, stop_owned};
use sluice_test_support::wait_for;

use crate::cluster::{JmOpts, assert_exact, job_id, libc_sigkill, start_jm, start_tm, write_job};

const T: Duration = Duration::from_secs(90);

/// `(generation dir, metadata JSON)` of every committed checkpoint under the job root.
fn committed(root: &Path) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for generation in std::fs::read_dir(root).expect("job root") {
        let generation = generation.expect("entry").path();
        let Some(g) = generation.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !g.starts_with("gen-") {
            continue;
        }
        for chk in std::fs::read_dir(&generation).expect("generation dir") {
            let meta = chk.expect("entry").path().join("_metadata");
            let Ok(bytes) = std::fs::read(&meta) else {
                continue;
            };
            // A header line, then the JSON body.
            let body = bytes
                .iter()
                .position(|b| *b == b'\n')
                .map(|i| &bytes[i + 1..])
                .unwrap_or_else(|| panic!("{} has no header line", meta.display()));
            let v: Value =
                serde_json::from_slice(body).unwrap_or_else(|e| panic!("{}: {e}", meta.display()));
            out.push((g.to_string(), v));
        }
    }
    out
}

fn files_under(dir: &Path, out: &mut BTreeSet<String>, root: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries {
        let p = e.expect("entry").path();
        if p.is_dir() {
            files_under(&p, out, root);
        } else if let Ok(rel) = p.strip_prefix(root) {
            out.insert(rel.to_string_lossy().to_string());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_rocksdb_checkpoints_survive_a_taskmanager_kill_and_a_new_generation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = 24_000;
    let out = dir.path().join("out");
    // About 6 s of input: checkpoints before each kill and rows after it.
    let job = write_job(dir.path(), rows, 4000, &out);
    let id = job_id();
    let root = dir.path().join("job");
    let ckpt = format!("file://{}", root.display());
    let opts = |generation, rpc| JmOpts {
        generation,
        restore: "latest",
        rpc_addr: rpc,
        extra: &["--state-backend", "rocksdb"],
        ..JmOpts::default()
    };
    let jm1 = start_jm(dir.path(), &job, &id, &ckpt, opts(1, None)).await;
    start_tm(&jm1.rpc, "a", 1, dir.path(), None);
    let b = start_tm(&jm1.rpc, "b", 1, dir.path(), None);
    jm1.wait_state(&id, "RUNNING").await;
    jm1.wait_checkpoints(&id, 2).await;
    // An upload no completed checkpoint lists (as an aborted checkpoint leaves): the
    // JobManager deletes it when it deploys the next attempt.
    let orphan = root.join("shared/op-x/0-of-1/g1-0rphan-000007.sst");
    std::fs::create_dir_all(orphan.parent().expect("parent")).expect("mkdir");
    std::fs::write(&orphan, b"not listed").expect("orphan");
    send_signal(b, libc_sigkill());
    wait_for("a restart", T, || async {
        (jm1.metric(&id, "numRestarts").await >= 1).then_some(())
    })
    .await
    .expect("restart after the kill");
    start_tm(&jm1.rpc, "c", 1, dir.path(), None);
    jm1.wait_state(&id, "RUNNING").await;
    wait_for("the orphan's deletion", T, || async {
        (!orphan.exists()).then_some(())
    })
    .await
    .expect("the orphaned shared file is still there after the restart");
    let done = jm1.metric(&id, "numberOfCompletedCheckpoints").await;
    jm1.wait_checkpoints(&id, done + 2).await;
    assert!(
        jm1.metric(&id, "numRecordsIn").await < rows as i64,
        "the job ended before the JobManager kill"
    );

    send_signal(jm1.pid, libc_sigkill());
    let rpc = jm1.rpc.clone();
    let jm2 = start_jm(dir.path(), &job, &id, &ckpt, opts(2, Some(&rpc))).await;
    jm2.wait_state(&id, "FINISHED").await;
    assert_exact(&out, rows);

    let c = jm2.get(&format!("/jobs/{id}/checkpoints")).await;
    assert_eq!(c["counts"]["restored"], 1, "{c}");
    let history = c["history"].as_array().expect("history");
    assert!(
        history.iter().any(|r| r["status"] == "COMPLETED"
            && matches!(
                (r["checkpointed_size"].as_u64(), r["state_size"].as_u64()),
                (Some(up), Some(all)) if up < all
            )),
        "no checkpoint uploaded less than its state: {c}"
    );

    // Every shared file a kept checkpoint lists is there (retention kept 3, across generations).
    let kept = committed(&root);
    assert!(!kept.is_empty() && kept.len() <= 3, "{} kept", kept.len());
    assert!(kept.iter().any(|(g, _)| g == "gen-0000000002"));
    let mut present = BTreeSet::new();
    files_under(&root.join("shared"), &mut present, &root);
    let listed: BTreeSet<String> = kept
        .iter()
        .flat_map(|(_, m)| m["shared_files"].as_array().cloned().unwrap_or_default())
        .map(|f| f["path"].as_str().expect("path").to_string())
        .collect();
    assert!(!listed.is_empty(), "no shared files: not incremental");
    let missing: Vec<&String> = listed.difference(&present).collect();
    assert!(missing.is_empty(), "missing shared files {missing:?}");
    stop_owned(jm2.pid);
}

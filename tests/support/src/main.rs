//! `sluice-test-services [--env-file PATH] [--only pg,kafka,s3] [--until-stdin-closes]`
//!
//! Starts the real services once for a whole test run (dev/test uses it), writes
//! their addresses as `export NAME=value` lines to the env file, and stops them
//! on SIGTERM or SIGINT (or when stdin closes, with `--until-stdin-closes`). Services already named by
//! `DATABASE_URL` / `KAFKA_BOOTSTRAP_SERVERS` / `S3_ENDPOINT` are passed through.

use std::io::Write;

use anyhow::{Context, Result, bail};

fn main() -> Result<()> {
    let mut env_file = None;
    let mut only: Vec<String> = vec!["pg".into(), "kafka".into(), "s3".into()];
    let mut watch_stdin = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--env-file" => env_file = Some(args.next().context("--env-file needs a path")?),
            "--only" => {
                only = args
                    .next()
                    .context("--only needs a list")?
                    .split(',')
                    .map(str::to_string)
                    .collect()
            }
            "--until-stdin-closes" => watch_stdin = true,
            "-h" | "--help" => {
                println!(
                    "usage: sluice-test-services [--env-file PATH] [--only pg,kafka,s3] [--until-stdin-closes]"
                );
                return Ok(());
            }
            other => bail!("unknown argument '{other}' (see --help)"),
        }
    }

    let mut lines = Vec::new();
    for s in &only {
        match s.as_str() {
            "pg" => {
                let pg = sluice_test_support::postgres();
                lines.push(format!("export DATABASE_URL='{}'", pg.admin_url));
            }
            "kafka" => {
                let k = sluice_test_support::kafka();
                lines.push(format!(
                    "export KAFKA_BOOTSTRAP_SERVERS='{}'",
                    k.bootstrap_servers
                ));
            }
            "s3" => {
                let s = sluice_test_support::s3();
                lines.push(format!("export S3_ENDPOINT='{}'", s.endpoint));
                lines.push(format!("export AWS_ACCESS_KEY_ID='{}'", s.access_key_id));
                lines.push(format!(
                    "export AWS_SECRET_ACCESS_KEY='{}'",
                    s.secret_access_key
                ));
                lines.push(format!("export AWS_REGION='{}'", s.region));
            }
            other => bail!("unknown service '{other}' in --only (pg, kafka, s3)"),
        }
    }
    let text = lines.join("\n") + "\n";
    match env_file {
        Some(path) => {
            // Written to a temp name and renamed, so a reader never sees half a file.
            let tmp = format!("{path}.tmp");
            std::fs::write(&tmp, &text).with_context(|| format!("write {tmp}"))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("rename {tmp} to {path}"))?;
        }
        None => {
            print!("{text}");
            std::io::stdout().flush()?;
        }
    }
    eprintln!("test services ready; stop with SIGTERM or Ctrl-C");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        use tokio::io::AsyncReadExt;
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut stdin = tokio::io::stdin();
        let mut buf = [0u8; 64];
        loop {
            tokio::select! {
                _ = term.recv() => break,
                _ = int.recv() => break,
                n = stdin.read(&mut buf), if watch_stdin => if matches!(n, Ok(0) | Err(_)) { break },
            }
        }
        anyhow::Ok(())
    })?;
    sluice_test_support::process::cleanup_all();
    Ok(())
}

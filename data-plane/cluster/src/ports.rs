//! The ports file: how a launcher learns the ports the kernel chose for `127.0.0.1:0`.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Context, Result};

/// Writes `{"rest":…,"rpc":…,"pid":…}` atomically (temp file in the same directory, fsync,
/// rename), so a reader never sees a partial file.
pub fn write_ports_file(path: &Path, rest: SocketAddr, rpc: SocketAddr) -> Result<()> {
    let body = serde_json::json!({
        "rest": rest.to_string(),
        "rpc": rpc.to_string(),
        "pid": std::process::id(),
    });
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        use std::io::Write;
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(body.to_string().as_bytes())
            .and_then(|()| f.sync_all())
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_file_is_complete_json() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("ports.json");
        let rest: SocketAddr = "127.0.0.1:8081".parse().expect("addr");
        let rpc: SocketAddr = "127.0.0.1:6123".parse().expect("addr");
        write_ports_file(&p, rest, rpc).expect("write");
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("json");
        assert_eq!(v["rest"], "127.0.0.1:8081");
        assert_eq!(v["rpc"], "127.0.0.1:6123");
        assert_eq!(v["pid"], std::process::id());
        assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 1);
    }
}

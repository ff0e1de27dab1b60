//! The metadata file of a checkpoint or savepoint: a one-line header with format version,
//! body length and CRC-32 of the body, then the body as JSON.
//!
//! ```text
//! sluice-snapshot v1 len=1234 crc32=9a3c21f0
//! {"job_id":"…","generation":3,"checkpoint_id":17,…}
//! ```
//!
//! The length and checksum detect a torn or partial metadata file; the version lets a newer
//! reader refuse a format it does not know instead of misreading it.

use serde::{Deserialize, Serialize};

use super::CheckpointError;

/// The format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

const MAGIC: &str = "sluice-snapshot";

/// Checkpoints are the engine's own recovery points; savepoints are user-owned, self-contained
/// and never share files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotKind {
    Checkpoint,
    Savepoint,
}

/// A data file a snapshot needs, with what is needed to detect a torn or partial copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    /// For [`SnapshotMetadata::files`]: relative to the snapshot's directory. For
    /// [`SnapshotMetadata::shared_files`]: relative to the job root (under `shared/`).
    pub path: String,
    pub size_bytes: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub crc32: u32,
}

/// What a completed checkpoint or savepoint consists of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotMetadata {
    pub job_id: String,
    /// Run generation of the cluster that took it.
    pub generation: u64,
    /// Checkpoint id (for a savepoint: the checkpoint id it was taken as).
    pub checkpoint_id: u64,
    pub kind: SnapshotKind,
    pub created_at_ms: u64,
    /// Files owned by this snapshot alone, deleted with it.
    pub files: Vec<FileRef>,
    /// Files shared with other checkpoints (incremental RocksDB SSTs), under `shared/`.
    /// Retention deletes one when no kept checkpoint lists it (see README).
    #[serde(default)]
    pub shared_files: Vec<FileRef>,
    /// The engine's own description of the snapshot (operator state handles, source
    /// positions, sink commit markers); opaque to storage.
    #[serde(default)]
    pub engine_state: serde_json::Value,
}

impl SnapshotMetadata {
    /// Total bytes of the snapshot's own and shared files.
    pub fn size_bytes(&self) -> u64 {
        self.files
            .iter()
            .chain(&self.shared_files)
            .map(|f| f.size_bytes)
            .sum()
    }
}

/// Serializes metadata with its header.
pub fn encode(meta: &SnapshotMetadata) -> Result<Vec<u8>, CheckpointError> {
    let body = serde_json::to_vec(meta).map_err(|e| {
        CheckpointError::Invalid(format!(
            "metadata of checkpoint {} cannot be serialized: {e}",
            meta.checkpoint_id
        ))
    })?;
    let mut out = format!(
        "{MAGIC} v{FORMAT_VERSION} len={} crc32={:08x}\n",
        body.len(),
        crc32fast::hash(&body)
    )
    .into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

/// Parses and checks a metadata file read from `key` (named in errors).
pub fn decode(key: &str, data: &[u8]) -> Result<SnapshotMetadata, CheckpointError> {
    let corrupt = |reason: String| CheckpointError::CorruptMetadata {
        key: key.to_string(),
        reason,
    };
    let nl = data
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt(format!("no header line in {} bytes", data.len())))?;
    let header =
        std::str::from_utf8(&data[..nl]).map_err(|_| corrupt("the header is not UTF-8".into()))?;
    let body = &data[nl + 1..];
    let mut fields = header.split(' ');
    if fields.next() != Some(MAGIC) {
        return Err(corrupt(format!(
            "the header {header:?} does not start with {MAGIC:?}"
        )));
    }
    let version: u32 = fields
        .next()
        .and_then(|v| v.strip_prefix('v'))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(format!("no version in header {header:?}")))?;
    if version != FORMAT_VERSION {
        return Err(corrupt(format!(
            "format version {version} is not supported by this build (it reads v{FORMAT_VERSION})"
        )));
    }
    let len: usize = fields
        .next()
        .and_then(|v| v.strip_prefix("len="))
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| corrupt(format!("no len= in header {header:?}")))?;
    let crc = fields
        .next()
        .and_then(|v| v.strip_prefix("crc32="))
        .and_then(|v| u32::from_str_radix(v, 16).ok())
        .ok_or_else(|| corrupt(format!("no crc32= in header {header:?}")))?;
    if body.len() != len {
        return Err(corrupt(format!(
            "torn: the header promises {len} body bytes, the file has {}",
            body.len()
        )));
    }
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(corrupt(format!(
            "checksum mismatch: header {crc:08x}, body {actual:08x}"
        )));
    }
    serde_json::from_slice(body).map_err(|e| corrupt(format!("bad JSON body: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SnapshotMetadata {
        SnapshotMetadata {
            job_id: "job-1".into(),
            generation: 3,
            checkpoint_id: 17,
            kind: SnapshotKind::Checkpoint,
            created_at_ms: 1_700_000_000_000,
            files: vec![FileRef {
                path: "op-1/kg-0-63.state".into(),
                size_bytes: 10,
                crc32: 7,
            }],
            shared_files: vec![FileRef {
                path: "shared/000123.sst".into(),
                size_bytes: 4096,
                crc32: 9,
            }],
            engine_state: serde_json::json!({"sources": {"kafka-0": 42}}),
        }
    }

    #[test]
    fn round_trips() {
        let m = sample();
        let bytes = encode(&m).expect("encode");
        assert_eq!(decode("k", &bytes).expect("decode"), m);
        assert_eq!(m.size_bytes(), 4106);
    }

    #[test]
    fn detects_truncation_bit_flips_and_unknown_versions() {
        let bytes = encode(&sample()).expect("encode");
        for cut in [0, 5, bytes.len() / 2, bytes.len() - 1] {
            assert!(
                matches!(
                    decode("k", &bytes[..cut]),
                    Err(CheckpointError::CorruptMetadata { .. })
                ),
                "truncated at {cut} accepted"
            );
        }
        let mut flipped = bytes.clone();
        let last = flipped.len() - 2;
        flipped[last] ^= 0x01;
        let err = decode("k", &flipped).expect_err("bit flip accepted");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");

        let v2 = String::from_utf8(bytes)
            .expect("utf8")
            .replacen(" v1 ", " v2 ", 1);
        let err = decode("chk/_metadata", v2.as_bytes()).expect_err("v2 accepted");
        assert!(
            err.to_string().contains("version 2 is not supported"),
            "{err}"
        );
        assert!(err.to_string().contains("chk/_metadata"), "{err}");
    }
}

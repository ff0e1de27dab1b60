//! The layout of RocksDB keys. Every key of every state's column family is
//!
//! ```text
//! key_group (u16, big-endian) ‖ varint(len(key)) ‖ key ‖ varint(len(namespace)) ‖ namespace [‖ user_key]
//! ```
//!
//! The key group first makes each key group one contiguous run (snapshot by key group is a seek and a
//! scan, and a future rescale of a native checkpoint can `delete_range` foreign key groups). The two
//! length prefixes make `(key, namespace)` prefix-free, so one map's entries (`user_key` appended) are a
//! contiguous run that no other `(key, namespace)` can interleave.

use sluice_state::StateError;
use sluice_state::encoding::{put_bytes, take_bytes};

/// Writes the `(key_group, key, namespace)` prefix into `buf` (cleared first).
#[inline]
pub fn slot_prefix(buf: &mut Vec<u8>, key_group: u16, key: &[u8], namespace: &[u8]) {
    buf.clear();
    buf.extend_from_slice(&key_group.to_be_bytes());
    put_bytes(buf, key);
    put_bytes(buf, namespace);
}

/// The decoded parts of a stored key.
pub struct Parts<'a> {
    pub key: &'a [u8],
    pub namespace: &'a [u8],
    /// The user key for map state; empty for value and list state.
    pub rest: &'a [u8],
}

/// `state` names the state in errors.
pub fn split<'a>(stored: &'a [u8], state: &str) -> Result<Parts<'a>, StateError> {
    let (_key_group, rest) = stored
        .split_first_chunk::<2>()
        .ok_or_else(|| corrupt(state, "stored key shorter than its key-group prefix"))?;
    let (key, rest) =
        take_bytes(rest, "rocksdb stored key").map_err(|e| corrupt(state, &e.to_string()))?;
    let (namespace, rest) =
        take_bytes(rest, "rocksdb stored key").map_err(|e| corrupt(state, &e.to_string()))?;
    Ok(Parts {
        key,
        namespace,
        rest,
    })
}

fn corrupt(state: &str, detail: &str) -> StateError {
    StateError::Backend {
        backend: "rocksdb",
        state: state.to_owned(),
        operation: "decode stored key",
        source: detail.to_owned().into(),
    }
}

/// The smallest byte string greater than every string that starts with `prefix` (`None` when there is
/// none: `prefix` is all `0xff`).
pub fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut next = prefix.to_vec();
    while let Some(last) = next.pop() {
        if last != 0xff {
            next.push(last + 1);
            return Some(next);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_split_back_and_successors_bound_them() {
        let mut buf = Vec::new();
        slot_prefix(&mut buf, 300, b"user", b"w");
        buf.extend_from_slice(b"uk");
        let p = split(&buf, "s").unwrap();
        assert_eq!(&buf[..2], &300u16.to_be_bytes());
        assert_eq!(
            (p.key, p.namespace, p.rest),
            (&b"user"[..], &b"w"[..], &b"uk"[..])
        );
        assert_eq!(prefix_successor(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_successor(b"\xff"), None);
        assert!(split(b"\x00", "s").is_err());
    }
}

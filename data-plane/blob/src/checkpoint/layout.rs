//! Key names of the checkpoint layout under a job root.
//!
//! ```text
//! {root}/gen-{generation:010}/_generation              claim marker of a run generation
//! {root}/gen-{generation:010}/chk-{id:012}/…           data files of a checkpoint
//! {root}/gen-{generation:010}/chk-{id:012}/_metadata   the commit point, written last
//! {root}/savepoints/{savepoint_id}/…                   self-contained savepoint files
//! {root}/savepoints/{savepoint_id}/_metadata
//! {root}/shared/…                                      files shared between checkpoints
//! ```
//! Zero-padded numbers make the byte order of keys the numeric order, which the fencing check
//! relies on (one listing call finds the first key of any newer generation).

/// Name of the commit-point file of a checkpoint or savepoint.
pub const METADATA_FILE: &str = "_metadata";
/// Name of the marker a cluster writes when it takes over a generation.
pub const GENERATION_MARKER: &str = "_generation";
pub const SAVEPOINTS_DIR: &str = "savepoints";
pub const SHARED_DIR: &str = "shared";

/// Largest generation that fits the 10-digit field.
pub const MAX_GENERATION: u64 = 9_999_999_999;
/// Largest checkpoint id that fits the 12-digit field.
pub const MAX_CHECKPOINT_ID: u64 = 999_999_999_999;

pub fn generation_dir(generation: u64) -> String {
    format!("gen-{generation:010}")
}

pub fn checkpoint_dir(checkpoint_id: u64) -> String {
    format!("chk-{checkpoint_id:012}")
}

/// The generation of a `gen-…` segment.
pub fn parse_generation(segment: &str) -> Option<u64> {
    parse_padded(segment, "gen-", 10)
}

/// The checkpoint id of a `chk-…` segment.
pub fn parse_checkpoint(segment: &str) -> Option<u64> {
    parse_padded(segment, "chk-", 12)
}

fn parse_padded(segment: &str, prefix: &str, digits: usize) -> Option<u64> {
    let n = segment.strip_prefix(prefix)?;
    (n.len() == digits && n.bytes().all(|b| b.is_ascii_digit()))
        .then(|| n.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_sort_numerically() {
        assert_eq!(generation_dir(7), "gen-0000000007");
        assert_eq!(checkpoint_dir(42), "chk-000000000042");
        assert_eq!(
            parse_generation(&generation_dir(MAX_GENERATION)),
            Some(MAX_GENERATION)
        );
        assert_eq!(parse_checkpoint(&checkpoint_dir(42)), Some(42));
        for bad in [
            "gen-7",
            "gen-00000000x7",
            "chk-0000000000042",
            "xgen-0000000007",
        ] {
            assert_eq!(
                parse_generation(bad).or(parse_checkpoint(bad)),
                None,
                "{bad}"
            );
        }
        assert!(generation_dir(9) < generation_dir(10));
        assert!(checkpoint_dir(99) < checkpoint_dir(100));
    }
}

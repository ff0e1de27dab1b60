# Sourced by the dev scripts: where things live.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export SLUICE_DEV_STATE_DIR="${SLUICE_DEV_STATE_DIR:-$root/.state}"
# Outside the clone, so a fresh clone on the same machine reuses compiled dependencies.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# The test-support crate finds tansu and weed under $SLUICE_DEV_STATE_DIR/venv
# (installed by dev/install-deps); SLUICE_DEV_TANSU_BIN / SLUICE_DEV_WEED_BIN override.
cargo_locked() { flock "${SLUICE_DEV_CARGO_LOCK:-/tmp/sluice-cargo.lock}" cargo "$@"; }

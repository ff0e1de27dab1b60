#!/usr/bin/env bash
# The kill campaign of issue 5 beyond CI's size: runs the real-process test
# `kill_campaign` RUNS times with SLUICE_KILLS kills each (default 3 × 50) and
# stops at the first failure, which prints the seed to replay it:
#   SLUICE_KILL_SEED=<seed> SLUICE_KILLS=<n> data-plane/engine/tests/kill-campaign.sh
# Usage: [RUNS=3] [SLUICE_KILLS=50] [TEST_LOG=1] data-plane/engine/tests/kill-campaign.sh
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)"
cd "$root"
runs="${RUNS:-3}"
export SLUICE_KILLS="${SLUICE_KILLS:-50}"
# Build once (under the machine-wide build lock), then run without rebuilding.
dev/cargo test -p sluice-engine --test engine --no-run
for i in $(seq 1 "$runs"); do
  echo "==> kill campaign run $i/$runs ($SLUICE_KILLS kills)"
  dev/cargo test -p sluice-engine --test engine kill_campaign:: -- --nocapture --test-threads=1
done
echo "==> $runs runs of $SLUICE_KILLS kills: every sink exactly once"

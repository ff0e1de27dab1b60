#!/usr/bin/env bash
# bench/savepoint.sh — savepoint of RocksDB keyed state (issue 8's benchmark).
#
# Starts the real cluster processes (one `sluice-engine jobmanager`, one `sluice-engine
# taskmanager`, parallelism 1, --state-backend rocksdb) on a job that builds keyed state:
#
#   datagen (unbounded, throttled to RATE rows/s; k random BIGINT over 1e9 values, so
#   nearly every row is a new key; v a random STRING of VLEN chars)
#     -> SELECT k, MAX(v) ... GROUP BY k -> blackhole (PRIMARY KEY k, upsert)
#
# waits until the job has read enough rows for SIZE_MIB of (key, value) payload, then
# `POST /jobs/{id}/savepoints {"target-directory": "<checkpoint-dir>/savepoints"}` while the
# job keeps running, and polls `GET /jobs/{id}/savepoints/{trigger}` until COMPLETED.
# The target is the job root's own savepoints directory, so the engine writes the
# savepoint in place (no staging copy; see export_savepoint in cluster/jobmanager).
# Printed per target: rows read, size of the savepoint (sum of the files under the
# returned location), time from the POST to COMPLETED (polled every 50 ms), MiB/s.
#
# Targets (TARGETS, default "file s3"):
#   file  checkpoint-dir file://$WORK/ck on local disk
#   s3    checkpoint-dir s3://sluice-bench/ck-<ts> on SeaweedFS: reuses $S3_ENDPOINT if
#         set (with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY/AWS_REGION), else starts
#         `.state/venv/bin/weed mini` on free ports as tests/support does, and stops it.
# Anchors measured on the same machine (ANCHORS=1, default):
#   disk  dd if=/dev/zero bs=16M count=64 oflag=direct (1 GiB sequential write) in $WORK
#   s3    one 1 GiB object PUT to the same SeaweedFS with python3 + boto3 (upload_file,
#         multipart 64 MiB parts, as a client would), timed end to end
#
# Environment: SIZE_MIB (default 1024), RATE rows/s (default 40000), VLEN (default 1000),
# TARGETS, ANCHORS, WORK (default /var/tmp/sluice-spbench), ENGINE (default the debug
# binary /var/tmp/sluice-target/debug/sluice-engine). `uptime` is printed before and after.
# The engine is normally the DEBUG build: our snapshot writer then runs unoptimised
# (RocksDB itself is Debian's optimised librocksdb).
#
#   bench/savepoint.sh                         # 1 GiB, file and s3, with anchors
#   SIZE_MIB=256 TARGETS=file ANCHORS=0 bench/savepoint.sh
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
ENGINE=${ENGINE:-/var/tmp/sluice-target/debug/sluice-engine}
SIZE_MIB=${SIZE_MIB:-1024}
RATE=${RATE:-40000}
VLEN=${VLEN:-1000}
TARGETS=${TARGETS:-file s3}
ANCHORS=${ANCHORS:-1}
WORK=${WORK:-/var/tmp/sluice-spbench}
BUCKET=sluice-bench

rm -rf "$WORK"; mkdir -p "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

now() { date +%s.%N; }
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
log() { echo "[$(date -u +%T)] $*" >&2; }

echo "uptime before: $(uptime)"
echo "engine: $ENGINE ($(file -b "$ENGINE" | grep -o 'with debug_info' || echo stripped)); size ${SIZE_MIB} MiB, VLEN $VLEN, RATE $RATE rows/s"

# ---------------------------------------------------------------- SeaweedFS
start_s3() {
  if [[ -n "${S3_ENDPOINT:-}" ]]; then return; fi
  export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-sluice-test}
  export AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-sluice-test-secret}
  export AWS_REGION=${AWS_REGION:-us-east-1}
  local d="$WORK/weed" p=() i
  mkdir -p "$d/data"
  for i in $(seq 0 9); do p+=("$(free_port)"); done
  (cd "$d" && exec "$ROOT/.state/venv/bin/weed" mini -dir="$d/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3.port="${p[9]}" -s3.port.grpc="${p[0]}" -master.port="${p[1]}" -master.port.grpc="${p[2]}" \
    -volume.port="${p[3]}" -volume.port.grpc="${p[4]}" -filer.port="${p[5]}" -filer.port.grpc="${p[6]}" \
    -admin.port="${p[7]}" -admin.port.grpc="${p[8]}" -filer.localSocket="$d/filer.sock" \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -admin.ui=false -master.telemetry=false \
    -master.volumeSizeLimitMB=64 </dev/null >"$d/weed.log" 2>&1) &
  PIDS+=($!)
  export S3_ENDPOINT="http://127.0.0.1:${p[9]}"
  for i in $(seq 1 600); do
    grep -q "All enabled components are running" "$d/weed.log" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "All enabled components are running" "$d/weed.log" || { tail "$d/weed.log"; exit 1; }
  log "SeaweedFS at $S3_ENDPOINT"
}

s3py() {  # s3py CODE...: python3 with a boto3 client `c` on the SeaweedFS
  python3 - "$@" <<EOF
import os, sys, time, boto3
from botocore.config import Config
c = boto3.client("s3", endpoint_url=os.environ["S3_ENDPOINT"], region_name=os.environ.get("AWS_REGION","us-east-1"),
                 config=Config(s3={"addressing_style": "path"}))
$S3PY
EOF
}

s3_size() {  # s3_size s3://bucket/prefix -> total bytes, object count
  S3PY='
u = sys.argv[1][5:].rstrip("/"); b, _, p = u.partition("/")
n = t = 0
for page in c.get_paginator("list_objects_v2").paginate(Bucket=b, Prefix=p + "/"):
    for o in page.get("Contents", []): n += 1; t += o["Size"]
print(t, n)' s3py "$1"
}

# ---------------------------------------------------------------- one savepoint run
run_target() {
  local kind=$1 dir="$WORK/$1" ck
  mkdir -p "$dir/tm"
  case $kind in
    file) ck="file://$dir/ck" ;;
    s3) ck="s3://$BUCKET/ck-$(date +%s)"
        S3PY='
try: c.create_bucket(Bucket=sys.argv[1])
except Exception as e: print("create_bucket:", e, file=sys.stderr)' s3py "$BUCKET" ;;
  esac
  local rows=$(( SIZE_MIB * 1048576 / (VLEN + 24) ))
  cat >"$dir/job.sql" <<EOF
CREATE TABLE src (k BIGINT, v STRING) WITH ('connector' = 'datagen', 'rows-per-second' = '$RATE',
  'fields.k.kind' = 'random', 'fields.k.min' = '0', 'fields.k.max' = '999999999', 'fields.v.length' = '$VLEN');
CREATE TABLE out_t (k BIGINT, m STRING, PRIMARY KEY (k) NOT ENFORCED) WITH ('connector' = 'blackhole');
INSERT INTO out_t SELECT k, MAX(v) FROM src GROUP BY k;
EOF
  local jid; jid=$(python3 -c 'import uuid;print(uuid.uuid4().hex)')
  "$ENGINE" jobmanager "$dir/job.sql" --job-id "$jid" --generation 1 --checkpoint-dir "$ck" \
    --rest-addr 127.0.0.1:0 --rpc-addr 127.0.0.1:0 --ports-file "$dir/ports.json" \
    --parallelism 1 --state-backend rocksdb --checkpoint-interval-ms 0 \
    --checkpoint-timeout-ms 3600000 >"$dir/jm.log" 2>&1 &
  local jm=$!; PIDS+=($jm)
  local i; for i in $(seq 1 300); do [[ -s "$dir/ports.json" ]] && break; sleep 0.1; done
  local rest rpc
  rest=$(jq -r .rest "$dir/ports.json"); rpc=$(jq -r .rpc "$dir/ports.json")
  "$ENGINE" taskmanager --jobmanager "$rpc" --slots 1 --id tm-0 --work-dir "$dir/tm" >"$dir/tm.log" 2>&1 &
  local tm=$!; PIDS+=($tm)
  local api="http://$rest/jobs/$jid" t0 n=0
  t0=$(now)
  log "$kind: job $jid at $rest, building state: $rows rows of ~$((VLEN + 24)) B"
  while :; do
    n=$(curl -sf "$api/metrics?get=numRecordsIn" | jq -r '.[0].value // 0' 2>/dev/null || echo 0)
    [[ "$n" =~ ^[0-9]+$ ]] || n=0
    (( n >= rows )) && break
    kill -0 $jm 2>/dev/null && kill -0 $tm 2>/dev/null || { tail "$dir/jm.log" "$dir/tm.log"; exit 1; }
    sleep 1
  done
  local tbuild; tbuild=$(python3 -c "print(f'{$(now)-$t0:.0f}')")
  local rocks; rocks=$(du -sb "$dir/tm" | cut -f1)
  log "$kind: $n rows in ${tbuild}s, TM work dir $((rocks / 1048576)) MiB; load: $(uptime | sed 's/.*load/load/')"
  local ts te trig st loc
  ts=$(now)
  trig=$(curl -sf -X POST -H 'content-type: application/json' \
    -d "{\"target-directory\":\"$ck/savepoints\"}" "$api/savepoints" | jq -r '."request-id"')
  while :; do
    st=$(curl -sf "$api/savepoints/$trig")
    case $(jq -r .status.id <<<"$st") in
      COMPLETED) te=$(now); break ;;
      IN_PROGRESS) sleep 0.05 ;;
      *) echo "savepoint failed: $st" >&2; exit 1 ;;
    esac
  done
  loc=$(jq -r .operation.location <<<"$st")
  if jq -e '.operation."failure-cause"' <<<"$st" >/dev/null 2>&1; then echo "savepoint failed: $st" >&2; exit 1; fi
  local size files
  case $loc in
    file://*) size=$(du -sb --apparent-size "${loc#file://}" | cut -f1); files=$(find "${loc#file://}" -type f | wc -l) ;;
    s3://*) read -r size files < <(s3_size "$loc") ;;
  esac
  local load; load=$(uptime | sed 's/.*load average: //')
  python3 - "$kind" "$n" "$rocks" "$size" "$files" "$ts" "$te" "$tbuild" "$loc" "$load" <<'EOF'
import sys
kind, n, rocks, size, files, ts, te, tb, loc, load = sys.argv[1:]
d = float(te) - float(ts); mib = int(size) / 1048576
print(f"RESULT savepoint target={kind} rows={n} rocksdb_dir_mib={int(rocks)/1048576:.0f} "
      f"savepoint_mib={mib:.1f} files={files} time_to_completed_s={d:.2f} "
      f"throughput_mib_s={mib/d:.1f} build_s={tb} load=[{load}] location={loc}")
EOF
  kill $tm $jm 2>/dev/null || true
  wait $tm $jm 2>/dev/null || true
}

for t in $TARGETS; do
  [[ $t == s3 ]] && start_s3
  run_target "$t"
done

# ---------------------------------------------------------------- anchors
if [[ $ANCHORS == 1 ]]; then
  f="$WORK/dd.bin"
  out=$(dd if=/dev/zero of="$f" bs=16M count=64 oflag=direct 2>&1 | tail -1)
  echo "ANCHOR disk dd bs=16M count=64 oflag=direct: $out"
  out=$(dd if=/dev/zero of="$f" bs=16M count=64 conv=fsync 2>&1 | tail -1)
  echo "ANCHOR disk dd bs=16M count=64 conv=fsync: $out"
  start_s3
  head -c 1073741824 /dev/urandom >"$f"
  S3PY='
from boto3.s3.transfer import TransferConfig
try: c.create_bucket(Bucket="sluice-anchor")
except Exception: pass
cfg = TransferConfig(multipart_threshold=64<<20, multipart_chunksize=64<<20, max_concurrency=4)
t = time.time(); c.upload_file(sys.argv[1], "sluice-anchor", "one-gib", Config=cfg); d = time.time() - t
print(f"ANCHOR s3 PUT 1 GiB (boto3 upload_file, 64 MiB parts, 4 threads): {d:.2f} s, {1024/d:.1f} MiB/s")
cfg = TransferConfig(multipart_threshold=8<<30)
t = time.time(); c.upload_file(sys.argv[1], "sluice-anchor", "one-gib-single", Config=cfg); d = time.time() - t
print(f"ANCHOR s3 PUT 1 GiB (boto3, single PUT): {d:.2f} s, {1024/d:.1f} MiB/s")' s3py "$f"
  rm -f "$f"
fi
echo "uptime after: $(uptime)"

#!/usr/bin/env python3
"""Incremental checkpoints and recovery with 1 GiB of RocksDB state (issue 5's goals: an
incremental checkpoint of 1 GiB of state in < 5 s, recovery in < 5 s).

  dev/cargo build --release -p sluice-engine      # once
  bench/checkpoints_large.py                       # about 5 minutes, prints the table at the end

W1's state (a count per user) is a few bytes per key, so 1 GiB of it would need ~40 M keys; this
job keeps a wide value per key instead: `SELECT user_id, MAX(payload), COUNT(*) ... GROUP BY
user_id` over datagen rows with `user_id` uniform in [0, KEYS) and a random `payload` string of
PAYLOAD characters, into blackhole. Same cluster as bench/checkpoints.py (one JobManager, two
TaskManagers with one slot each, parallelism 1, --state-backend rocksdb, checkpoints on the local
disk), figures from the JobManager's Flink-compatible REST API.

Phases:
  1. build at full speed, a checkpoint every BUILD_INTERVAL ms, until a completed checkpoint
     lists >= TARGET bytes of state (the full checkpoint is the first one that uploads that much).
  2. steady updates: a new generation restores the latest checkpoint and runs at RATE rows/s
     with a checkpoint every INTERVAL ms: the incremental checkpoints (new SST files only).
  3. SIGKILL of the TaskManager running the job: time until records flow again (the restore
     opens the 1 GiB of SST files on the other TaskManager).
Anchor: the time this machine's disk needs to copy the same bytes (`cp` of the checkpoint
directory), since ../shared/bench's Flink runner has no such job.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import checkpoints as ck  # noqa: E402  (the Cluster driver and REST helpers)

GIB = 1 << 30


def job_sql(keys, payload, rate, rows):
    return f"""CREATE TABLE src (
  user_id BIGINT,
  payload STRING
) WITH (
  'connector' = 'datagen',
  'rows-per-second' = '{rate}',
  'number-of-rows' = '{rows}',
  'fields.user_id.kind' = 'random',
  'fields.user_id.min' = '0',
  'fields.user_id.max' = '{keys - 1}',
  'fields.payload.length' = '{payload}'
);
CREATE TABLE snk (user_id BIGINT, m STRING, c BIGINT) WITH ('connector' = 'blackhole');
INSERT INTO snk SELECT user_id, MAX(payload), COUNT(*) FROM src GROUP BY user_id;
"""


def fmt(rs):
    return ", ".join(f"#{r['id']} {r['checkpointed_size'] / 1e6:.1f}/{r['state_size'] / 1e6:.1f} MB "
                     f"{r['end_to_end_duration']} ms" for r in rs)


def dir_bytes(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=8_000_000)
    ap.add_argument("--payload", type=int, default=120)
    ap.add_argument("--target", type=int, default=GIB, help="state bytes a checkpoint must list")
    ap.add_argument("--build-interval", type=int, default=15_000)
    ap.add_argument("--rate", type=int, default=20_000, help="rows/s in the steady phase")
    ap.add_argument("--interval", type=int, default=10_000)
    ap.add_argument("--checkpoints", type=int, default=5, help="incremental checkpoints to measure")
    ap.add_argument("--work", default="/var/tmp")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--out")
    args = ap.parse_args()
    if not os.access(ck.ENGINE, os.X_OK):
        raise SystemExit(f"{ck.ENGINE} is missing: dev/cargo build --release -p sluice-engine")

    work = tempfile.mkdtemp(prefix="sluice-ck1g-", dir=args.work)
    ckdir = os.path.join(work, "ck")
    ckpt = f"file://{ckdir}"
    job_id = uuid.uuid4().hex
    rows = 4_000_000_000
    out = {"keys": args.keys, "payload": args.payload, "load_before": ck.loadavg()}

    ck.log(f"build: {args.keys} keys, {args.payload}-character values, full speed, "
           f"a checkpoint every {args.build_interval} ms, until one lists {args.target / GIB:.2f} GiB")
    c = ck.Cluster(work, job_sql(args.keys, args.payload, 1_000_000_000, rows), job_id, ckpt, 1,
                   args.build_interval, "none")
    t0 = time.time()
    try:
        c.start_tm("a")
        ck.wait_until("RUNNING", 60, lambda: c.state() == "RUNNING")

        def big_enough():
            try:
                done = c.completed()
            except Exception:
                return None
            return done if done and done[-1]["state_size"] >= args.target else None
        build = ck.wait_until("a checkpoint of the target size", 1800, big_enough, period=0.5)
        out["build"] = build
        out["build_seconds"] = round(time.time() - t0, 1)
        ck.log(f"build checkpoints: {fmt(build)}")
    finally:
        c.stop()

    ck.log(f"steady: {args.rate} rows/s, a checkpoint every {args.interval} ms")
    c = ck.Cluster(work, job_sql(args.keys, args.payload, args.rate, rows), job_id, ckpt, 2,
                   args.interval, "latest")
    try:
        c.start_tm("b")
        ck.wait_until("RUNNING", 300, lambda: c.state() == "RUNNING")
        c.start_tm("c")  # idle: takes over after the kill
        steady = c.wait_checkpoints(args.checkpoints + 1)
        out["steady"] = steady
        ck.log(f"steady checkpoints: {fmt(steady)}")

        last = steady[-1]["id"]
        killed = time.time()
        c.kill("b")
        ck.wait_until("a restart", 60, lambda: (c.metric("numRestarts") or 0) >= 1, period=0.02)
        detected = time.time() - killed
        ck.wait_until("records after the restart", 300,
                      lambda: (c.metric("lastRecoveryTimeMs") or -1) >= 0, period=0.02)
        flowing = time.time() - killed
        out["recovery"] = {"detected_s": round(detected, 3), "records_flow_s": round(flowing, 3),
                           "jm_last_recovery_ms": c.metric("lastRecoveryTimeMs"),
                           "restored_from": last, "state_size": steady[-1]["state_size"]}
        ck.log(f"SIGKILL -> restart seen {detected:.3f} s, records flowing {flowing:.3f} s")
        out["after_restore"] = c.wait_checkpoints(2, after_id=last)
        ck.log(f"after the restore: {fmt(out['after_restore'])}")
    finally:
        c.stop()

    # The anchor: copying the checkpoint directory's bytes on this disk (page cache dropped
    # is not possible here without root tricks, so this is the cached copy speed).
    copy_to = os.path.join(work, "copy")
    size = dir_bytes(ckdir)
    t = time.time()
    subprocess.run(["cp", "-r", ckdir, copy_to], check=True)
    subprocess.run(["sync"], check=False)
    out["copy"] = {"bytes": size, "seconds": round(time.time() - t, 3)}
    out["load_after"] = ck.loadavg()
    if not args.keep:
        subprocess.run(["rm", "-rf", work], check=False)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)

    big = max(out["build"], key=lambda r: r["checkpointed_size"])
    slow = max(out["build"], key=lambda r: r["end_to_end_duration"])
    incr = out["steady"][1:]  # the first after a restore may upload what compaction rewrote
    print()
    print(f"| figure | Sluice | goal / anchor |")
    print(f"|---|---|---|")
    print(f"| state listed by the last checkpoint | {out['steady'][-1]['state_size'] / GIB:.2f} GiB "
          f"({args.keys / 1e6:.0f} M keys × {args.payload} B) | 1 GiB |")
    print(f"| while building at full write speed: largest upload | {big['checkpointed_size'] / 1e6:.0f} MB in "
          f"{big['end_to_end_duration']} ms (slowest: {slow['end_to_end_duration']} ms for "
          f"{slow['checkpointed_size'] / 1e6:.0f} MB) | cp of all {size / 1e6:.0f} MB: "
          f"{out['copy']['seconds'] * 1000:.0f} ms |")
    durs = sorted(r["end_to_end_duration"] for r in incr)
    ups = sorted(r["checkpointed_size"] for r in incr)
    print(f"| incremental ({args.rate} rows/s, every {args.interval} ms) | "
          f"median {durs[len(durs) // 2]} ms (max {durs[-1]}), median {ups[len(ups) // 2] / 1e6:.1f} MB uploaded | < 5000 ms |")
    first = out["steady"][0]
    print(f"| first checkpoint after a restore | {first['checkpointed_size'] / 1e6:.1f} MB in "
          f"{first['end_to_end_duration']} ms | |")
    r = out["recovery"]
    print(f"| TaskManager SIGKILL -> records flow | {r['records_flow_s'] * 1000:.0f} ms "
          f"(JobManager: {r['jm_last_recovery_ms']} ms) | < 5000 ms |")
    print(f"load {out['load_before']} -> {out['load_after']}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checkpoints and recovery of W1 with 1,000,000 keys on RocksDB (issue 5), Sluice vs Apache Flink.

  dev/cargo build --release -p sluice-engine      # once
  ../shared/bench/flink/setup.sh                   # once, for the Flink side
  bench/checkpoints.py                             # both engines, prints the table at the end
  bench/checkpoints.py --skip-flink                # ours only

The job is W1 (rolling COUNT(*) OVER per user) with `user_id` uniform over 1,000,000 values, the
SQL text made by ../shared/bench/flink/run.py's own functions (as bench/compare.py does); only
our datagen's `rows-per-second` is set per phase. Ours runs on a real cluster: one
`sluice-engine jobmanager` and two `sluice-engine taskmanager`s with one slot each (the second
one idle, so a restart does not wait for a new process), parallelism 1, `--state-backend
rocksdb`, checkpoints on the local disk (file://). Figures are read from the JobManager's
Flink-compatible REST API (`/jobs/{id}/checkpoints`: `end_to_end_duration`, `checkpointed_size`
= bytes uploaded, `state_size` = bytes the checkpoint lists).

Phases (ours):
  1. build: at most RATE_BUILD rows/s, a checkpoint every INTERVAL_BUILD ms. The first checkpoint
     uploads everything the state has then (full; the number of keys it holds is estimated from
     the rows read, 1 - e^(-rows/keys)); the second what changed since (at full speed nearly every
     key changes between two checkpoints, so it is nearly full too).
  2. SIGKILL of the TaskManager that runs the job: the JobManager's `lastRecoveryTimeMs` (from
     the loss of the TaskManager to the first records of the restarted sources), and the wall
     time from the kill until REST shows it (polled every 20 ms).
  3. small changes: a new JobManager generation restores the latest checkpoint and runs at
     RATE_SMALL rows/s with a checkpoint every INTERVAL_SMALL ms: incremental checkpoints
     after a small change (only the new SST files are uploaded).
  A savepoint (canonical, full, self-contained: what every checkpoint uploaded before
  incremental checkpoints) is taken in phase 3 for comparison.

Flink (run.py, PyFlink MiniCluster 2.3): the same SQL, N rows at full speed, rocksdb, a
checkpoint every FLINK_INTERVAL, once with incremental checkpoints and once without; its
figures are the "Completed checkpoint" log lines run.py parses (bytes = checkpointed size,
duration) and its REST summary. A TaskManager SIGKILL cannot be measured there: the MiniCluster
runs the JobManager and the TaskManager in one JVM, so ../shared/bench cannot kill one alone.
"""
import argparse
import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SLUICE_SHARED_BENCH", os.path.join(os.path.dirname(ROOT), "shared", "bench"))
RUN_PY = os.path.join(SHARED, "flink", "run.py")
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/sluice-target")
ENGINE = os.environ.get("ENGINE", os.path.join(TARGET, "release", "sluice-engine"))
USERS = 1_000_000


def load_runner():
    spec = importlib.util.spec_from_file_location("flink_run", RUN_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def w1_sql(runner, n, rate):
    a = types.SimpleNamespace(workload="w1", source="datagen", n=n, json_path=None, users=USERS)
    src = runner.source_ddl(a).strip()
    if rate:
        src = src.replace("'rows-per-second' = '1000000000'", f"'rows-per-second' = '{rate}'")
        assert f"'{rate}'" in src, "run.py's datagen options changed"
    sink_ddl, query = runner.sink_and_query(a)
    return ";\n".join([src, sink_ddl, query]) + ";\n"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def get(url, timeout=2.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def post(url, body, timeout=5.0):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.load(r)


def wait_until(what, timeout_s, fn, period=0.05):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(period)
    raise SystemExit(f"timed out after {timeout_s} s waiting for {what}")


class Cluster:
    """One JobManager and its TaskManagers for one generation of the job."""

    def __init__(self, work, job_sql, job_id, ckpt, generation, interval_ms, restore):
        self.work = work
        self.procs = {}
        self.job_id = job_id
        job = os.path.join(work, f"job-{generation}.sql")
        with open(job, "w") as f:
            f.write(job_sql)
        ports = os.path.join(work, f"ports-{generation}.json")
        jm_log = open(os.path.join(work, f"jm-{generation}.log"), "w")
        self.procs["jm"] = subprocess.Popen(
            [ENGINE, "jobmanager", job, "--job-id", job_id, "--generation", str(generation),
             "--checkpoint-dir", ckpt, "--rest-addr", "127.0.0.1:0", "--rpc-addr", "127.0.0.1:0",
             "--ports-file", ports, "--parallelism", "1", "--state-backend", "rocksdb",
             "--checkpoint-interval-ms", str(interval_ms), "--checkpoints-retained", "3",
             "--restart-backoff-initial-ms", "0", "--restore", restore],
            stdout=jm_log, stderr=subprocess.STDOUT)
        p = wait_until("the JobManager's ports file", 60, lambda: self._ports(ports))
        self.rest = f"http://{p['rest']}"
        self.rpc = p["rpc"]
        self.api = f"{self.rest}/jobs/{job_id}"

    @staticmethod
    def _ports(path):
        try:
            with open(path) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def start_tm(self, name):
        tm_log = open(os.path.join(self.work, f"tm-{name}.log"), "w")
        self.procs[name] = subprocess.Popen(
            [ENGINE, "taskmanager", "--jobmanager", self.rpc, "--slots", "1", "--id", name,
             "--work-dir", os.path.join(self.work, f"tm-{name}")],
            stdout=tm_log, stderr=subprocess.STDOUT)

    def metric(self, name):
        try:
            v = get(f"{self.api}/metrics?get={name}")
            return int(float(v[0]["value"])) if v else None
        except Exception:
            return None

    def state(self):
        try:
            return get(self.api)["state"]
        except Exception:
            return None

    def completed(self):
        """Completed checkpoints (not savepoints), oldest first."""
        h = get(f"{self.api}/checkpoints")["history"]
        done = [r for r in h if r["status"] == "COMPLETED" and not r["is_savepoint"]]
        return sorted(done, key=lambda r: r["id"])

    def wait_checkpoints(self, n, after_id=0, timeout_s=600):
        def enough():
            try:
                c = [r for r in self.completed() if r["id"] > after_id]
            except Exception:
                return None
            return c if len(c) >= n else None
        return wait_until(f"{n} checkpoints after {after_id}", timeout_s, enough, period=0.2)

    def kill(self, name):
        p = self.procs.pop(name)
        p.send_signal(signal.SIGKILL)
        p.wait()

    def stop(self):
        for name in list(self.procs):
            self.kill(name)


def ours(args, runner):
    work = tempfile.mkdtemp(prefix="sluice-ckbench-", dir=args.work)
    ckpt = f"file://{work}/ck"
    job_id = uuid.uuid4().hex
    out = {"engine": ENGINE, "load_before": loadavg()}

    # Phase 1: build the state; checkpoints at a high rate.
    log(f"ours: build at {args.rate_build} rows/s, a checkpoint every {args.interval_build} ms")
    c = Cluster(work, w1_sql(runner, args.rows, args.rate_build), job_id, ckpt, 1,
                args.interval_build, "none")
    try:
        c.start_tm("a")
        wait_until("RUNNING", 60, lambda: c.state() == "RUNNING")
        c.start_tm("b")  # idle: takes over after the kill
        # The first checkpoint uploads everything the state has (nothing is shared yet): the
        # full checkpoint. The interval is long enough for most of the key space to exist by then.
        first = c.wait_checkpoints(1)
        rows_first = c.metric("numRecordsIn") or 0
        build = c.wait_checkpoints(2)
        out["build"] = build
        out["rows_at_first_checkpoint"] = rows_first
        out["keys_at_first_checkpoint"] = round(USERS * (1 - math.exp(-rows_first / USERS)))
        log(f"ours: ~{out['keys_at_first_checkpoint']} keys at the first checkpoint; " + ", ".join(
            f"#{r['id']} {r['checkpointed_size']}/{r['state_size']} B {r['end_to_end_duration']} ms"
            for r in build))
        del first

        # Phase 2: SIGKILL the TaskManager that runs the job.
        last = build[-1]["id"]
        killed = time.time()
        c.kill("a")
        wait_until("a restart", 60, lambda: (c.metric("numRestarts") or 0) >= 1, period=0.02)
        detected = time.time() - killed
        # The JobManager sets it when the restarted sources report records.
        wait_until("records after the restart", 120,
                   lambda: (c.metric("lastRecoveryTimeMs") or -1) >= 0, period=0.02)
        flowing = time.time() - killed
        out["recovery"] = {"detected_s": round(detected, 3), "records_flow_s": round(flowing, 3),
                           "jm_last_recovery_ms": c.metric("lastRecoveryTimeMs"),
                           "restored_from": last}
        log(f"ours: SIGKILL -> restart seen {detected:.3f} s, records flowing {flowing:.3f} s")
        out["after_restore"] = c.wait_checkpoints(1, after_id=last)
    finally:
        c.stop()

    # Phase 3: a new generation resumes from the latest checkpoint at a low rate.
    log(f"ours: small changes at {args.rate_small} rows/s, a checkpoint every {args.interval_small} ms")
    c = Cluster(work, w1_sql(runner, args.rows, args.rate_small), job_id, ckpt, 2,
                args.interval_small, "latest")
    try:
        c.start_tm("c")
        wait_until("RUNNING", 120, lambda: c.state() == "RUNNING")
        small = c.wait_checkpoints(4)
        out["small"] = small
        log("ours: small-change checkpoints " + ", ".join(
            f"#{r['id']} {r['checkpointed_size']}/{r['state_size']} B {r['end_to_end_duration']} ms"
            for r in small))
        t0 = time.time()
        trig = post(f"{c.api}/savepoints", {"target-directory": f"{ckpt}/savepoints", "cancel-job": False})
        rid = trig["request-id"]

        def sp_done():
            s = get(f"{c.api}/savepoints/{rid}")
            if s["status"]["id"] != "COMPLETED":
                return None
            if s.get("operation", {}).get("failure-cause"):
                raise SystemExit(f"savepoint failed: {s}")
            return s
        sp = wait_until("the savepoint", 600, sp_done, period=0.05)
        elapsed = time.time() - t0
        loc = sp["operation"]["location"]
        path = loc[len("file://"):] if loc.startswith("file://") else loc
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
        out["savepoint"] = {"seconds": round(elapsed, 3), "bytes": size}
        log(f"ours: canonical savepoint {size} B in {elapsed:.3f} s")
    finally:
        c.stop()

    # Phase 4: the update volume of Flink's run between two of its checkpoints (its steady rate
    # times its interval), for the side-by-side incremental figure.
    log(f"ours: {args.rate_matched} rows/s, a checkpoint every {args.interval_matched} ms")
    c = Cluster(work, w1_sql(runner, args.rows, args.rate_matched), job_id, ckpt, 3,
                args.interval_matched, "latest")
    try:
        c.start_tm("d")
        wait_until("RUNNING", 120, lambda: c.state() == "RUNNING")
        matched = c.wait_checkpoints(5)
        out["matched"] = matched
        log("ours: matched checkpoints " + ", ".join(
            f"#{r['id']} {r['checkpointed_size']}/{r['state_size']} B {r['end_to_end_duration']} ms"
            for r in matched))
    finally:
        c.stop()
    out["load_after"] = loadavg()
    if not args.keep:
        subprocess.run(["rm", "-rf", work], check=False)
    return out


def flink(args, incremental):
    cmd = [sys.executable, RUN_PY, "w1", "--n", str(args.flink_rows), "-p", "1", "--backend", "rocksdb",
           "--users", str(USERS), "--checkpoint", args.flink_interval, "--no-record",
           "--tag", "sluice-checkpoints"]
    if incremental:
        cmd.append("--incremental")
    log(f"flink: {' '.join(cmd[1:])}")
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in r.stdout.strip().splitlines() if l.startswith("{")]
    if not lines:
        return {"error": (r.stderr or r.stdout).strip()[-600:]}
    return json.loads(lines[-1])


def mb(b):
    return f"{b / 1e6:.2f} MB" if b is not None else "n/a"


def ms(v):
    return f"{v} ms" if v is not None else "n/a"


def ratio(a, b):
    if a is None or b is None or a == 0:
        return "n/a"
    return f"{b / a:.1f}x"


def median(xs):
    xs = sorted(x for x in xs if x is not None)
    return xs[len(xs) // 2] if xs else None


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=2_000_000_000, help="our datagen number-of-rows (the phases end it)")
    ap.add_argument("--rate-build", type=int, default=1_000_000)
    ap.add_argument("--interval-build", type=int, default=30_000)
    ap.add_argument("--rate-small", type=int, default=2_000)
    ap.add_argument("--interval-small", type=int, default=2000)
    ap.add_argument("--rate-matched", type=int, default=70_000,
                    help="phase 4 rate: about Flink's steady rate on this workload")
    ap.add_argument("--interval-matched", type=int, default=5000)
    ap.add_argument("--flink-rows", type=int, default=10_000_000)
    ap.add_argument("--flink-interval", default="5s")
    ap.add_argument("--skip-flink", action="store_true")
    ap.add_argument("--skip-ours", action="store_true")
    ap.add_argument("--work", default="/var/tmp")
    ap.add_argument("--keep", action="store_true", help="keep our work directory (logs, checkpoints)")
    ap.add_argument("--out", help="write all figures as JSON to this file")
    ap.add_argument("--table-from", nargs="+", metavar="JSON",
                    help="print the table from --out files of earlier runs instead of running")
    args = ap.parse_args()
    runner = load_runner()
    res = {}
    if args.table_from:
        for path in args.table_from:
            with open(path) as f:
                res.update(json.load(f))
        args.skip_ours = args.skip_flink = True
    if not args.skip_ours:
        if not os.path.exists(ENGINE):
            sys.exit(f"{ENGINE} is missing: dev/cargo build --release -p sluice-engine")
        res["ours"] = ours(args, runner)
    if not args.skip_flink:
        res["flink_incremental"] = flink(args, True)
        res["flink_full"] = flink(args, False)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

    o = res.get("ours", {})
    fi = res.get("flink_incremental", {})
    ff = res.get("flink_full", {})
    build = o.get("build", [])
    small = o.get("small", [])
    # Flink's log line "Completed checkpoint N (X bytes ...)" gives the state size; what an
    # incremental checkpoint uploaded is only in its REST summary (`checkpointed_size`).
    fi_s = fi.get("rest_ckpt_summary") or {}
    ff_s = ff.get("rest_ckpt_summary") or {}
    matched = o.get("matched", [])
    # The first checkpoint of a restored generation uploads what compaction rewrote on open.
    m_up = median([r["checkpointed_size"] for r in matched[1:]])
    m_d = median([r["end_to_end_duration"] for r in matched[1:]])
    fi_up = (fi_s.get("checkpointed_size") or {}).get("p50")
    fi_d = (fi_s.get("e2e_ms") or {}).get("p50")
    ff_max = (ff_s.get("state_size") or {}).get("max")
    ff_d = (ff_s.get("e2e_ms") or {}).get("p50")
    b0 = build[0] if build else {}
    rows = [
        (f"full checkpoint (ours: the first, ~{o.get('keys_at_first_checkpoint')} keys; Flink: the largest "
         "non-incremental): size", mb(b0.get("checkpointed_size")), mb(ff_max),
         ratio(b0.get("checkpointed_size"), ff_max)),
        ("full checkpoint: duration (Flink: median)", ms(b0.get("end_to_end_duration")), ms(ff_d),
         ratio(b0.get("end_to_end_duration"), ff_d)),
        (f"incremental checkpoint, ~{args.rate_matched * args.interval_matched // 1000:,} updates apart "
         "(ours: median; Flink: p50 at its own rate): uploaded", mb(m_up), mb(fi_up), ratio(m_up, fi_up)),
        ("incremental checkpoint: duration", ms(m_d), ms(fi_d), ratio(m_d, fi_d)),
        ("incremental checkpoint: state it lists",
         mb(median([r["state_size"] for r in matched[1:]])),
         mb((fi_s.get("state_size") or {}).get("p50")), ""),
        (f"incremental after a small change ({args.rate_small * args.interval_small // 1000:,} updates apart): "
         "uploaded / listed",
         " / ".join([mb(median([r["checkpointed_size"] for r in small[1:]])),
                     mb(median([r["state_size"] for r in small[1:]]))]), "not measured", ""),
        ("incremental after a small change: duration",
         ms(median([r["end_to_end_duration"] for r in small[1:]])), "not measured", ""),
        ("checkpoint right after the full one, at full speed (every key changed): uploaded",
         mb(build[1]["checkpointed_size"]) if len(build) > 1 else "n/a", "", ""),
        ("first checkpoint after the SIGKILL's native restore: uploaded / listed",
         " / ".join(mb(o.get("after_restore", [{}])[0].get(k)) for k in ("checkpointed_size", "state_size"))
         if o.get("after_restore") else "n/a", "", ""),
        ("canonical savepoint (what every checkpoint uploaded before)",
         f"{mb(o.get('savepoint', {}).get('bytes'))} in {o.get('savepoint', {}).get('seconds')} s", "", ""),
        ("TaskManager SIGKILL -> records flow again",
         f"{o.get('recovery', {}).get('records_flow_s')} s (JM: {o.get('recovery', {}).get('jm_last_recovery_ms')} ms)",
         "not measurable (MiniCluster: one JVM)", ""),
    ]
    print()
    print(f"W1, {USERS:,} keys, rocksdb, parallelism 1; load {o.get('load_before')} -> {o.get('load_after')}")
    print(f"ours: cluster, {args.rate_build} rows/s, checkpoint every {args.interval_build} ms; "
          f"Flink: {args.flink_rows:,} rows at full speed, checkpoint every {args.flink_interval} "
          f"(eps steady incremental {fi.get('eps_steady')}, full {ff.get('eps_steady')})")
    print("| figure | ours | Flink 2.3 | Flink / ours |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Sluice vs Apache Flink on the shared workloads W0-W3, side by side, in one run.

  bench/compare.py                          # W0-W3, datagen + json, p=1, 10M rows, both engines
  bench/compare.py --n 2000000 --skip-flink # ours only, quick
  bench/compare.py -p 1,2 --workloads w1,w2

Both engines get the SAME SQL text: it is produced by the shared Flink runner's own
functions (../shared/bench/flink/run.py: source_ddl, sink_and_query). Our engine is the
release build of `sluice-engine` (built through dev/cargo); Flink runs through run.py
(PyFlink MiniCluster; set up once with ../shared/bench/flink/setup.sh). JSON inputs come
from gen_json.py and are shared by both engines.

Figures: ours = records / wall time of the whole run, records / (utime+stime) of the
whole process, peak RSS (VmHWM); Flink = run.py's steady-state (10%-90%) events/s and
events per JVM CPU-second, and its peak RSS. The load average is printed with each row:
the machine is shared, so events per CPU-second is the figure to compare.
"""
import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("SLUICE_SHARED_BENCH", os.path.join(os.path.dirname(ROOT), "shared", "bench"))
RUN_PY = os.path.join(SHARED, "flink", "run.py")
GEN_PY = os.path.join(SHARED, "flink", "gen_json.py")
HOME = os.environ.get("FLINKBENCH_HOME", os.path.expanduser("~/.cache/sluice-flinkbench"))
TARGET = os.environ.get("CARGO_TARGET_DIR", "/var/tmp/sluice-target")
ENGINE = os.path.join(TARGET, "release", "sluice-engine")


def load_runner():
    spec = importlib.util.spec_from_file_location("flink_run", RUN_PY)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def job_sql(runner, workload, source, n, json_path, users):
    a = types.SimpleNamespace(workload=workload, source=source, n=n, json_path=json_path, users=users)
    sink_ddl, query = runner.sink_and_query(a)
    return ";\n".join([runner.source_ddl(a).strip(), sink_ddl, query]) + ";\n"


def loadavg():
    with open("/proc/loadavg") as f:
        return f.read().split()[0]


def run_ours(sql, parallelism, backend):
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(sql)
        path = f.name
    try:
        out = subprocess.run([ENGINE, "run", path, "--json", "--progress-ms", "0", "-p", str(parallelism),
                              "--state-backend", backend], capture_output=True, text=True)
        if out.returncode != 0:
            return {"error": out.stderr.strip()[-400:]}
        return json.loads(out.stdout.strip().splitlines()[-1])
    finally:
        os.unlink(path)


def run_flink(workload, source, n, parallelism, json_path, backend):
    cmd = [sys.executable, RUN_PY, workload, "--n", str(n), "-p", str(parallelism), "--backend", backend,
           "--source", source, "--tag", "sluice-compare"]
    if source == "json":
        cmd += ["--json-path", json_path]
    out = subprocess.run(cmd, capture_output=True, text=True)
    lines = [l for l in out.stdout.strip().splitlines() if l.startswith("{")]
    if not lines:
        return {"error": (out.stderr or out.stdout).strip()[-400:]}
    return json.loads(lines[-1])


def fmt(v, unit=""):
    if v is None:
        return "-"
    if isinstance(v, float) and v < 100:
        return f"{v:.2f}{unit}"
    return f"{v:,.0f}{unit}"


def ratio(a, b):
    return f"{a / b:.1f}x" if a and b else "-"


def warm(path):
    """Reads the JSON input once, so neither engine pays the disk (ours runs first)."""
    for name in sorted(os.listdir(path)):
        with open(os.path.join(path, name), "rb") as f:
            while f.read(1 << 24):
                pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--workloads", default="w0,w1,w2,w3")
    ap.add_argument("--sources", default="datagen,json")
    ap.add_argument("-p", "--parallelism", default="1")
    ap.add_argument("--backends", default="memory", help="ours: memory (Flink: hashmap)")
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--skip-flink", action="store_true")
    ap.add_argument("--out", default=None, help="append the JSON results here")
    a = ap.parse_args()
    if not os.path.exists(ENGINE):
        sys.exit(f"{ENGINE} is missing: run `dev/cargo build --release -p sluice-engine` first")
    runner = load_runner()
    json_path = os.path.join(HOME, "data", f"json_{a.n}_2f")
    if "json" in a.sources and not os.path.isdir(json_path):
        print(f"generating {a.n} JSON lines in {json_path} ...", flush=True)
        subprocess.run([sys.executable, GEN_PY, "--n", str(a.n), "--files", "2", "--out", json_path], check=True)
    rows = []
    print(f"{'workload':<6} {'src':<8} {'p':>2} {'backend':<7} | {'ours ev/s':>11} {'ours ev/CPU-s':>13} {'ours RSS':>9} | "
          f"{'Flink ev/s':>11} {'Flink ev/CPU-s':>14} {'Flink RSS':>9} | {'ev/s':>6} {'ev/CPU':>6} {'RSS':>6} | load")
    for p in [int(x) for x in a.parallelism.split(",")]:
        for source in a.sources.split(","):
            for w in a.workloads.split(","):
                for backend in a.backends.split(","):
                    sql = job_sql(runner, w, source, a.n, json_path, a.users)
                    if source == "json":
                        warm(json_path)
                    load0 = loadavg()
                    ours = run_ours(sql, p, backend)
                    flink = {} if a.skip_flink else run_flink(w, source, a.n, p, json_path,
                                                              "hashmap" if backend == "memory" else backend)
                    o_eps, o_cpu, o_rss = ours.get("events_per_s"), ours.get("events_per_cpu_s"), ours.get("peak_rss_mb")
                    f_eps = flink.get("eps_steady") or flink.get("eps_exec")
                    f_cpu = flink.get("eps_per_jvm_cpu_s_steady") or flink.get("eps_per_jvm_cpu_s")
                    f_rss = flink.get("time_v_maxrss_mb") or flink.get("jvm_peak_rss_mb")
                    rss_ratio = f"1/{f_rss / o_rss:.0f}" if o_rss and f_rss else "-"
                    print(f"{w:<6} {source:<8} {p:>2} {backend:<7} | {fmt(o_eps):>11} {fmt(o_cpu):>13} {fmt(o_rss, 'M'):>9} | "
                          f"{fmt(f_eps):>11} {fmt(f_cpu):>14} {fmt(f_rss, 'M'):>9} | {ratio(o_eps, f_eps):>6} "
                          f"{ratio(o_cpu, f_cpu):>6} {rss_ratio:>6} | {load0}/{loadavg()}", flush=True)
                    for name, r in (("ours", ours), ("flink", flink)):
                        if r.get("error"):
                            print(f"    {name} failed: {r['error']}", flush=True)
                    rows.append({"workload": w, "source": source, "parallelism": p, "backend": backend, "n": a.n,
                                 "ours": ours, "flink": flink, "ts": time.strftime("%Y-%m-%dT%H:%M:%S")})
    if a.out:
        with open(a.out, "a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()

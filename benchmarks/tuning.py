"""Which settings make a 2-worker Horovod Keras job fast on a small CPU machine?

Candidates, alternated round by round on one workload (each a fresh process; see
benchmarks/contenders.py): a bare Keras baseline (1 worker, 1 thread, pinned), the same
script under `horovodrun --gloo` as a stock job (no pinning, TensorFlow's default threads)
and with one change at a time (pinned one worker per core with 1 thread, HOROVOD_CYCLE_TIME,
fusion off), MultiWorkerMirroredStrategy, and distft with its defaults and with each cycle
time. Each candidate's
samples/s is divided by the baseline's of the same round (speed-up from 2 workers).

Example (from the repository root):
    python -m benchmarks tuning --rounds=2
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

from benchmarks.common import invocation, save
from benchmarks.report import RESULTS, _run, _spec

# name: (contender, workers, threads, pin, extra environment)
CANDIDATES: dict[str, tuple[str, int, int, int, dict[str, str]]] = {
    "keras x1 (baseline)": ("keras", 1, 1, 1, {}),
    "horovod stock": ("horovod", 2, 0, 0, {}),
    "horovod stock, cycle 5 ms": ("horovod", 2, 0, 0, {"HOROVOD_CYCLE_TIME": "5"}),
    "horovod 1 thread, unpinned": ("horovod", 2, 1, 0, {}),
    "horovod pinned, 1 thread": ("horovod", 2, 1, 1, {}),
    "horovod pinned, cycle 5 ms": ("horovod", 2, 1, 1, {"HOROVOD_CYCLE_TIME": "5"}),
    "horovod pinned, fusion off": ("horovod", 2, 1, 1, {"HOROVOD_FUSION_THRESHOLD": "0"}),
    "mwms pinned, 1 thread": ("mwms", 2, 1, 1, {}),
    "distft defaults": ("distft", 2, 1, 1, {}),
    "distft, cycle 1 ms": ("distft", 2, 1, 1, {"HOROVOD_CYCLE_TIME": "1"}),
    "distft, cycle 5 ms": ("distft", 2, 1, 1, {"HOROVOD_CYCLE_TIME": "5"}),
}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks tuning", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workload", default="mobilenet")
    p.add_argument("--records", type=int, default=1024)
    p.add_argument("--only", default="", help="candidate names separated by ; (default: all)")
    p.add_argument("--workdir", default="/tmp/distft-tuning", help="models and data (kept)")
    p.add_argument("--output", default=os.path.join(RESULTS, "tuning.json"))
    a = p.parse_args(argv)
    names = [n for n in CANDIDATES if not a.only or n in a.only.split(";")]
    spec = _spec(a.workdir, a.workload, a.records)
    print(f"command: {invocation()}", flush=True)
    rounds = []
    for r in range(1, a.rounds + 1):
        row: dict[str, Any] = {"round": r, "load": os.getloadavg()[0]}
        for name in names:
            contender, workers, threads, pin, env = CANDIDATES[name]
            row[name] = _run(spec, contender, workers, a.epochs, threads, pin, env)["samples_per_sec"]
            print(f"  round {r}: {name}: {row[name]:.1f} samples/s", file=sys.stderr, flush=True)
        rounds.append(row)
    base = "keras x1 (baseline)"
    median = {n: statistics.median(r[n] for r in rounds) for n in names}
    speedup = {n: statistics.median(r[n] / r[base] for r in rounds) for n in names} if base in names else {}
    result = {"benchmark": "tuning", "command": invocation(), "workload": a.workload,
              "records": a.records, "epochs": a.epochs, "candidates": {n: CANDIDATES[n] for n in names},
              "rounds": rounds, "median": median, "speedup": speedup}
    lines = [f"\n### 2-worker settings on {a.workload} ({a.records} records, batch 32 per worker)\n",
             "| candidate | samples/s (median) | / keras x1 |", "|---|---:|---:|"]
    lines += [f"| {n} | {median[n]:.1f} | {speedup.get(n, float('nan')):.2f} |" for n in names]
    print("\n".join(lines))
    save(result, a.output)
    return 0

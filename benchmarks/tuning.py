"""Which settings make a 2-worker Horovod Keras job fast on a small CPU machine, and what
limits 2 workers on 2 cores?

Candidates, alternated round by round on one workload (each a fresh process; see
benchmarks/contenders.py): a bare Keras 3 baseline (1 worker, 1 thread, pinned) and the same
with one inter-op thread; two such baselines side by side, one per core, with no
communication (the machine's own ceiling for 2 workers); the same script on Horovod's core ops
(one `hvd.grouped_allreduce` of the gradients in its train step: Horovod's Keras layer does not
work on Keras 3) under `horovodrun --gloo` as a stock job (no pinning, TensorFlow's default
threads) and with one change at a time (pinned one worker per core with 1 thread,
HOROVOD_CYCLE_TIME, fusion off); MultiWorkerMirroredStrategy on tf_keras (Keras 2; 2 and 1
inter-op threads); distft on 1 and 2 workers with its defaults and with one setting changed.
Each candidate's samples/s is divided by the baseline's of the same round. Writes
benchmarks/results/tuning-TAG.json (tuning-tf221.json on TF 2.21).

Example (from the repository root):
    python -m benchmarks tuning --rounds=3 --only="keras x1 (baseline);keras x1 side by side (no communication)"
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from typing import Any

from benchmarks.common import invocation, result_file, save
from benchmarks.report import _command, _run, _spec, _timed

INTER_2 = {"TF_NUM_INTEROP_THREADS": "2"}  # distft's default is 1
# name: options of report._run (contender, workers; threads, pin, inter, env: as the defaults)
CANDIDATES: dict[str, dict[str, Any]] = {
    "keras x1 (baseline)": dict(contender="keras", workers=1),
    "keras x1, inter-op 1": dict(contender="keras", workers=1, inter=1),
    "keras x1 side by side (no communication)": dict(contender="keras", workers=1, side_by_side=True),
    "horovod stock": dict(contender="horovod", workers=2, threads=0, pin=0),
    "horovod stock, cycle 5 ms": dict(contender="horovod", workers=2, threads=0, pin=0,
                                      env={"HOROVOD_CYCLE_TIME": "5"}),
    "horovod 1 thread, unpinned": dict(contender="horovod", workers=2, pin=0),
    "horovod pinned, 1 thread": dict(contender="horovod", workers=2),
    "horovod pinned, cycle 5 ms": dict(contender="horovod", workers=2, env={"HOROVOD_CYCLE_TIME": "5"}),
    "horovod pinned, fusion off": dict(contender="horovod", workers=2, env={"HOROVOD_FUSION_THRESHOLD": "0"}),
    "mwms pinned, 1 thread": dict(contender="mwms", workers=2),
    "mwms pinned, inter-op 1": dict(contender="mwms", workers=2, inter=1),
    "distft x1": dict(contender="distft", workers=1),
    "distft x1, inter-op 2": dict(contender="distft", workers=1, env=INTER_2),
    "distft defaults": dict(contender="distft", workers=2),
    "distft, inter-op 2": dict(contender="distft", workers=2, env=INTER_2),
    "distft, cycle 5 ms": dict(contender="distft", workers=2, env={"HOROVOD_CYCLE_TIME": "5"}),
    "distft, cycle 20 ms": dict(contender="distft", workers=2, env={"HOROVOD_CYCLE_TIME": "20"}),
}


def measure(spec: str, epochs: int, options: dict[str, Any]) -> float:
    """One candidate's samples/s (side by side: the sum of two runs, one per core)."""
    options = dict(options)
    if options.pop("side_by_side", False):
        env = options.pop("env", None)
        runs = _timed([_command(spec, epochs=epochs, core=core, **options) for core in (0, 1)], env)
        return sum(r["samples_per_sec"] for r in runs)
    return _run(spec, epochs=epochs, **options)["samples_per_sec"]


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks tuning", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--workload", default="mobilenet")
    p.add_argument("--records", type=int, default=1024)
    p.add_argument("--only", default="", help="candidate names separated by ; (default: all)")
    p.add_argument("--workdir", default="/tmp/distft-tuning", help="models and data (kept)")
    p.add_argument("--output", default=result_file("tuning.json"))
    a = p.parse_args(argv)
    names = [n for n in CANDIDATES if not a.only or n in a.only.split(";")]
    spec = _spec(a.workdir, a.workload, a.records)
    print(f"command: {invocation()}", flush=True)
    rounds = []
    for r in range(1, a.rounds + 1):
        row: dict[str, Any] = {"round": r, "load": os.getloadavg()[0]}
        for name in names:
            row[name] = measure(spec, a.epochs, CANDIDATES[name])
            print(f"  round {r}: {name}: {row[name]:.1f} samples/s", file=sys.stderr, flush=True)
        rounds.append(row)
    base = "keras x1 (baseline)"
    median = {n: statistics.median(r[n] for r in rounds) for n in names}
    speedup = {n: statistics.median(r[n] / r[base] for r in rounds) for n in names} if base in names else {}
    result = {"benchmark": "tuning", "command": invocation(), "workload": a.workload,
              "records": a.records, "epochs": a.epochs, "candidates": {n: CANDIDATES[n] for n in names},
              "rounds": rounds, "median": median, "speedup": speedup}
    lines = [f"\n### settings on {a.workload} ({a.records} records, batch 32 per worker)\n",
             "| candidate | samples/s (median) | / keras x1 (median of rounds) |", "|---|---:|---:|"]
    lines += [f"| {n} | {median[n]:.1f} | {speedup.get(n, float('nan')):.2f} |" for n in names]
    print("\n".join(lines))
    save(result, a.output)
    return 0

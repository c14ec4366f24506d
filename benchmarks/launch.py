"""The cost of starting: stock `horovodrun` against distft's launcher (distft/launch/horovodrun.py,
whose build check reads a cache instead of forking a process that imports TensorFlow), the
training stream built as one pipeline over the epochs against one pipeline an epoch, and a
worker's imports as distft makes them (log.import_tensorflow: matplotlib hidden from Keras,
ml_dtypes < 0.7) against a plain `import keras` beside ml_dtypes 0.7.0 (pip installs it into a
temporary folder put first on the path).

Each launcher starts 2 workers that run `python -c pass`, so what is measured is the launcher:
seconds from start to exit, and CPU seconds of the launcher and everything it started
(getrusage of children). distft's cache is warm (the first launch writes it, untimed). The
streams are the demo's training data on rank 0 of 2, shuffled, for `--epochs` epochs, built in
this process: the epoch-by-epoch build is the one distft keeps for a global seed of 0. The
contenders alternate round by round.

Example (from the repository root):
    python -m benchmarks launch --rounds=5
"""
from __future__ import annotations

import argparse
import datetime
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

from benchmarks.common import environment, invocation, result_file, save

RESULTS = result_file("launch.json")
HOROVODRUN = os.path.join(os.path.dirname(sys.executable), "horovodrun")
CONTENDERS = {"horovodrun": [HOROVODRUN], "distft": [sys.executable, "-m", "distft.launch.horovodrun"]}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks launch", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--np", type=int, default=2, help="workers")
    p.add_argument("--epochs", type=int, default=500, help="epochs of the training stream")
    p.add_argument("--output", default=RESULTS, help="result JSON")
    args = p.parse_args(argv)
    command = invocation()
    print(f"command: {command}", flush=True)
    launch("distft", args.np)  # the cache, written once
    data = demo_training_data()
    old_ml_dtypes = ml_dtypes_070()
    rounds = []
    for r in range(1, args.rounds + 1):
        row: dict[str, Any] = {"round": r, "load": os.getloadavg()[0]}
        for name in CONTENDERS:
            row[name] = launch(name, args.np)
        row["wall_ratio"] = row["horovodrun"]["seconds"] / row["distft"]["seconds"]
        row["cpu_ratio"] = row["horovodrun"]["cpu_seconds"] / row["distft"]["cpu_seconds"]
        row["stream_by_epoch"], row["stream_one"] = (stream_seconds(data, args.epochs, by_epoch)
                                                     for by_epoch in (True, False))
        row["stream_ratio"] = row["stream_by_epoch"] / row["stream_one"]
        row["imports_before"], row["imports_distft"] = (worker_imports(path) for path in (old_ml_dtypes, None))
        row["imports_ratio"] = row["imports_before"] / row["imports_distft"]
        print(f"  round {r}/{args.rounds}: horovodrun {row['horovodrun']['seconds']:.2f}s "
              f"({row['horovodrun']['cpu_seconds']:.2f} CPU-s), distft {row['distft']['seconds']:.2f}s "
              f"({row['distft']['cpu_seconds']:.2f} CPU-s); stream of {args.epochs} epochs "
              f"{row['stream_by_epoch']:.2f}s by epoch, {row['stream_one']:.2f}s as one; a worker's "
              f"imports {row['imports_before']:.2f} CPU-s before, {row['imports_distft']:.2f} now",
              file=sys.stderr, flush=True)
        rounds.append(row)
    result = {
        "benchmark": "launch", "command": command,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "np": args.np, "worker": "python -c pass",
                     "epochs": args.epochs},
        "environment": environment(), "rounds": rounds,
        "median_wall_ratio": statistics.median(r["wall_ratio"] for r in rounds),
        "median_cpu_ratio": statistics.median(r["cpu_ratio"] for r in rounds),
        "median_stream_ratio": statistics.median(r["stream_ratio"] for r in rounds),
        "median_imports_ratio": statistics.median(r["imports_ratio"] for r in rounds),
    }
    print(table(result))
    save(result, args.output)
    return 0


def launch(name: str, np: int) -> dict[str, float]:
    """One launch of `np` idle workers by contender `name`: its seconds and CPU seconds."""
    before, started = resource.getrusage(resource.RUSAGE_CHILDREN), time.time()
    subprocess.run([*CONTENDERS[name], "-np", str(np), "-H", f"localhost:{np}", "--gloo",
                    sys.executable, "-c", "pass"], check=True, capture_output=True,
                   env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    seconds, after = time.time() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return {"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3)}


# What a worker imports before it trains, as distft imports it or as a plain script would.
IMPORTS = {"distft": "from distft import log; log.import_tensorflow(); import horovod.tensorflow",
           "before": "import keras, horovod.tensorflow"}


def ml_dtypes_070() -> str:
    """A folder holding ml_dtypes 0.7.0 alone (the release before distft's pin)."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="distft-bench-ml_dtypes-")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", folder,
                    "ml_dtypes==0.7.0"], check=True)
    return folder


def worker_imports(old_ml_dtypes: str | None) -> float:
    """CPU seconds of a process that imports what a worker imports: distft's way (None), or
    plainly with ml_dtypes 0.7.0 from `old_ml_dtypes` first on the path."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    if old_ml_dtypes:
        env["PYTHONPATH"] = os.pathsep.join([old_ml_dtypes, os.getcwd()])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", IMPORTS["before" if old_ml_dtypes else "distft"]], check=True,
                   capture_output=True, env=env)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime), 3)


def demo_training_data():
    """The demo's training shards, made ready (counted) for streams."""
    import tempfile

    import tensorflow as tf

    from distft.data.dataset import Source, load
    from distft.demo import make_demo_data

    paths = make_demo_data(tempfile.mkdtemp(prefix="distft-bench-"))
    tf.random.set_seed(42)  # distft's default --seed (the demo's pretraining set 0)
    return load(Source.open(paths["data"])).train


def stream_seconds(data, epochs: int, by_epoch: bool) -> float:
    """Seconds to build rank 0 of 2's shuffled training stream of `epochs` epochs."""
    from distft.data import dataset

    built_by_epoch = dataset._global_seed_is_zero
    dataset._global_seed_is_zero = lambda: by_epoch
    try:
        started = time.time()
        data.stream(0, 2, 8, (8, 8, 1), training=True, seed=42, epochs=(0, epochs))
        return round(time.time() - started, 3)
    finally:
        dataset._global_seed_is_zero = built_by_epoch


def table(result: dict[str, Any]) -> str:
    lines = [f"\n### A launch of {result['settings']['np']} idle workers: stock horovodrun / distft's",
             "", "| round | load | horovodrun s | distft s | ratio | horovodrun CPU-s | distft CPU-s | ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in result["rounds"]:
        h, d = r["horovodrun"], r["distft"]
        lines.append(f"| {r['round']} | {r['load']:.1f} | {h['seconds']:.2f} | {d['seconds']:.2f} | "
                     f"{r['wall_ratio']:.2f} | {h['cpu_seconds']:.2f} | {d['cpu_seconds']:.2f} | {r['cpu_ratio']:.2f} |")
    lines += ["", f"median: stock horovodrun takes {result['median_wall_ratio']:.2f}x the seconds and "
              f"{result['median_cpu_ratio']:.2f}x the CPU seconds of distft's launcher",
              "", f"### The training stream of {result['settings']['epochs']} epochs, built",
              "", "| round | epoch by epoch s | one pipeline s | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['stream_by_epoch']:.2f} | {r['stream_one']:.3f} | {r['stream_ratio']:.0f} |"
              for r in result["rounds"]]
    lines += ["", f"median: the epoch-by-epoch build takes {result['median_stream_ratio']:.0f}x the seconds",
              "", "### A worker's imports (TensorFlow, Keras, Horovod), CPU seconds",
              "", "| round | plain, ml_dtypes 0.7.0 | distft's | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['round']} | {r['imports_before']:.2f} | {r['imports_distft']:.2f} | {r['imports_ratio']:.2f} |"
              for r in result["rounds"]]
    lines += ["", f"median: the plain imports take {result['median_imports_ratio']:.2f}x the CPU seconds"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""--cache_frozen against plain training: head-only fine-tuning of MobileNetV2.

Both contenders run one-worker `distft train` on the same MobileNetV2 (alpha 0.35, 96x96x3,
random weights, a new 10-class head, everything else frozen) and the same synthetic images;
`cached` adds --cache_frozen. Each run is a fresh subprocess, and the contenders alternate
round by round. Reported: training throughput over the epochs after the first (the first
epoch includes the cache pass) and the validation accuracy of both. Goal: median
cached / plain >= 10, and accuracies within 0.5 points.

Example (from the repository root):
    python -m benchmarks frozen_cache --rounds=3
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import sys
import tempfile
from typing import Any

from benchmarks.common import alternate, child, environment, invocation, python, result_file, save

RESULTS = result_file("frozen_cache.json")
CONTENDERS = ("plain", "cached")
GOAL = 10.0
INPUT = (96, 96, 3)
CLASSES = 10
SEED = 42


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.prepare:
        prepare(args.workdir, args.records)
        print("{}")
        return 0
    if args.contender:
        print(json.dumps({"contender": args.contender,
                          **train(args.workdir, args.contender == "cached", args.epochs,
                                  args.batch_size, args.threads)}))
        return 0
    compare(args)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks frozen_cache",
                                description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="runs of each contender")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--records", type=int, default=1024, help="training records (16 steps/epoch)")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--workdir", help="folder for the model and data (default: a temp folder)")
    p.add_argument("--output", default=RESULTS, help="result JSON")
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    return p


def prepare(workdir: str, records: int) -> None:
    """base_model.keras (MobileNetV2 0.35 with a 20-class top) and noisy-prototype images."""
    import keras
    import numpy as np

    from distft.demo import write_tfrecords

    keras.utils.set_random_seed(SEED)
    base = keras.applications.MobileNetV2(input_shape=INPUT, alpha=0.35, weights=None, classes=20)
    rng = np.random.default_rng(SEED)
    prototypes = rng.random((CLASSES, *INPUT), dtype=np.float32)
    images = lambda y: 0.5 * prototypes[y] + 0.5 * rng.random((len(y), *INPUT), dtype=np.float32)
    # Random weights with BatchNorm's initial statistics give near-constant features (and
    # chance accuracy for both contenders); set the statistics from one batch of the data.
    norms = [l for l in base.layers if isinstance(l, keras.layers.BatchNormalization)]
    for layer in norms:
        layer.momentum = 0.0
    base(images(rng.integers(0, CLASSES, 128)), training=True)
    for layer in norms:
        layer.momentum = 0.999
    os.makedirs(os.path.join(workdir, "shards"), exist_ok=True)
    base.save(os.path.join(workdir, "base_model.keras"))
    for name, n, shards in (("train", records, 4), ("val", records // 4, 1)):
        y = rng.integers(0, CLASSES, n)
        write_tfrecords(images(y), y, os.path.join(workdir, "shards", f"{name}-{{:02d}}.tfrecord"),
                        shards)


def train(workdir: str, cache: bool, epochs: int, batch_size: int, threads: int) -> dict[str, Any]:
    """One worker of `distft train`, in-process, head only; its steady-state samples/s."""
    import distft

    m = distft.train(model=os.path.join(workdir, "base_model.keras"),
                     data=os.path.join(workdir, "shards", "train-*.tfrecord"),
                     val_data=os.path.join(workdir, "shards", "val-*.tfrecord"),
                     output_dir=os.path.join(workdir, f"run-{int(cache)}"), num_classes=CLASSES,
                     unfreeze="none", epochs=epochs, batch_size=batch_size, threads=threads,
                     cache_frozen=cache, seed=SEED, overwrite=True)
    return {"samples_per_sec": m["samples_per_sec"], "steps_per_epoch": m["steps_per_epoch"],
            "trainable_params": m["params"]["trainable"],
            "val_accuracy": m["validation"]["accuracy"], "seconds": m["seconds"]}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or tempfile.mkdtemp(prefix="distft-bench-")
    common = [f"--workdir={workdir}", f"--epochs={args.epochs}", f"--batch_size={args.batch_size}",
              f"--threads={args.threads}"]
    commands = {c: [python(), "-m", "benchmarks.frozen_cache", f"--contender={c}", *common]
                for c in CONTENDERS}
    command = invocation()
    print(f"command: {command}", flush=True)
    try:
        child([python(), "-m", "benchmarks.frozen_cache", "--prepare", f"--workdir={workdir}",
                f"--records={args.records}"])
        rounds = alternate(commands, args.rounds, "samples_per_sec")
        for row in rounds:
            row["ratio"] = row["cached"]["samples_per_sec"] / row["plain"]["samples_per_sec"]
            row["accuracy_gap"] = abs(row["cached"]["val_accuracy"] - row["plain"]["val_accuracy"])
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    seen = {(r[c]["steps_per_epoch"], r[c]["trainable_params"]) for r in rounds for c in CONTENDERS}
    if len(seen) != 1:
        raise RuntimeError(f"the contenders did different work (steps/epoch, weights): {seen}")
    ratio = statistics.median(r["ratio"] for r in rounds)
    gap = max(r["accuracy_gap"] for r in rounds)
    result = {
        "benchmark": "frozen_cache", "command": command,
        "contender_commands": {c: shlex.join(cmd) for c, cmd in commands.items()},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "epochs": args.epochs, "batch_size": args.batch_size,
                     "records": args.records, "threads": args.threads, "input": list(INPUT),
                     "model": "MobileNetV2 alpha=0.35 weights=None", "unfreeze": "none"},
        "environment": environment(),
        "rounds": rounds, "median_ratio": ratio, "max_accuracy_gap": gap, "goal": GOAL,
        "met": ratio >= GOAL and gap <= 0.005,
    }
    print(table(result))
    save(result, args.output)
    return result


def table(result: dict[str, Any]) -> str:
    s = result["settings"]
    lines = [f"\n### --cache_frozen vs plain: head-only MobileNetV2 0.35 {s['input']} (1 worker, "
             f"{s['threads']} threads, batch {s['batch_size']}, {s['epochs']} epochs of "
             f"{result['rounds'][0]['plain']['steps_per_epoch']} steps, first epoch not timed)\n",
             "| round | load (1 min) | plain samples/s | cached samples/s | cached / plain "
             "| plain val acc | cached val acc |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rounds"]:
        lines.append(f"| {r['round']} | {r['load']:.2f} | {r['plain']['samples_per_sec']:.1f} | "
                     f"{r['cached']['samples_per_sec']:.1f} | {r['ratio']:.1f} | "
                     f"{r['plain']['val_accuracy']:.4f} | {r['cached']['val_accuracy']:.4f} |")
    lines.append(f"\ngoal: median cached / plain >= {result['goal']:g} and accuracies within 0.5 "
                 f"points: {'met' if result['met'] else 'NOT met'} (median ratio "
                 f"{result['median_ratio']:.1f}, largest accuracy gap {result['max_accuracy_gap']:.4f})")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Overhead of distft: one-worker `distft train` against a bare Keras `model.fit` script.

Both contenders fine-tune the same base CNN (new 10-class softmax head, the last two weighted
layers unfrozen) on the same TFRecord shards, with the same batch size, epochs and CPU threads,
and report steady-state throughput (samples/s over the epochs after the first). Each run is a
fresh subprocess; the contenders alternate over several rounds (distft, keras, distft, keras,
...) so machine drift hits both alike. Goal: median distft/keras ratio >= 0.97.

Example (from the repository root):
    python -m benchmarks overhead --rounds=5
    python -m benchmarks.overhead --contender=keras --workdir=/tmp/w   # one run, one JSON line
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
from typing import Any, Optional

from benchmarks.common import alternate, child, environment, invocation, python, result_file, save

RESULTS = result_file("overhead.json")
CONTENDERS = ("distft", "keras")
GOAL = 0.97

INPUT = (32, 32, 3)
CLASSES = 10
UNFREEZE = "last:2"
LR = 1e-3
SEED = 42  # distft's default --seed
LOG_EVERY = 50  # distft's default --log_every


def main(argv: list[str]) -> int:
    """Entry point: the whole comparison, or (with --prepare / --contender) one child step."""
    args = _parser().parse_args(argv)
    if args.prepare:
        prepare(args.workdir, args.records, args.shards)
        print("{}")
        return 0
    if args.contender:
        result = (train_distft if args.contender == "distft" else train_keras)(
            args.workdir, args.epochs, args.batch_size, args.threads)
        print(json.dumps({"contender": args.contender, **result}))
        return 0
    compare(args)
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks overhead", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="runs of each contender")
    p.add_argument("--epochs", type=int, default=4, help="epochs per run (the first is not timed)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--records", type=int, default=6000, help="training records (~94 steps/epoch)")
    p.add_argument("--shards", type=int, default=4, help="TFRecord files")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)),
                   help="TF intra-op threads of both contenders (inter-op: max(2, threads))")
    p.add_argument("--workdir", help="folder for the model and data (kept; default: a temp folder)")
    p.add_argument("--output", default=RESULTS, help="result JSON")
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    return p


# --- the workload ------------------------------------------------------------------------------

def prepare(workdir: str, records: int, shards: int) -> None:
    """Write `base_model.keras` (a CNN, ~200k weights) and `records` synthetic images as TFRecords."""
    import keras
    import numpy as np

    from distft.demo import write_tfrecords

    spec = {"records": records, "shards": shards, "input": list(INPUT), "classes": CLASSES}
    if _workload(workdir) == spec and os.path.exists(os.path.join(workdir, "base_model.keras")):
        return
    keras.utils.set_random_seed(SEED)
    base = base_model()
    os.makedirs(os.path.join(workdir, "shards"), exist_ok=True)
    base.save(os.path.join(workdir, "base_model.keras"))
    # Images of CLASSES noisy prototypes: learnable, and realistic in size (3072 floats each).
    rng = np.random.default_rng(SEED)
    y = rng.integers(0, CLASSES, records)
    prototypes = rng.random((CLASSES, *INPUT), dtype=np.float32)
    x = 0.5 * prototypes[y] + 0.5 * rng.random((records, *INPUT), dtype=np.float32)
    write_tfrecords(x, y, os.path.join(workdir, "shards", "train-{:02d}.tfrecord"), shards)
    with open(os.path.join(workdir, "workload.json"), "w") as f:
        json.dump(spec, f)


def base_model(keras_module=None):
    """The base CNN (~200k weights) on 32x32x3 images, with a 20-class top, built with
    `keras_module` (default: Keras 3's `keras`; the report also builds it with `tf_keras`)."""
    if keras_module is None:
        import keras as keras_module

    L = keras_module.layers
    return keras_module.Sequential([
        L.Input(INPUT, name="image"),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv1"),
        L.BatchNormalization(name="bn1"),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        L.BatchNormalization(name="bn2"),
        L.MaxPooling2D(name="pool2"),
        L.Conv2D(64, 3, padding="same", activation="relu", name="conv3"),
        L.BatchNormalization(name="bn3"),
        L.MaxPooling2D(name="pool3"),
        L.Conv2D(64, 3, padding="same", activation="relu", name="conv4"),
        L.BatchNormalization(name="bn4"),
        L.MaxPooling2D(name="pool4"),
        L.Flatten(name="flatten"),
        L.Dense(128, activation="relu", name="features"),
        L.Dense(20, activation="softmax", name="classes"),
    ], name="bench_base")


def _workload(workdir: str) -> Optional[dict]:
    try:
        with open(os.path.join(workdir, "workload.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# --- the contenders (each runs in its own process) ---------------------------------------------

def train_distft(workdir: str, epochs: int, batch_size: int, threads: int) -> dict[str, Any]:
    """One worker of `distft train`, in-process; its own steady-state samples/s."""
    import distft

    m = distft.train(model=os.path.join(workdir, "base_model.keras"),
                     data=os.path.join(workdir, "shards", "train-*.tfrecord"),
                     output_dir=os.path.join(workdir, "run-distft"), num_classes=CLASSES,
                     unfreeze=UNFREEZE, epochs=epochs, batch_size=batch_size, lr=LR,
                     threads=threads, log_every=LOG_EVERY, seed=SEED, overwrite=True)
    return {"samples_per_sec": m["samples_per_sec"], "steps_per_epoch": m["steps_per_epoch"],
            "trainable_params": m["params"]["trainable"], "loss": m["train"]["loss"]}


def train_keras(workdir: str, epochs: int, batch_size: int, threads: int) -> dict[str, Any]:
    """The same fine-tuning as a plain Keras 3 script: tf.data, new head, freeze, compile, fit
    (the report's bare Keras contender, on this benchmark's files and threads, unpinned)."""
    from benchmarks.contenders import keras_fit

    spec = {"model": os.path.join(workdir, "base_model.keras"), "classes": CLASSES, "input": INPUT,
            "data": os.path.join(workdir, "shards", "train-*.tfrecord"), "first_trainable": "conv4",
            "records": _workload(workdir)["records"]}
    return keras_fit(spec, epochs, batch_size, (threads, max(2, threads)), pin=0, mode="keras")


# --- the comparison ----------------------------------------------------------------------------

def compare(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate the contenders over `args.rounds` rounds; print the table, write the JSON."""
    workdir = args.workdir or tempfile.mkdtemp(prefix="distft-bench-")
    common = [f"--workdir={workdir}", f"--epochs={args.epochs}", f"--batch_size={args.batch_size}",
              f"--threads={args.threads}"]
    commands = {c: [python(), "-m", "benchmarks.overhead", f"--contender={c}", *common]
                for c in CONTENDERS}
    command = invocation()
    print(f"command: {command}", flush=True)
    try:
        child([python(), "-m", "benchmarks.overhead", "--prepare", f"--workdir={workdir}",
                f"--records={args.records}", f"--shards={args.shards}"])
        rounds = alternate(commands, args.rounds, "samples_per_sec")
        for row in rounds:
            row["ratio"] = row["distft"]["samples_per_sec"] / row["keras"]["samples_per_sec"]
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    _check_same_work(rounds)

    ratio = statistics.median(r["ratio"] for r in rounds)
    result = {
        "benchmark": "overhead", "command": command,
        "contender_commands": {c: shlex.join(cmd) for c, cmd in commands.items()},
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {"rounds": args.rounds, "epochs": args.epochs, "batch_size": args.batch_size,
                     "records": args.records, "shards": args.shards, "threads": args.threads,
                     "input": list(INPUT), "classes": CLASSES, "unfreeze": UNFREEZE, "lr": LR},
        "environment": environment(),
        "rounds": rounds,
        "median": {c: statistics.median(r[c]["samples_per_sec"] for r in rounds) for c in CONTENDERS},
        "median_ratio": ratio, "goal": GOAL, "met": ratio >= GOAL,
    }
    print(table(result))
    save(result, args.output)
    return result


def table(result: dict[str, Any]) -> str:
    """The result as a Markdown table, one row per round, then the medians and the verdict."""
    s = result["settings"]
    lines = [f"\n### distft overhead: 1 worker vs bare Keras ({s['threads']} threads, batch "
             f"{s['batch_size']}, {s['epochs']} epochs of {result['rounds'][0]['keras']['steps_per_epoch']}"
             f" steps, first epoch not timed)\n",
             "| round | load (1 min) | distft samples/s | keras samples/s | distft / keras |",
             "|---:|---:|---:|---:|---:|"]
    for r in result["rounds"]:
        lines.append(f"| {r['round']} | {r['load']:.2f} | {r['distft']['samples_per_sec']:.1f} | "
                     f"{r['keras']['samples_per_sec']:.1f} | {r['ratio']:.3f} |")
    m = result["median"]
    lines.append(f"| **median** | | {m['distft']:.1f} | {m['keras']:.1f} | **{result['median_ratio']:.3f}** |")
    verdict = "met" if result["met"] else "NOT met"
    lines.append(f"\ngoal: median distft / keras >= {result['goal']}: {verdict} "
                 f"({result['median_ratio']:.3f})")
    return "\n".join(lines)


def _check_same_work(rounds: list[dict]) -> None:
    """Both contenders must train the same weights for the same steps, or the ratio means nothing."""
    seen = {(r[c]["steps_per_epoch"], r[c]["trainable_params"]) for r in rounds for c in CONTENDERS}
    if len(seen) != 1:
        raise RuntimeError(f"the contenders did different work (steps/epoch, trainable weights): {seen}")



if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

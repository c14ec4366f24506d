"""The input pipeline is not the bottleneck: records/s of one worker's whole image pipeline
(read, decode, resize, augment, preprocess) against the training step's consumption.

Goal: **pipeline records/s / training records/s >= 2** (median over rounds).

Usage (from the repository root):
    .venv/bin/python -m benchmarks input [--rounds=2 --images=1500 --batch_size=32]

Data: `--images` JPEGs (160x160, smooth colour fields with noise, about 8-12 KB each) in an
image folder, written to shards by `distft shard`. Model: MobileNetV2 (alpha 0.35, 96x96x3,
weights=None) with a new 10-class head, trained from `block_13_expand` on.

| contender | what is timed |
|---|---|
| `pipeline` | `Ready.stream(training=True, preprocess="mobilenet_v2", augment=flip,crop,rotate,color)` batches, iterated and discarded |
| `train` | `model.fit` steps on one batch held in memory (no input work) |

Each is a fresh subprocess with the same threads (`--threads`, intra-op, inter-op max(2, threads)),
alternated round by round; the first batches/steps are warm-up and not timed.
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
import time
from typing import Any

from benchmarks.common import alternate, child, invocation, python, result_file, save, save_mobilenet

SHAPE = (96, 96, 3)
CLASSES = 10
UNFREEZE = "from:block_13_expand"
AUGMENT = ("flip", "crop", "rotate", "color")
CONTENDERS = ("pipeline", "train")


def prepare(workdir: str, images: int) -> None:
    """An image folder of JPEGs, its shards (distft shard), and the MobileNetV2 base."""
    import numpy as np
    import tensorflow as tf

    import distft

    rng = np.random.default_rng(0)
    for i in range(images):
        folder = os.path.join(workdir, "images", f"class{i % CLASSES}")
        os.makedirs(folder, exist_ok=True)
        corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
        field = tf.image.resize(corners[None], (160, 160)).numpy()[0]
        img = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
        with open(os.path.join(folder, f"{i}.jpg"), "wb") as f:
            f.write(tf.io.encode_jpeg(img, quality=90).numpy())
    distft.shard(os.path.join(workdir, "images"), os.path.join(workdir, "shards"), num_shards=8,
                 workers=2)
    save_mobilenet(os.path.join(workdir, "base.keras"), SHAPE, CLASSES)


def _threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))


def pipeline(workdir: str, batch_size: int, steps: int, threads: int) -> dict[str, Any]:
    _threads(threads)
    from distft.data.dataset import Source, load

    ds = load(Source.open(os.path.join(workdir, "shards"))).train
    it = iter(ds.stream(0, 1, batch_size, SHAPE, training=True, seed=0, shuffle_buffer=1000,
                        epochs=(0, 1000), preprocess="mobilenet_v2", augment=AUGMENT))
    for _ in range(5):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        next(it)
    return {"records_per_sec": steps * batch_size / (time.perf_counter() - start)}


def train(workdir: str, batch_size: int, steps: int, threads: int) -> dict[str, Any]:
    _threads(threads)
    import keras
    import tensorflow as tf

    from distft.model.prepare import prepare as prepare_model

    ft = prepare_model(os.path.join(workdir, "base.keras"), num_classes=CLASSES, unfreeze=UNFREEZE)
    ft.model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss=ft.loss, metrics=ft.metrics)
    x = tf.random.uniform((batch_size, *SHAPE), -1, 1)
    y = tf.random.uniform((batch_size,), 0, CLASSES, tf.int64)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    ft.model.fit(data, steps_per_epoch=5, epochs=1, verbose=0)  # warm-up: tracing, first steps
    start = time.perf_counter()
    ft.model.fit(data, steps_per_epoch=steps, epochs=1, verbose=0)
    return {"records_per_sec": steps * batch_size / (time.perf_counter() - start),
            "trainable_params": ft.trainable_params}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="distft-bench-input-")
    common = [f"--workdir={workdir}", f"--batch_size={args.batch_size}", f"--steps={args.steps}",
              f"--threads={args.threads}"]
    commands = {c: [python(), "-m", "benchmarks.input", f"--contender={c}", *common] for c in CONTENDERS}
    command = invocation()
    print(f"command: {command}", flush=True)
    try:
        child([python(), "-m", "benchmarks.input", "--prepare", f"--workdir={workdir}",
                f"--images={args.images}"])
        rounds = alternate(commands, args.rounds, "records_per_sec")
        for row in rounds:
            row["ratio"] = row["pipeline"]["records_per_sec"] / row["train"]["records_per_sec"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    ratio = statistics.median(r["ratio"] for r in rounds)
    result = {"benchmark": "input", "command": command,
              "contender_commands": {c: shlex.join(cmd) for c, cmd in commands.items()},
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "settings": {**vars(args), "input": list(SHAPE), "unfreeze": UNFREEZE,
                           "augment": list(AUGMENT), "preprocess": "mobilenet_v2"},
              "rounds": rounds, "median_ratio": ratio, "goal": 2.0, "passed": ratio >= 2.0}
    print("\n| round | pipeline records/s | training records/s | ratio | load |\n|---|---|---|---|---|")
    for r in rounds:
        print(f"| {r['round']} | {r['pipeline']['records_per_sec']:.1f} | "
              f"{r['train']['records_per_sec']:.1f} | {r['ratio']:.2f} | {r['load']:.1f} |")
    print(f"\nmedian ratio {ratio:.2f} (goal >= 2): {'PASS' if result['passed'] else 'FAIL'}")
    save(result, result_file("input.json"))
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks input", description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--images", type=int, default=1500)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prepare:
        prepare(args.workdir, args.images)
        print("{}")
        return 0
    if args.contender:
        fn = pipeline if args.contender == "pipeline" else train
        print(json.dumps(fn(args.workdir, args.batch_size, args.steps, args.threads)))
        return 0
    return 0 if compare(args)["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

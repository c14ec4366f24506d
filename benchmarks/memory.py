"""Peak memory per worker does not grow with the data set: the same 2-worker training job (the
same epochs and steps) over a generated ~1 GB and ~8 GB data set (TFRecord shards, manifest).

Goal: **peak RSS (8 GB) / peak RSS (1 GB) within 10%**, for every worker.

Usage (from the repository root):
    .venv/bin/python -m benchmarks memory [--small_gb=1 --large_gb=8 --np=2 --rounds=1]

Each job is a fresh `horovodrun -np NP python -m benchmarks.memory --worker ...`; every worker
runs `distft.train` in-process (`--epochs` epochs of `--steps_per_epoch` steps: one pass over
the small set per epoch; the large set is 8 times longer, and each epoch reads other files),
then prints one JSON line with its own peak RSS
(`ru_maxrss`) and the bytes it read (`/proc/self/io` rchar, before and after). The data is
written into a temporary folder and deleted afterwards.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

from benchmarks.common import ROOT, invocation, result_file, save

SHAPE = (128, 128, 1)  # 64 KiB of floats per record
CLASSES = 10
SHARD_MB = 64
BATCH = 256
SHUFFLE = 1000


def generate(folder: str, gigabytes: float, seed: int = 0) -> dict[str, Any]:
    """Write ~`gigabytes` of float records in 64 MB shards, a manifest and a small model."""
    import numpy as np
    import tensorflow as tf

    from distft.data.manifest import Manifest
    from distft.data.writer import shard_name

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    size = int(np.prod(SHAPE))
    # 64 distinct records, each shard a different rotation of them: fast to write, real bytes.
    templates = [tf.train.Example(features=tf.train.Features(feature={
        "x": tf.train.Feature(float_list=tf.train.FloatList(value=rng.random(size, np.float32))),
        "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[i % CLASSES]))}))
        .SerializeToString() for i in range(64)]
    per_shard = SHARD_MB * (1 << 20) // len(templates[0])
    num = max(2, round(gigabytes * (1 << 30) / (per_shard * len(templates[0]))))
    shards = []
    for s in range(num):
        path = os.path.join(folder, shard_name(s, num))
        with tf.io.TFRecordWriter(path) as w:
            for i in range(per_shard):
                w.write(templates[(i + s) % len(templates)])
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                digest.update(chunk)
        shards.append({"file": os.path.basename(path), "records": per_shard,
                       "bytes": os.path.getsize(path), "sha256": digest.hexdigest()})
    Manifest(shards=shards, schema={"features": {"x": {"dtype": "float32", "shape": [size]},
                                                 "y": {"dtype": "int64", "shape": []}},
                                    "y_min": 0, "y_max": CLASSES - 1},
             source="benchmarks.memory.generate", seed=seed).save(folder)
    return {"shards": num, "records": num * per_shard, "bytes": sum(s["bytes"] for s in shards)}


def write_model(path: str) -> None:
    """A small CNN, saved by Keras 3 at `path` (a .keras file)."""
    import keras

    L = keras.layers
    keras.Sequential([L.Input(SHAPE), L.Conv2D(4, 4, strides=4, activation="relu"),
                      L.GlobalAveragePooling2D(), L.Dense(CLASSES, activation="softmax")]
                     ).save(path)


def worker(data: str, model: str, output_dir: str, epochs: int, steps: Optional[int] = None
           ) -> dict[str, Any]:
    """One worker of the job (under horovodrun): train, report peak RSS and bytes read."""
    import horovod.tensorflow  # noqa: F401 - imported before the count: not data reads
    import tensorflow  # noqa: F401

    from distft.api import train

    before = _io()
    metrics = train(model=model, data=data, output_dir=output_dir, epochs=epochs,
                           steps_per_epoch=steps,
                           batch_size=BATCH, shuffle_buffer=SHUFFLE, overwrite=True, log_every=10**6)
    after = _io()
    return {"bench": "worker", "rank": int(os.environ.get("HOROVOD_RANK", 0)),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rchar": after["rchar"] - before["rchar"],
            "read_bytes": after["read_bytes"] - before["read_bytes"],
            "steps": metrics["steps_run"], "seconds": metrics["seconds"]}


def _io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def run_job(workdir: str, data: str, np_: int, epochs: int = 1, steps: Optional[int] = None
            ) -> tuple[list[dict], str]:
    """Run the training job on `np_` workers; every worker's JSON result, and the command."""
    cmd = [os.path.join(os.path.dirname(sys.executable), "horovodrun"), "-np", str(np_), "-H",
           f"localhost:{np_}", "--gloo", sys.executable, "-m", "benchmarks.memory", "--worker",
           f"--data={data}", f"--model={os.path.join(workdir, 'model.keras')}",
           f"--output_dir={os.path.join(workdir, 'run')}", f"--epochs={epochs}",
           *([f"--steps={steps}"] if steps else [])]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=1800)
    results = [json.loads(line[line.index('{"bench"'):]) for line in proc.stdout.splitlines()
               if '{"bench"' in line]
    if proc.returncode or len(results) != np_:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return sorted(results, key=lambda r: r["rank"]), shlex.join(cmd)


def compare(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="distft-bench-memory-")
    command = invocation()
    print(f"command: {command}", flush=True)
    try:
        sets = {"small": args.small_gb, "large": args.large_gb}
        write_model(os.path.join(workdir, "model.keras"))
        data = {}
        for name, gb in sets.items():
            started = time.time()
            data[name] = generate(os.path.join(workdir, name), gb)
            print(f"  generated {name}: {data[name]['bytes'] / 2**30:.2f} GiB in "
                  f"{data[name]['shards']} shards ({time.time() - started:.0f}s)", file=sys.stderr, flush=True)
        rounds = []
        for r in range(1, args.rounds + 1):
            row: dict[str, Any] = {"round": r, "load": os.getloadavg()[0]}
            steps = data["small"]["records"] // (args.np * BATCH)
            for name in sets:
                row[name], row[f"{name}_command"] = run_job(workdir, os.path.join(workdir, name),
                                                            args.np, args.epochs, steps)
                print(f"  round {r} {name}: peak RSS " + ", ".join(
                    f"rank {w['rank']} {w['peak_rss_mb']:.0f} MB" for w in row[name]) +
                    f" ({row[name][0]['seconds']:.0f}s)", file=sys.stderr, flush=True)
            row["ratio"] = [l["peak_rss_mb"] / s["peak_rss_mb"] for s, l in zip(row["small"], row["large"])]
            rounds.append(row)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    worst = max(abs(x - 1) for r in rounds for x in r["ratio"])
    result = {"benchmark": "memory", "command": command,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "settings": {"np": args.np, "epochs": args.epochs, "batch_size": BATCH, "shuffle_buffer": SHUFFLE,
                           "record_shape": list(SHAPE), "shard_mb": SHARD_MB},
              "data": data, "rounds": rounds, "worst_ratio_deviation": worst, "goal": 0.10,
              "passed": worst <= 0.10}
    print("\n| round | data | GiB | epochs x steps/worker | " + " | ".join(f"rank {i} peak RSS MB" for i in range(args.np))
          + " | load |\n|---|---|---|---|" + "---|" * args.np + "---|")
    for r in rounds:
        for name in sets:
            print(f"| {r['round']} | {name} | {data[name]['bytes'] / 2**30:.2f} | "
                  f"{len(r[name][0]['steps'][0])} x {r[name][0]['steps'][0][0]} | " + " | ".join(f"{w['peak_rss_mb']:.0f}" for w in r[name])
                  + f" | {r['load']:.1f} |")
        print(f"| {r['round']} | ratio large/small | | | " + " | ".join(f"{x:.3f}" for x in r["ratio"]) + " | |")
    print(f"\nworst |ratio - 1| = {worst:.3f} (goal <= 0.10): {'PASS' if result['passed'] else 'FAIL'}")
    save(result, result_file("memory.json"))
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks memory", description=__doc__.splitlines()[0])
    p.add_argument("--small_gb", type=float, default=1.0)
    p.add_argument("--large_gb", type=float, default=8.0)
    p.add_argument("--np", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--output_dir", help=argparse.SUPPRESS)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.data, args.model, args.output_dir, args.epochs, args.steps)),
              flush=True)
        return 0
    return 0 if compare(args)["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The data layouts of issue #14: `.npz` image arrays and image folders against `distft shard`'s
TFRecord shards of the same images, and raw uint8 against PNG records in shards.

Goals / questions:
1. `npz`: **.npz input / TFRecord shards input >= 1** (records/s of the input pipeline, and
   samples/s of the same `distft train` job), for data that fits in memory (the issue: the
   per-row generator gave 255-310 samples/s against 367 from shards).
2. `folder`: what reading an image folder directly costs against its shards: start-up
   (`load(Source.open(...))`, and `first_step_seconds` of the run) and samples/s.
3. `pixels`: is raw uint8 (what `distft shard` writes for uint8 image arrays) the right record
   layout, against PNG-encoded and raw with GZIP TFRecord compression: bytes per record and
   parse+decode records/s.

Usage (from the repository root):
    .venv/bin/python -m benchmarks layouts [--parts=npz,folder,pixels --rounds=3 --images=1280]

Data (written once into a temporary `--workdir`): `--images` uint8 images 96x96x3 (smooth
colour fields + noise, as `benchmarks/input.py` makes them; 10 classes, round robin) saved as one
`images.npz` (x (N, 96, 96, 3) uint8, y (N,) int64), `distft shard` of it into 4 shards
(`shards_npz/`, raw uint8 records); the same images as PNG files in 10 class subfolders
(`folder/`) and `distft shard` of that folder into 4 shards (`shards_folder/`, PNG records).
For part 3 also the demo's 1797 8x8 digits scaled to [0, 255] and resized to 28x28x1 uint8.
Model: MobileNetV2 (alpha 0.35, 96x96x3, weights=None, avg pooling + Dense 10, `.keras`).

| part | contender | what is timed |
|---|---|---|
| npz | `pipeline:npz`, `pipeline:shards` | `load(Source.open(...))` (seconds), then `stream(0, 1, 32, (96, 96, 3), training=True, preprocess="mobilenet_v2")` batches iterated (5 warm-up batches, then `--steps` timed) |
| npz | `train:npz`, `train:shards` | `python -m distft train` (the CLI) on 1 worker: `--num_classes=10 --unfreeze=from:block_13_expand --epochs=2 --batch_size=32 --preprocess=mobilenet_v2`; `samples_per_sec` (the 2nd epoch) and `first_step_seconds` of its metrics.json |
| folder | `pipeline:folder`, `pipeline:shards` | as above, on the PNG folder and its shards |
| folder | `train:folder`, `train:shards` | as above |
| pixels | `raw`, `png`, `raw_gzip` | one TFRecord file per layout and data set (Example: `x` bytes, `y` int64); `TFRecordDataset -> map(parse_single_example + decode_raw/decode_image, AUTOTUNE) -> batch(256)` repeated, iterated: about one pass of warm-up, then batches for >= 2 s |

Every contender runs in a fresh process; the contenders of a part alternate round by round
(`common.alternate`), and every figure is reported as a ratio of contenders of the same round
(median over rounds); the open + count seconds are given as they are (a manifest makes
them ~0, so their ratio means nothing). Pipelines and decoders run with 2 intra-op threads (inter-op 2); `distft
train` with its defaults.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.common import alternate, child, environment, invocation, python, result_file, save, \
    save_mobilenet

SHAPE = (96, 96, 3)
CLASSES = 10
UNFREEZE = "from:block_13_expand"
PARTS = ("npz", "folder", "pixels")
LAYOUTS = ("raw", "png", "raw_gzip")
PIXEL_SETS = ("images96", "digits28")
DATA = {"npz": "images.npz", "shards": "shards_npz", "folder": "folder", "folder_shards": "shards_folder"}


# --- data ----------------------------------------------------------------------------------------

def prepare(workdir: str, images: int) -> None:
    import numpy as np
    import tensorflow as tf

    import distft

    rng = np.random.default_rng(0)
    x = np.empty((images, *SHAPE), np.uint8)
    for i in range(images):
        corners = rng.integers(0, 256, (2, 2, 3)).astype(np.float32)
        field = tf.image.resize(corners[None], SHAPE[:2]).numpy()[0]
        x[i] = np.clip(field + rng.normal(0, 12, field.shape), 0, 255).astype(np.uint8)
    y = np.arange(images, dtype=np.int64) % CLASSES
    np.savez(os.path.join(workdir, "images.npz"), x=x, y=y)
    distft.shard(os.path.join(workdir, "images.npz"), os.path.join(workdir, "shards_npz"), num_shards=4,
                 workers=2)
    for i in range(images):
        folder = os.path.join(workdir, "folder", f"class{y[i]}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{i:05d}.png"), "wb") as f:
            f.write(tf.io.encode_png(x[i]).numpy())
    distft.shard(os.path.join(workdir, "folder"), os.path.join(workdir, "shards_folder"), num_shards=4,
                 workers=2)
    save_mobilenet(os.path.join(workdir, "base.keras"), SHAPE, CLASSES)

    # Part 3: one TFRecord file per layout and data set.
    from distft.demo import load_digits

    d = load_digits()
    digits = tf.image.resize(np.round(d.images * 255 / 16)[..., None], (28, 28)).numpy()
    arrays = {"images96": (x, y), "digits28": (np.clip(np.round(digits), 0, 255).astype(np.uint8),
                                                d.target.astype(np.int64))}
    os.makedirs(os.path.join(workdir, "pixels"), exist_ok=True)
    info = {}
    for name, (xs, ys) in arrays.items():
        for layout in LAYOUTS:
            path = os.path.join(workdir, "pixels", f"{name}-{layout}.tfrecord")
            options = tf.io.TFRecordOptions(compression_type="GZIP" if layout == "raw_gzip" else "")
            with tf.io.TFRecordWriter(path, options) as w:
                for img, label in zip(xs, ys):
                    data = tf.io.encode_png(img).numpy() if layout == "png" else img.tobytes()
                    w.write(_example(data, int(label)))
            info[f"{name}-{layout}"] = {"records": len(xs), "bytes": os.path.getsize(path),
                                        "bytes_per_record": os.path.getsize(path) / len(xs),
                                        "pixel_bytes": int(np.prod(xs.shape[1:]))}
        # the layouts hold the same pixels (PNG is lossless)
        for layout in LAYOUTS:
            got = np.stack([img.numpy() for img, _ in _decoded(workdir, name, layout, xs.shape[1:])])
            assert np.array_equal(got, xs), (name, layout)
    with open(os.path.join(workdir, "pixels", "info.json"), "w") as f:
        json.dump(info, f)


def _example(data: bytes, label: int) -> bytes:
    import tensorflow as tf

    f = tf.train.Feature
    return tf.train.Example(features=tf.train.Features(feature={
        "x": f(bytes_list=tf.train.BytesList(value=[data])),
        "y": f(int64_list=tf.train.Int64List(value=[label]))})).SerializeToString()


def _decoded(workdir: str, name: str, layout: str, shape: tuple):
    """(uint8 image, label) records of one part-3 file, parsed and decoded in parallel."""
    import tensorflow as tf

    spec = {"x": tf.io.FixedLenFeature([], tf.string), "y": tf.io.FixedLenFeature([], tf.int64)}

    def decode(record):
        r = tf.io.parse_single_example(record, spec)
        if layout == "png":
            img = tf.io.decode_image(r["x"], channels=shape[-1], expand_animations=False)
        else:
            img = tf.reshape(tf.io.decode_raw(r["x"], tf.uint8), shape)
        return tf.ensure_shape(img, shape), r["y"]

    path = os.path.join(workdir, "pixels", f"{name}-{layout}.tfrecord")
    return tf.data.TFRecordDataset(path, "GZIP" if layout == "raw_gzip" else "", 1 << 20).map(
        decode, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


# --- contenders ----------------------------------------------------------------------------------

def _threads(threads: int) -> None:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(max(2, threads))


def pipeline(data: str, batch_size: int, steps: int, threads: int) -> dict[str, Any]:
    """Open + count seconds, then records/s of one worker's training stream."""
    _threads(threads)
    from distft.data.dataset import Source, load

    started = time.perf_counter()
    ds = load(Source.open(data)).train
    counts = ds.counts
    open_count = time.perf_counter() - started
    it = iter(ds.stream(0, 1, batch_size, SHAPE, training=True, preprocess="mobilenet_v2"))
    first = time.perf_counter()
    x, _ = next(it)
    first_batch = time.perf_counter() - first
    for _ in range(4):
        next(it)
    start = time.perf_counter()
    for _ in range(steps):
        x, _ = next(it)
    seconds = time.perf_counter() - start
    assert tuple(x.shape) == (batch_size, *SHAPE), x.shape
    return {"records_per_sec": steps * batch_size / seconds, "open_count_seconds": open_count,
            "first_batch_seconds": first_batch, "records": sum(counts.train), "format": ds.layout.format,
            "x_kind": ds.layout.x_kind}


def train(workdir: str, data: str, output_dir: str, epochs: int, batch_size: int) -> dict[str, Any]:
    """`distft train` (the CLI, a fresh process) on 1 worker; figures from its metrics.json."""
    cmd = [sys.executable, "-m", "distft", "train", f"--model={os.path.join(workdir, 'base.keras')}",
           f"--data={data}", f"--output_dir={output_dir}", "--num_classes=10", f"--unfreeze={UNFREEZE}",
           f"--epochs={epochs}", f"--batch_size={batch_size}", "--preprocess=mobilenet_v2", "--overwrite"]
    started = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - started
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    with open(os.path.join(output_dir, "metrics.json")) as f:
        m = json.load(f)
    return {"samples_per_sec": m["samples_per_sec"], "first_step_seconds": m["first_step_seconds"],
            "wall_seconds": wall, "run_seconds": m["seconds"], "steps_per_epoch": m["steps_per_epoch"],
            "trainable": m["params"]["trainable"], "train": m["train"], "command": shlex.join(cmd)}


def decode(workdir: str, layout: str, threads: int, min_seconds: float = 2.0) -> dict[str, Any]:
    """Parse + decode records/s of one layout, for each part-3 data set."""
    _threads(threads)
    import tensorflow as tf

    with open(os.path.join(workdir, "pixels", "info.json")) as f:
        info = json.load(f)
    out: dict[str, Any] = {}
    for name in PIXEL_SETS:
        shape = (96, 96, 3) if name == "images96" else (28, 28, 1)
        it = iter(_decoded(workdir, name, layout, shape).repeat().batch(256).prefetch(tf.data.AUTOTUNE))
        for _ in range(info[f"{name}-{layout}"]["records"] // 256 + 1):  # warm-up: about one pass
            next(it)
        records, start = 0, time.perf_counter()
        while time.perf_counter() - start < min_seconds:
            x, _ = next(it)
            records += int(x.shape[0])
        out[name] = {"records_per_sec": records / (time.perf_counter() - start),
                     "bytes_per_record": info[f"{name}-{layout}"]["bytes_per_record"]}
    out["records_per_sec"] = out["images96"]["records_per_sec"]  # the figure alternate() prints
    return out


# --- the comparison ------------------------------------------------------------------------------

def _ratios(rounds: list[dict], a: str, b: str, key: str) -> list[float]:
    return [r[a][key] / r[b][key] for r in rounds]


def compare(args: argparse.Namespace) -> dict[str, Any]:
    parts = [p for p in args.parts.split(",") if p]
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown --parts {sorted(unknown)}: choose from {','.join(PARTS)}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="distft-bench-layouts-")
    os.makedirs(workdir, exist_ok=True)
    command = invocation()
    print(f"command: {command}", flush=True)
    me = [python(), "-m", "benchmarks.layouts", f"--workdir={workdir}"]
    result: dict[str, Any] = {
        "benchmark": "layouts", "command": command, "environment": environment(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {**vars(args), "input": list(SHAPE), "unfreeze": UNFREEZE, "preprocess": "mobilenet_v2",
                     "shards": 4}, "parts": {}}
    started = time.time()
    try:
        if not os.path.exists(os.path.join(workdir, "pixels", "info.json")):
            t = time.time()
            child([*me, "--prepare", f"--images={args.images}"])
            print(f"data written in {time.time() - t:.0f}s", file=sys.stderr, flush=True)
        with open(os.path.join(workdir, "pixels", "info.json")) as f:
            result["pixels_info"] = json.load(f)
        for name in ("shards_npz", "shards_folder"):
            with open(os.path.join(workdir, name, "manifest.json")) as f:
                m = json.load(f)
            result[f"{name}_manifest"] = {"features": m["schema"]["features"],
                                          "bytes_per_record": sum(s["bytes"] for s in m["shards"]) /
                                          sum(s["records"] for s in m["shards"])}

        def pipe(data: str) -> list[str]:
            return [*me, "--contender=pipeline", f"--data={os.path.join(workdir, DATA[data])}",
                    f"--batch_size={args.batch_size}", f"--steps={args.steps}", f"--threads={args.threads}"]

        def job(data: str) -> list[str]:
            return [*me, "--contender=train", f"--data={os.path.join(workdir, DATA[data])}",
                    f"--output_dir={os.path.join(workdir, 'runs', data)}", f"--epochs={args.epochs}",
                    f"--batch_size={args.batch_size}"]

        for part, (a, b) in (("npz", ("npz", "shards")), ("folder", ("folder", "folder_shards"))):
            if part not in parts:
                continue
            print(f"\n[{part}] input pipeline: {a} vs {b}", file=sys.stderr, flush=True)
            pr = alternate({a: pipe(a), b: pipe(b)}, args.rounds, "records_per_sec")
            print(f"[{part}] distft train: {a} vs {b}", file=sys.stderr, flush=True)
            tr = alternate({a: job(a), b: job(b)}, args.rounds, "samples_per_sec")
            for r in tr:
                if (r[a]["steps_per_epoch"], r[a]["trainable"]) != (r[b]["steps_per_epoch"], r[b]["trainable"]):
                    raise RuntimeError(f"the {a} and {b} runs differ: {r[a]} / {r[b]}")
            res = {"contenders": [a, b], "pipeline_rounds": pr, "train_rounds": tr, "median": {
                "pipeline_records_per_sec": statistics.median(_ratios(pr, a, b, "records_per_sec")),
                f"open_count_seconds {a}": statistics.median(r[a]["open_count_seconds"] for r in pr),
                f"open_count_seconds {b}": statistics.median(r[b]["open_count_seconds"] for r in pr),
                "train_samples_per_sec": statistics.median(_ratios(tr, a, b, "samples_per_sec")),
                "first_step_seconds": statistics.median(_ratios(tr, a, b, "first_step_seconds")),
                "wall_seconds": statistics.median(_ratios(tr, a, b, "wall_seconds"))}}
            result["parts"][part] = res
        if "pixels" in parts:
            print("\n[pixels] parse + decode: raw vs png vs raw_gzip", file=sys.stderr, flush=True)
            rounds = alternate({l: [*me, "--contender=decode", f"--layout={l}", f"--threads={args.threads}"]
                                for l in LAYOUTS}, args.rounds, "records_per_sec")
            median = {}
            for name in PIXEL_SETS:
                for other in ("png", "raw_gzip"):
                    median[f"{name}: {other}/raw records_per_sec"] = statistics.median(
                        r[other][name]["records_per_sec"] / r["raw"][name]["records_per_sec"] for r in rounds)
                    median[f"{name}: {other}/raw bytes_per_record"] = (
                        result["pixels_info"][f"{name}-{other}"]["bytes_per_record"] /
                        result["pixels_info"][f"{name}-raw"]["bytes_per_record"])
            result["parts"]["pixels"] = {"rounds": rounds, "median": median}
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result["seconds"] = round(time.time() - started)
    _print(result)
    save(result, args.output or result_file("layouts.json"))
    return result


def _print(result: dict[str, Any]) -> None:
    parts = result["parts"]
    for part in ("npz", "folder"):
        if part not in parts:
            continue
        a, b = parts[part]["contenders"]
        print(f"\n### {part}: {a} vs {b}\n\n| round | load | pipeline {a} / {b} rec/s | open+count {a} / {b} s "
              f"| train {a} / {b} samples/s | first step {a} / {b} s |\n|---|---|---|---|---|---|")
        for p, t in zip(parts[part]["pipeline_rounds"], parts[part]["train_rounds"]):
            print(f"| {p['round']} | {p['load']:.1f} / {t['load']:.1f} | {p[a]['records_per_sec']:.0f} / "
                  f"{p[b]['records_per_sec']:.0f} | {p[a]['open_count_seconds']:.2f} / "
                  f"{p[b]['open_count_seconds']:.2f} | {t[a]['samples_per_sec']:.0f} / "
                  f"{t[b]['samples_per_sec']:.0f} | {t[a]['first_step_seconds']:.1f} / "
                  f"{t[b]['first_step_seconds']:.1f} |")
        print("\nmedians (ratios " + f"{a}/{b}): " + ", ".join(
            f"{k} {v:.3g}" for k, v in parts[part]["median"].items()))
    if "pixels" in parts:
        info = result["pixels_info"]
        print("\n### pixels: records/s (parse + decode) per round, bytes per record\n\n"
              "| data | layout | bytes/record | records/s by round |\n|---|---|---|---|")
        for name in PIXEL_SETS:
            for layout in LAYOUTS:
                rates = " / ".join(f"{r[layout][name]['records_per_sec']:.0f}" for r in parts["pixels"]["rounds"])
                print(f"| {name} | {layout} | {info[f'{name}-{layout}']['bytes_per_record']:.0f} | {rates} |")
        print("\nmedian ratios: " + ", ".join(f"{k} {v:.3f}" for k, v in parts["pixels"]["median"].items()))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks layouts", description=__doc__.splitlines()[0])
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated: npz,folder,pixels")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=1280)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=60, help="timed pipeline batches (after 5 warm-up)")
    p.add_argument("--threads", type=int, default=2, help="pipeline and decode threads")
    p.add_argument("--workdir", help="keep and reuse the data there (default: a temporary folder)")
    p.add_argument("--output", help="result file (default: benchmarks/results/layouts-TAG.json)")
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--contender", choices=("pipeline", "train", "decode"), help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--output_dir", help=argparse.SUPPRESS)
    p.add_argument("--layout", choices=LAYOUTS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prepare:
        prepare(args.workdir, args.images)
        print("{}")
        return 0
    if args.contender == "pipeline":
        print(json.dumps(pipeline(args.data, args.batch_size, args.steps, args.threads)))
    elif args.contender == "train":
        print(json.dumps(train(args.workdir, args.data, args.output_dir, args.epochs, args.batch_size)))
    elif args.contender == "decode":
        print(json.dumps(decode(args.workdir, args.layout, args.threads)))
    else:
        compare(args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

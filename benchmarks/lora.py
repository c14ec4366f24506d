"""--lora against --unfreeze of the same layers, on the same 2-worker job: trainable weights,
gradient bytes allreduced per step (from Horovod's timeline) and validation accuracy.

The job: tests/data/make_transformer.py's transformer-block text classifier (Embedding,
MultiHeadAttention, Dense FFN; written by stock Keras, pretrained on task A) fine-tuned with a
new 4-class head on task B's token data, `distft train --np=2`. `lora` trains rank-RANK factors
on every Dense, EinsumDense and Embedding layer (embed, the attention's query, key, value and
output projections, ffn_1, ffn_2); `unfreeze` trains those layers whole
(`--unfreeze=re:^(embed|attention|ffn_1|ffn_2)$`). Both train the new head too, with the same
seed, data, epochs and learning rate.

Example (from the repository root):
    python -m benchmarks lora --epochs=4 --rank=4
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Any

from benchmarks import communication
from benchmarks.common import ROOT, environment, invocation, python, result_file, save

RESULTS = result_file("lora.json")
MAKE = os.path.join(ROOT, "tests", "data", "make_transformer.py")
LAYERS = "re:^(embed|attention|ffn_1|ffn_2)$"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks lora", description=__doc__.split("\n")[0])
    p.add_argument("--rank", type=int, default=4, help="--lora rank")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch_size", type=int, default=32, help="per worker")
    p.add_argument("--lr", type=float, default=1e-3, help="for one worker (scaled by 2)")
    p.add_argument("--records", type=int, default=2048, help="training records")
    p.add_argument("--workdir", help="folder for the model, data and runs (default: a temp folder)")
    p.add_argument("--output", default=RESULTS, help="result JSON")
    args = p.parse_args(argv)
    workdir = args.workdir or tempfile.mkdtemp(prefix="distft-bench-lora-")
    print(f"command: {invocation()}", flush=True)
    try:
        subprocess.run([python(), MAKE, workdir, f"--records={args.records}"], cwd=ROOT, check=True)
        contenders = {"lora": {"lora": args.rank}, "unfreeze": {"unfreeze": LAYERS}}
        runs = {name: train(workdir, name, options, args) for name, options in contenders.items()}
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    result = {"benchmark": "lora", "command": invocation(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "output")},
              "environment": environment(), "runs": runs}
    print(table(result))
    save(result, args.output)
    return 0


def train(workdir: str, name: str, options: dict, args: argparse.Namespace) -> dict[str, Any]:
    """One 2-worker `distft train` with Horovod's timeline on: its figures."""
    import distft

    timeline = os.path.join(workdir, f"timeline-{name}.json")
    os.environ["HOROVOD_TIMELINE"] = timeline  # the launcher passes it to the workers
    try:
        m = distft.train(model=os.path.join(workdir, "transformer.keras"),
                         data=os.path.join(workdir, "train.npz"), val_data=os.path.join(workdir, "val.npz"),
                         output_dir=os.path.join(workdir, name), num_classes=4, epochs=args.epochs,
                         batch_size=args.batch_size, lr=args.lr, np=2, overwrite=True,
                         log_every=1000, **options)
    finally:
        del os.environ["HOROVOD_TIMELINE"]
    steps = m["steps_per_epoch"] * (m["epochs"] - m["initial_epoch"])
    stats = communication.allreduced(timeline, steps)
    print(f"  {name}: {m['params']['trainable']} trainable weights, "
          f"{stats['gradient_bytes_per_step']:.0f} bytes/step, val accuracy "
          f"{m['validation']['accuracy']:.4f} ({m['seconds']:.0f}s)", file=sys.stderr, flush=True)
    return {"options": options, "trainable_params": m["params"]["trainable"],
            "frozen_params": m["params"]["frozen"],
            "gradient_bytes_per_step": stats["gradient_bytes_per_step"],
            "gradient_tensors": stats["gradient_tensors"],
            "expected_bytes_per_step": 4 * m["params"]["trainable"],
            "val_accuracy_before": m["validation_before"]["accuracy"],
            "val_accuracy": m["validation"]["accuracy"], "val_loss": m["validation"]["loss"],
            "samples_per_sec": m["samples_per_sec"], "seconds": round(m["seconds"], 1),
            "steps_per_epoch": m["steps_per_epoch"], "lora": m.get("lora")}


def table(result: dict[str, Any]) -> str:
    s, runs = result["settings"], result["runs"]
    lora, whole = runs["lora"], runs["unfreeze"]
    rows = [("trainable weights", "trainable_params", "{:d}"),
            ("frozen weights", "frozen_params", "{:d}"),
            ("gradient bytes allreduced per step (timeline)", "gradient_bytes_per_step", "{:.0f}"),
            ("gradient tensors per step", "gradient_tensors", "{:d}"),
            ("validation accuracy before", "val_accuracy_before", "{:.4f}"),
            ("validation accuracy after", "val_accuracy", "{:.4f}"),
            ("validation loss after", "val_loss", "{:.4f}"),
            ("samples/s", "samples_per_sec", "{:.0f}")]
    lines = [f"\n### --lora={s['rank']} against --unfreeze={LAYERS}: transformer block, 2 workers, "
             f"batch {s['batch_size']} each, {s['epochs']} epochs of {lora['steps_per_epoch']} steps\n",
             "| | --lora | --unfreeze | lora / unfreeze |", "|---|---:|---:|---:|"]
    for label, key, fmt in rows:
        ratio = lora[key] / whole[key] if whole[key] else float("nan")
        lines.append(f"| {label} | {fmt.format(lora[key])} | {fmt.format(whole[key])} | {ratio:.3f} |")
    lines.append(f"\nLoRA layers: {', '.join(lora['lora']['layers'])}")
    return "\n".join(lines)

"""The per-step cost of elastic mode when nothing fails: the same 2-worker `distft train`, fixed
against elastic (`--min_np=1` over two host names of this machine) with the default
`--commit_every` and with commits every 10 steps.

The workload is the overhead benchmark's CNN on synthetic 32x32x3 images, every layer
fine-tuned (`--unfreeze=all`), so that a commit copies all weights and Adam's two slots. Each
run is a fresh job; the contenders alternate over the rounds so that machine drift hits all
alike. Figures: steady-state samples/s (the epochs after the first), its ratio to the fixed
job's in the same round, and the workers' own measure of a commit (ms, from metrics.json).

Example (from the repository root):
    python -m benchmarks elastic --rounds=3
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import sys
import tempfile
from typing import Any

from benchmarks import overhead
from benchmarks.common import alternate, child, environment, invocation, python, result_file, save

RESULTS = result_file("elastic.json")
CONTENDERS = {"fixed": {}, "elastic": {"min_np": 1},
              "elastic_every_10": {"min_np": 1, "commit_every": 10}}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks elastic", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="runs of each contender")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    p.add_argument("--batch_size", type=int, default=32, help="per worker")
    p.add_argument("--records", type=int, default=4000, help="training records")
    p.add_argument("--workdir", help="folder for the model and data (kept; default: a temp folder)")
    p.add_argument("--output", default=RESULTS, help="result JSON")
    p.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.contender:
        print(json.dumps(train(args.workdir, args.contender, args.epochs, args.batch_size)))
        return 0
    compare(args)
    return 0


def train(workdir: str, name: str, epochs: int, batch_size: int) -> dict[str, Any]:
    """One 2-worker job of contender `name`; its figures."""
    import distft

    m = distft.train(model=os.path.join(workdir, "base_model.keras"),
                     data=os.path.join(workdir, "shards", "train-*.tfrecord"),
                     output_dir=os.path.join(workdir, f"run-{name}"), num_classes=overhead.CLASSES,
                     unfreeze="all", epochs=epochs, batch_size=batch_size, lr=overhead.LR, np=2,
                     hosts="localhost:1,127.0.0.1:1", overwrite=True, log_every=1000,
                     **CONTENDERS[name])
    elastic = m.get("elastic", {})
    return {"samples_per_sec": m["samples_per_sec"], "trainable_params": m["params"]["trainable"],
            "commits": elastic.get("commits", 0), "commit_ms": elastic.get("commit_ms"),
            "checksum": m["weights_checksums"][0]}


def compare(args: argparse.Namespace) -> dict[str, Any]:
    workdir = args.workdir or tempfile.mkdtemp(prefix="distft-bench-elastic-")
    commands = {c: [python(), "-m", "benchmarks.elastic", f"--contender={c}", f"--workdir={workdir}",
                    f"--epochs={args.epochs}", f"--batch_size={args.batch_size}"] for c in CONTENDERS}
    print(f"command: {invocation()}", flush=True)
    try:
        child([python(), "-m", "benchmarks.overhead", "--prepare", f"--workdir={workdir}",
               f"--records={args.records}", "--shards=4"])
        rounds = alternate(commands, args.rounds, "samples_per_sec")
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    for row in rounds:
        row["ratio"] = {c: row[c]["samples_per_sec"] / row["fixed"]["samples_per_sec"] for c in CONTENDERS}
    result = {
        "benchmark": "elastic", "command": invocation(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "output", "contender")},
        "environment": environment(), "rounds": rounds,
        "median_ratio": {c: statistics.median(r["ratio"][c] for r in rounds) for c in CONTENDERS},
        "median_commit_ms": {c: statistics.median(r[c]["commit_ms"] for r in rounds)
                             for c in CONTENDERS if c != "fixed"},
        # Elastic mode must not change the training: the same weights as the fixed job.
        "same_weights": all(len({r[c]["checksum"] for c in CONTENDERS}) == 1 for r in rounds),
    }
    print(table(result))
    save(result, args.output)
    return result


def table(result: dict[str, Any]) -> str:
    rows = ["| round | load | " + " | ".join(f"{c} samples/s" for c in CONTENDERS) +
            " | elastic / fixed | elastic_every_10 / fixed |", "|" + "---|" * (4 + len(CONTENDERS))]
    for r in result["rounds"]:
        rows.append(f"| {r['round']} | {r['load']:.1f} | " +
                    " | ".join(f"{r[c]['samples_per_sec']:.0f}" for c in CONTENDERS) +
                    f" | {r['ratio']['elastic']:.3f} | {r['ratio']['elastic_every_10']:.3f} |")
    m, ms = result["median_ratio"], result["median_commit_ms"]
    first = result["rounds"][0]
    rows.append(f"\nmedian ratio to fixed: elastic {m['elastic']:.3f}, every 10 steps "
                f"{m['elastic_every_10']:.3f}; one commit: {ms['elastic']:.1f} ms "
                f"({first['elastic']['trainable_params']} trainable weights + Adam slots; "
                f"{first['elastic']['commits']} and {first['elastic_every_10']['commits']} commits a run); "
                f"same weights as fixed: {result['same_weights']}")
    return "\n".join(rows)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

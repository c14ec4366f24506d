"""Each worker reads only its own files: bytes read per worker against total / workers.

Goal: **each worker's bytes read / (data bytes / workers) close to 1** (here: within 0.9-1.1).

Usage (from the repository root):
    .venv/bin/python -m benchmarks bytes_read [--gb=1 --np=2]

One `horovodrun -np NP` job of `python -m benchmarks.memory --worker` (one epoch over a
generated data set of float records with a manifest, deleted afterwards); each worker reports
the bytes it read during `distft.train` (`rchar` of /proc/self/io: every read and pread,
page cache or disk; it also counts the model file and other small reads).
"""
from __future__ import annotations

import argparse
import datetime
import os
import shutil
import sys
import tempfile
from typing import Any

from benchmarks.common import invocation, result_file, save
from benchmarks.memory import generate, run_job, write_model


def measure(args: argparse.Namespace) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="distft-bench-bytes-")
    command = invocation()
    print(f"command: {command}", flush=True)
    try:
        write_model(os.path.join(workdir, "model.keras"))
        data = generate(os.path.join(workdir, "data"), args.gb)
        workers, worker_command = run_job(workdir, os.path.join(workdir, "data"), args.np)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    fair = data["bytes"] / args.np
    for w in workers:
        w["ratio"] = w["rchar"] / fair
    passed = all(0.9 <= w["ratio"] <= 1.1 for w in workers)
    result = {"benchmark": "bytes_read", "command": command, "worker_command": worker_command,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "data": data, "np": args.np, "workers": workers, "passed": passed}
    print(f"\ndata: {data['bytes'] / 2**20:.0f} MiB in {data['shards']} shards, {args.np} workers, "
          f"1 epoch; fair share {fair / 2**20:.0f} MiB\n")
    print("| rank | bytes read (rchar) MiB | ratio to fair share | disk read_bytes MiB |\n|---|---|---|---|")
    for w in workers:
        print(f"| {w['rank']} | {w['rchar'] / 2**20:.0f} | {w['ratio']:.3f} | {w['read_bytes'] / 2**20:.0f} |")
    print(f"\n{'PASS' if passed else 'FAIL'} (goal: every ratio within 0.9-1.1)")
    save(result, result_file("bytes_read.json"))
    return result


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks bytes_read", description=__doc__.splitlines()[0])
    p.add_argument("--gb", type=float, default=1.0)
    p.add_argument("--np", type=int, default=2)
    return 0 if measure(p.parse_args(argv))["passed"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

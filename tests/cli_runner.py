"""Run several `distft` commands one after another in one process, each through distft's own
command line (`distft.cli.main`, as the `distft` executable runs it): as the workers of one job
under horovodrun, so that tests share one launch (one start of the workers, TensorFlow and
Horovod) between many trainings. tests/equivalence_runner.py does the same through the API.

RUNS is a JSON list of {"name": ..., "argv": [...], "cwd": optional folder}; the exit code and
seconds of every command go to STATUS (written by rank 0). Each command's output is framed by
`cli_runner: begin NAME` and `cli_runner: end NAME: exit CODE` lines (`segments` splits a
launch's output by them).

Example:
    horovodrun -np 2 -H localhost:2 --gloo python tests/cli_runner.py runs.json status.json
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
import traceback


def main(runs_path: str, status_path: str) -> None:
    from distft import cli, log
    from distft.launch.environment import detect

    log.quiet_tensorflow()
    log.import_tensorflow()
    import keras

    # A launcher ends a job when its rank 0 exits; here the ranks go on to the next command, so
    # a rank > 0 need not wait for rank 0 to report a shared error.
    cli.SHARED_ERROR_GRACE = 0.0

    with open(runs_path) as f:
        runs = json.load(f)
    status, home = {}, os.getcwd()
    for run in runs:
        name = run["name"]
        # What one run leaves in Keras' global state must not reach the next.
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy("float32")
        print(f"cli_runner: begin {name}", flush=True)
        started = time.time()
        os.chdir(run.get("cwd") or home)
        try:
            cli.main(run["argv"])
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except Exception:  # recorded for the test; the next run still runs
            traceback.print_exc()
            code = 1
        finally:
            os.chdir(home)
        sys.stdout.flush()
        sys.stderr.flush()
        status[name] = {"code": code, "seconds": round(time.time() - started, 1)}
        print(f"cli_runner: end {name}: exit {code} ({status[name]['seconds']}s)", flush=True)
    if detect().rank == 0:
        with open(status_path, "w") as f:
            json.dump(status, f, indent=1)


def segments(out: str, every_rank: bool = False) -> dict[str, str]:
    """A launch's output per command: the lines between rank 0's begin and end lines (with
    `every_rank`, each rank's lines between its own)."""
    found, current = {}, {}
    for line in out.splitlines():
        rank = re.match(r"\[(\d+)\]", line)
        rank = rank.group(1) if rank else None
        if rank != "0" and not every_rank:
            continue
        mark = re.search(r"cli_runner: (begin|end) (\S+)", line)
        if mark:
            current[rank] = mark.group(2) if mark.group(1) == "begin" else None
            if current[rank]:
                found.setdefault(current[rank], [])
        elif current.get(rank):
            found[current[rank]].append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


if __name__ == "__main__":
    main(*sys.argv[1:3])

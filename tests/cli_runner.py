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
        mark(f"cli_runner: begin {name}")
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
        mark(f"cli_runner: end {name}: exit {code} ({status[name]['seconds']}s)")
    if detect().rank == 0:
        with open(status_path, "w") as f:
            json.dump(status, f, indent=1)


def mark(line: str) -> None:
    """A begin or end line on both streams: a launcher relays each stream on its own, so a
    stream's lines are framed by its own marks."""
    for stream in (sys.stdout, sys.stderr):
        print(line, file=stream, flush=True)


def segments(out: str, every_rank: bool = False) -> dict[str, str]:
    """A launch's output per command: the lines of rank 0 (with `every_rank`, of every rank)
    between the begin and end marks of their own stream (`[RANK]<stdout>` or `<stderr>`)."""
    found, current = {}, {}
    for line in out.splitlines():
        stream = re.match(r"\[(\d+)\]<\w+>", line)
        if not stream or (stream.group(1) != "0" and not every_rank):
            continue
        mark = re.search(r"cli_runner: (begin|end) (\S+)", line)
        if mark:
            current[stream.group(0)] = mark.group(2) if mark.group(1) == "begin" else None
            found.setdefault(mark.group(2), [])
        elif current.get(stream.group(0)):
            found[current[stream.group(0)]].append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


if __name__ == "__main__":
    main(*sys.argv[1:3])

"""The fault tests under load (issue 31): the elastic tests and the fixed-size job's faults
(tests/test_elastic.py; tests/test_faults.py's SIGSTOP of rank 0 and of rank 1 with a planted
divergence, SIGKILL over Gloo and MPI, data files removed mid-run), run by
pytest on this machine as it is and again with a CPU hog beside them (one busy process per
core, as on a shared node), the two loads alternating round by round. For each test: its
outcome, its seconds, and the figures it prints (the time from a fault to its detection or to
the job going on), side by side.

A fault must be detected and handled alike under load: a join that takes 30 s must not abort
the job, a loaded worker must not be taken for a stalled one, and each time to detection stays
within its bound (the tests assert those bounds under either load).

Example (from the repository root):
    python -m benchmarks faults --rounds=1
    python -m benchmarks faults --tests=tests/test_lab_faults.py   # the cluster lab's cells (root)
"""
from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from typing import Any

from benchmarks.common import ROOT, environment, invocation, result_file, save

RESULTS = result_file("faults.json")
TESTS = ("tests/test_elastic.py", "tests/test_faults.py::test_a_stopped_rank_is_named_and_resume_goes_on",
         "tests/test_faults.py::test_killed_worker_ends_the_job_within_60s",
         "tests/test_faults.py::test_worker_that_fails_mid_run_ends_the_job")
LOADS = ("as it is", "cpu hog")
HOG = "while True: pass"
TIMEOUT = 3600  # seconds for one pytest run


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks faults", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--tests", default=",".join(TESTS), help="pytest node ids, comma-separated")
    p.add_argument("--output", default=RESULTS, help="result JSON")
    args = p.parse_args(argv)
    command = invocation()
    print(f"command: {command}", flush=True)
    tests = [t for t in args.tests.split(",") if t]
    rounds = []
    for r in range(1, args.rounds + 1):
        row: dict[str, Any] = {"round": r}
        for load in LOADS:
            row[load] = run(tests, hog=load == "cpu hog")
            failed = [name for name, t in row[load].items() if t["outcome"] != "passed"]
            print(f"  round {r}/{args.rounds}, {load}: {len(row[load]) - len(failed)} of {len(row[load])} "
                  f"passed in {sum(t['seconds'] for t in row[load].values()):.0f} s"
                  f"{'; failed: ' + ', '.join(failed) if failed else ''}", file=sys.stderr, flush=True)
        rounds.append(row)
    result = {"benchmark": "faults", "command": command,
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "settings": {"rounds": args.rounds, "tests": tests, "hog": f"{os.cpu_count()} x python -c '{HOG}'"},
              "environment": environment(), "rounds": rounds}
    print(table(result))
    save(result, args.output)
    return 0 if all(t["outcome"] == "passed" for row in rounds for load in LOADS for t in row[load].values()) else 1


def run(tests: list[str], hog: bool) -> dict[str, dict[str, Any]]:
    """Each test's outcome, seconds and printed lines, from one pytest run (with the hog's
    busy processes beside it when `hog`)."""
    hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(os.cpu_count() or 1)] if hog else []
    with tempfile.TemporaryDirectory(prefix="distft-faults-") as folder:
        report = os.path.join(folder, "junit.xml")
        started = time.time()
        try:
            subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                            "-o", "junit_logging=system-out", *tests], cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=TIMEOUT)
        finally:
            for h in hogs:
                h.kill()
                h.wait()
        if not os.path.exists(report):
            return {"pytest": {"outcome": "no report", "seconds": round(time.time() - started), "printed": []}}
        return {f"{case.get('classname', '').split('.')[-1]}::{case.get('name')}": outcome(case)
                for case in ElementTree.parse(report).iter("testcase")}


def outcome(case: ElementTree.Element) -> dict[str, Any]:
    """One junit test case: passed/failed/error/skipped, seconds, and the lines it printed."""
    kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
    printed = "".join(child.text or "" for child in case if child.tag == "system-out")
    lines = [line.strip() for line in printed.splitlines() if line.strip() and not line.startswith("-")]
    return {"outcome": {"failure": "failed", "error": "error", "skipped": "skipped"}.get(kinds[0], kinds[0]) if kinds
            else "passed", "seconds": round(float(case.get("time", 0)), 1), "printed": lines}


def table(result: dict[str, Any]) -> str:
    """Markdown: per test and round, each load's outcome and seconds, then what it printed."""
    lines = ["", f"| test | round | {' | '.join(LOADS)} |", "|---|---:|" + "---|" * len(LOADS)]
    notes = []
    for row in result["rounds"]:
        for name in dict.fromkeys(n for load in LOADS for n in row[load]):
            cells = [row[load].get(name, {"outcome": "not run", "seconds": 0}) for load in LOADS]
            lines.append(f"| {name.split('::')[-1]} | {row['round']} | " +
                         " | ".join(f"{c['outcome']}, {c['seconds']:.0f} s" for c in cells) + " |")
            for load, c in zip(LOADS, cells):
                notes += [f"- {name.split('::')[-1]} ({load}, round {row['round']}): {p}" for p in c.get("printed", [])]
    return "\n".join(lines + [""] + notes)

"""The performance report: every goal of distft's performance issue, measured in one session.

Parts (each run is a fresh subprocess printing one JSON line; see benchmarks/contenders.py):
1. throughput: per workload, round by round: bare Keras (1 worker) and distft (1 worker) side
   by side, each on its own core (they swap cores every round: the same moment's machine for
   both, and the other core busy as it is for 2 workers), then distft (2 workers) and
   MultiWorkerMirroredStrategy (2 workers); one compute thread per worker, each worker on its
   own core. Goals: distft/Keras >= 0.97, distft 2/1 >= 1.70 (scaling efficiency >= 0.85),
   distft/MWMS >= 1.10. The same runs give each contender's time from launch to the end of
   its first step (distft x2 starts through horovodrun -np 2; Keras x1 is a bare script's
   import, build and first step).
2. communication: bytes allreduced per step from Horovod's timeline against 4 (fp16: 2) bytes
   per trainable weight, and one gradient tensor per trainable variable.
3. data size: epoch time of distft (2 workers) and Keras (1 worker) against records.
Writes benchmarks/results/report.json, report.md and throughput.png, scaling.png, epoch_time.png.

Example (from the repository root):
    python -m benchmarks report                      # the full report (sized for < 20 min on 2 quiet cores)
    python -m benchmarks report --rounds=1 --epochs=2 --workloads=cnn   # a quick look
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Optional

from benchmarks import communication
from benchmarks.common import RESULTS, child, environment, invocation, python
from benchmarks.workloads import WORKLOADS

THROUGHPUT = (("keras", 1), ("distft", 1), ("distft", 2), ("mwms", 2))
GOALS = {"overhead": 0.97, "scaling": 1.70, "vs_mwms": 1.10}
BATCH = 32
RECORDS = {"mobilenet": 2048, "cnn": 4096}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of the throughput contenders")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    p.add_argument("--workloads", default="mobilenet,cnn", help=f"comma-separated: {','.join(WORKLOADS)}")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the records of every workload")
    p.add_argument("--parts", default="throughput,communication,size")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "distft-report"),
                   help="models and data, written once and reused")
    p.add_argument("--output", default=RESULTS, help="folder for report.json, report.md, *.png")
    a = p.parse_args(argv)
    workdir = a.workdir
    started = time.time()
    report: dict[str, Any] = {
        "benchmark": "report", "command": invocation(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "settings": {"rounds": a.rounds, "epochs": a.epochs, "batch_size": BATCH, "threads": 1,
                     "records": {w: int(RECORDS[w] * a.scale) for w in a.workloads.split(",")}},
        "environment": {**environment(), "load_at_start": os.getloadavg()},
    }
    print(f"command: {report['command']}", flush=True)
    parts = a.parts.split(",")
    specs = {w: _spec(workdir, w, n) for w, n in report["settings"]["records"].items()
             if {"throughput", "size"} & set(parts)}
    if "throughput" in parts:
        report["throughput"] = {w: throughput(s, a.rounds, a.epochs) for w, s in specs.items()}
    if "communication" in parts:  # bytes per step do not depend on the records: 16 steps
        report["communication"] = {w: comm(_spec(workdir, w, 32 * BATCH))
                                   for w in report["settings"]["records"]}
    if "size" in parts:
        w = "mobilenet" if "mobilenet" in specs else next(iter(specs))
        report["size"] = size_sweep(workdir, specs[w], a.epochs, report.get("throughput", {}).get(w))
    report["minutes"] = round((time.time() - started) / 60, 1)
    os.makedirs(a.output, exist_ok=True)
    with open(os.path.join(a.output, "report.json"), "w") as f:
        json.dump(report, f, indent=2)
    text = markdown(report)
    with open(os.path.join(a.output, "report.md"), "w") as f:
        f.write(text + "\n")
    plots(report, a.output)
    print(text)
    print(f"\nwritten: {os.path.relpath(a.output)}/report.json, report.md, *.png "
          f"({report['minutes']} min)")
    return 0


def _spec(workdir: str, workload: str, records: int) -> str:
    """Write the workload (once) in a child process; the path of its workload.json."""
    code = (f"import json; from benchmarks.workloads import prepare; "
            f"print(json.dumps(prepare({workdir!r}, {workload!r}, {records})))")
    child([python(), "-c", code])
    return os.path.join(workdir, f"{workload}-{records}", "workload.json")


def _command(spec: str, contender: str, workers: int, epochs: int, threads: int = 1, pin: int = 1,
             core: int = 0, inter: int = 2, **extra: Any) -> list[str]:
    """The command line of one contender's run (`inter`: the bare scripts' inter-op threads;
    `extra`: more distft options)."""
    cmd = [python(), "-m", "benchmarks.contenders", f"--contender={contender}", f"--spec={spec}",
           f"--workers={workers}", f"--epochs={epochs}", f"--batch_size={BATCH}",
           f"--threads={threads}", f"--pin={pin}", f"--core={core}", f"--inter={inter}"]
    return cmd + ([f"--extra={json.dumps(extra)}"] if extra else [])


def _run(spec: str, contender: str, workers: int, epochs: int, threads: int = 1, pin: int = 1,
         env: Optional[dict[str, str]] = None, **options: Any) -> dict[str, Any]:
    """One contender's run in a fresh process, with `env` added; its result, seconds and time
    from launch to the end of its first step."""
    return _timed([_command(spec, contender, workers, epochs, threads, pin, **options)], env)[0]


def _timed(commands: list[list[str]], env: Optional[dict[str, str]] = None) -> list[dict[str, Any]]:
    """Run the commands at the same time (each on its own cores); their results, timed."""
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(len(commands)) as pool:
        results = list(pool.map(lambda cmd: child(cmd, env), commands))
    for result in results:
        result["seconds"] = round(time.time() - started, 1)
        result["first_step_seconds"] = round(result.pop("first_step_at") - started, 1)
    return results


# --- 1. throughput -----------------------------------------------------------------------------

def throughput(spec: str, rounds: int, epochs: int) -> dict[str, Any]:
    """Alternate the contenders round by round; per-round ratios and their summary."""
    rows = []
    for r in range(1, rounds + 1):
        row: dict[str, Any] = {"round": r, "load": os.getloadavg()[0]}
        singles, multis = [t for t in THROUGHPUT if t[1] == 1], [t for t in THROUGHPUT if t[1] > 1]
        results = _timed([_command(spec, c, n, epochs, core=(r + i) % 2) for i, (c, n) in enumerate(singles)])
        results += [_run(spec, c, n, epochs) for c, n in multis]
        for (c, n), res in zip(singles + multis, results):
            row[f"{c}{n}"] = res
            print(f"  {os.path.basename(os.path.dirname(spec))} round {r}/{rounds} {c} x{n}: "
                  f"{res['samples_per_sec']:.1f} samples/s, first step {res['first_step_seconds']:.1f}s "
                  f"({res['seconds']:.0f}s)", file=sys.stderr, flush=True)
        rows.append(row)
    work = {(v["steps_per_epoch"] * v["workers"], v["trainable_params"])
            for row in rows for v in row.values() if isinstance(v, dict) and "workers" in v}
    if len(work) != 1:
        raise RuntimeError(f"the contenders did different work (steps x workers, trainable weights): {work}")
    return summary(rows)


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-round ratios; medians over rounds; each goal's ratio.

    A ratio with a 1-worker run in it is the geometric mean, over the two core assignments of
    the side-by-side runs, of its median within each: in some sessions one core of this VM ran
    ~12% slower than the other, and with an odd number of rounds one assignment counts twice.
    """
    for row in rows:
        sps = {k: v["samples_per_sec"] for k, v in row.items() if isinstance(v, dict) and "samples_per_sec" in v}
        row["ratios"] = {"overhead": sps["distft1"] / sps["keras1"], "scaling": sps["distft2"] / sps["distft1"],
                         "mwms_scaling": sps["mwms2"] / sps["keras1"], "vs_mwms": sps["distft2"] / sps["mwms2"]}

    def balanced(key: str) -> float:
        by_core: dict[int, list[float]] = {}
        for row in rows:
            by_core.setdefault(row["distft1"]["core"], []).append(row["ratios"][key])
        return math.prod(statistics.median(v) for v in by_core.values()) ** (1 / len(by_core))

    keys = [f"{c}{n}" for c, n in THROUGHPUT]
    return {"rounds": rows,
            "median": {k: statistics.median(r[k]["samples_per_sec"] for r in rows) for k in keys},
            "first_step_seconds": {k: statistics.median(r[k]["first_step_seconds"] for r in rows) for k in keys},
            "ratios": {k: statistics.median(r["ratios"][k] for r in rows) if k == "vs_mwms" else balanced(k)
                       for k in rows[0]["ratios"]},
            "trainable_params": rows[0]["distft1"]["trainable_params"]}


# --- 2. communication --------------------------------------------------------------------------

def comm(spec: str) -> dict[str, Any]:
    """A short 2-worker distft run per compression, with Horovod's timeline on."""
    out = {}
    for compression, width in (("none", 4), ("fp16", 2)):
        with tempfile.TemporaryDirectory(prefix="distft-timeline-") as tmp:
            path = os.path.join(tmp, "timeline.json")
            res = _run(spec, "distft", 2, 1, env={"HOROVOD_TIMELINE": path}, compression=compression)
            stats = communication.allreduced(path, res["steps_per_epoch"])
        expected = width * res["trainable_params"]
        out[compression] = {**stats, "expected_bytes_per_step": expected,
                            "trainable_params": res["trainable_params"],
                            "met": stats["gradient_bytes_per_step"] == expected}
        print(f"  communication {compression}: {stats['gradient_bytes_per_step']:.0f} bytes/step "
              f"(expected {expected})", file=sys.stderr, flush=True)
    return out


# --- 3. epoch time against data size -----------------------------------------------------------

def size_sweep(workdir: str, spec: str, epochs: int, measured: Optional[dict] = None) -> dict[str, Any]:
    """Steady-state epoch seconds of distft x2 and Keras x1 at 1/4, 1/2 and all the records
    (all: the throughput part's medians when given)."""
    with open(spec) as f:
        w = json.load(f)
    rows = []
    for records in (w["records"] // 4, w["records"] // 2, w["records"]):
        row: dict[str, Any] = {"records": records}
        for c, n in (("keras", 1), ("distft", 2)):
            steps = -(-records // (n * BATCH))
            if records == w["records"] and measured:
                sps = measured["median"][f"{c}{n}"]
            else:
                sps = _run(_spec(workdir, w["name"], records), c, n, epochs)["samples_per_sec"]
            row[f"{c}{n}"] = steps * n * BATCH / sps
        print(f"  size {records}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return {"workload": w["name"], "rows": rows}


# --- output ------------------------------------------------------------------------------------

def markdown(r: dict[str, Any]) -> str:
    s = r["settings"]
    lines = [f"## distft performance report ({r['date']}, {r['environment']['cpus']} CPUs, "
             f"load at start {r['environment']['load_at_start'][0]:.2f}, {r['minutes']} min)\n",
             f"command: `{r['command']}`; batch {s['batch_size']} per worker, 1 compute thread per "
             f"worker, each worker pinned to its own core (the two 1-worker runs side by side, one per "
             f"core); bare scripts at 2 inter-op threads, distft at its default; {s['rounds']} "
             f"round(s) of {s['epochs']} epochs (first not timed). Ratios with a 1-worker run: the "
             "geometric mean over the two core assignments of the median ratio within each; other "
             "figures: medians over rounds.\n",
             *[f"note: {n}\n" for n in r.get("notes", [])],
             "| goal | workload | measured | goal | met |", "|---|---|---:|---:|:---:|"]
    for w, t in r.get("throughput", {}).items():
        q = t["ratios"]
        lines += [f"| 1. overhead: distft 1 worker / bare Keras | {w} | {q['overhead']:.3f} | >= {GOALS['overhead']} | {_ok(q['overhead'] >= GOALS['overhead'])} |",
                  f"| 2. scaling: distft 2 / 1 workers (efficiency) | {w} | {q['scaling']:.2f} ({q['scaling'] / 2:.2f}) | >= {GOALS['scaling']} (0.85) | {_ok(q['scaling'] >= GOALS['scaling'])} |",
                  f"| 3. distft 2 workers / MWMS 2 workers | {w} | {q['vs_mwms']:.3f} | >= {GOALS['vs_mwms']} | {_ok(q['vs_mwms'] >= GOALS['vs_mwms'])} |"]
    for w, c in r.get("communication", {}).items():
        for comp, v in c.items():
            lines.append(f"| 4. bytes allreduced/step ({comp}), gradient tensors | {w} | "
                         f"{v['gradient_bytes_per_step']:.0f}, {v['gradient_tensors']} | "
                         f"{v['expected_bytes_per_step']} | {_ok(v['met'])} |")
    for w, t in r.get("throughput", {}).items():
        f = t["first_step_seconds"]
        lines.append(f"| 5. seconds from launch to the first step's end: distft x2 (horovodrun -np 2) / "
                     f"bare Keras x1 (import, build, first step) | {w} | {f['distft2']:.1f} / {f['keras1']:.1f} "
                     f"(distft x1 {f['distft1']:.1f}, MWMS x2 {f['mwms2']:.1f}) | report | - |")
    if r.get("communication") and r.get("throughput"):
        lines += ["\n### where 2 workers lose time: a step's milliseconds\n",
                  "Steps from the throughput medians (distft x2: 2 x 32 samples per step); waiting and "
                  "allreduce from rank 0's Horovod timeline in the communication run (no compression), "
                  "medians over its steps: from rank 0's last gradient of the step to every rank's "
                  "being ready (waiting for the other worker), then to the end of the reduction.\n",
                  "| workload | distft x1 step | distft x2 step | rank 0 waiting for rank 1 | allreduce |",
                  "|---|---:|---:|---:|---:|"]
        for w, c in r["communication"].items():
            m, ms = r["throughput"].get(w, {}).get("median"), c["none"]["ms_per_step"]
            if m:
                lines.append(f"| {w} | {1000 * BATCH / m['distft1']:.1f} | {2000 * BATCH / m['distft2']:.1f} | "
                             f"{ms['waiting_for_other_ranks']:.1f} | {ms['allreduce']:.1f} |")
    for w, t in r.get("throughput", {}).items():
        lines += [f"\n### {w}: samples/s per round (load = 1-min load average at the round's start)\n",
                  "| round | load | distft x1's core | keras x1 | distft x1 | distft x2 | mwms x2 | distft/keras | distft 2/1 | mwms 2/keras 1 | distft/mwms |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in t["rounds"] + [{"round": "**summary**", "load": None, **{k: {"samples_per_sec": v} for k, v in t["median"].items()}, "ratios": t["ratios"]}]:
            q = row["ratios"]
            load = "" if row["load"] is None else f"{row['load']:.2f}"
            lines.append(f"| {row['round']} | {load} | {row['distft1'].get('core', '')} | " + " | ".join(f"{row[f'{c}{n}']['samples_per_sec']:.1f}" for c, n in THROUGHPUT)
                         + f" | {q['overhead']:.3f} | {q['scaling']:.2f} | {q['mwms_scaling']:.2f} | {q['vs_mwms']:.3f} |")
    if "size" in r:
        lines += [f"\n### epoch seconds against records ({r['size']['workload']})\n",
                  "| records | keras x1 | distft x2 |", "|---:|---:|---:|"]
        lines += [f"| {row['records']} | {row['keras1']:.1f} | {row['distft2']:.1f} |" for row in r["size"]["rows"]]
    return "\n".join(lines)


def _ok(met: bool) -> str:
    return "yes" if met else "**no**"


def plots(r: dict[str, Any], folder: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if "throughput" in r:
        t = r["throughput"]
        fig, axes = plt.subplots(1, len(t), figsize=(5 * len(t), 4), squeeze=False)
        for ax, (w, v) in zip(axes[0], t.items()):
            names = [f"{c} x{n}" for c, n in THROUGHPUT]
            ax.bar(names, [v["median"][f"{c}{n}"] for c, n in THROUGHPUT], color=["grey", "C0", "C0", "C1"])
            ax.set_title(f"{w}: samples/s (median)")
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "throughput.png"))
        fig, ax = plt.subplots(figsize=(6, 4))
        names = list(t)
        ax.bar([i - 0.2 for i in range(len(names))], [t[w]["ratios"]["scaling"] / 2 for w in names], 0.4, label="distft 2 / distft 1")
        ax.bar([i + 0.2 for i in range(len(names))], [t[w]["ratios"]["mwms_scaling"] / 2 for w in names], 0.4, label="MWMS 2 / Keras 1")
        ax.axhline(0.85, color="k", ls="--", label="goal 0.85")
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("scaling efficiency (2 workers)")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "scaling.png"))
    if "size" in r:
        rows = r["size"]["rows"]
        fig, ax = plt.subplots(figsize=(6, 4))
        for k, label in (("keras1", "Keras, 1 worker"), ("distft2", "distft, 2 workers")):
            ax.plot([x["records"] for x in rows], [x[k] for x in rows], "o-", label=label)
        ax.set_xlabel("records")
        ax.set_ylabel("epoch seconds")
        ax.set_title(f"{r['size']['workload']}: epoch time against data size")
        ax.legend()
        fig.tight_layout()
        fig.savefig(os.path.join(folder, "epoch_time.png"))
    plt.close("all")

"""The performance report: every goal of distft's performance issue, beside the previous report.

Measured in one session, and set beside the previous report's figures (TensorFlow 2.15 / Keras 2).

Parts (each run is a fresh subprocess printing one JSON line; see benchmarks/contenders.py):
1. throughput: per workload, round by round: bare Keras 3 (1 worker) and distft (1 worker) side
   by side, each on its own core (they swap cores every round: the same moment's machine for
   both, and the other core busy as it is for 2 workers), then distft (2 workers) and
   MultiWorkerMirroredStrategy (2 workers, on tf_keras: Keras 2 on the same TensorFlow); one
   compute thread per worker, each worker on its own core. Goals: distft/Keras >= 0.97, distft
   2/1 >= 1.70 (scaling efficiency >= 0.85), distft/MWMS >= 1.10. The same runs give each
   contender's time from launch to the end of its first step (distft x2 starts through
   horovodrun -np 2; Keras x1 is a bare script's import, build and first step).
   mwms-keras3: once per report, one short attempt of MWMS with Keras 3, which fails on
   TensorFlow (Keras issue #20585): the report records its error instead of a figure.
2. communication: bytes allreduced per step from Horovod's timeline against 4 (fp16: 2) bytes
   per trainable weight, and one gradient tensor per trainable variable.
3. data size: epoch time of distft (2 workers) and Keras (1 worker) against records.
Writes benchmarks/results/report-TAG.json, report-TAG.md and throughput-TAG.png,
scaling-TAG.png, epoch_time-TAG.png, TAG naming this TensorFlow (tf221 for 2.21); the Markdown
sets this run beside `--previous` (default: benchmarks/results/report.json, the TF 2.15 /
Keras 2 report, which is only read).

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
from benchmarks.common import RESULTS, ROOT, TAG, child, environment, invocation, python
from benchmarks.workloads import WORKLOADS

THROUGHPUT = (("keras", 1), ("distft", 1), ("distft", 2), ("mwms", 2))
ATTEMPT = ("mwms-keras3", 2)  # once per report, 1 epoch: how Keras 3 under MWMS fails
PREVIOUS = os.path.join(RESULTS, "report.json")  # the TF 2.15 / Keras 2 report (only read)
PARTS = ("throughput", "mwms-keras3", "communication", "size")
GOALS = {"overhead": 0.97, "scaling": 1.70, "vs_mwms": 1.10}
BATCH = 32
RECORDS = {"mobilenet": 2048, "cnn": 4096}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds of the throughput contenders")
    p.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is not timed)")
    p.add_argument("--workloads", default="mobilenet,cnn", help=f"comma-separated: {','.join(WORKLOADS)}")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the records of every workload")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated: {','.join(PARTS)}")
    p.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "distft-report"),
                   help="models and data, written once and reused")
    p.add_argument("--output", default=RESULTS,
                   help=f"folder for report-{TAG}.json, report-{TAG}.md, *-{TAG}.png")
    p.add_argument("--previous", default=PREVIOUS,
                   help="the report to set this one beside ('' for none); only read")
    a = p.parse_args(argv)
    unknown = set(a.parts.split(",")) - set(PARTS)
    if unknown:
        p.error(f"unknown --parts: {','.join(sorted(unknown))} (choose from {','.join(PARTS)})")
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
             if {"throughput", "size", "mwms-keras3"} & set(parts)}
    if "mwms-keras3" in parts:
        report["mwms_keras3"] = attempt(next(iter(specs.values())))
    if "throughput" in parts:
        report["throughput"] = {w: throughput(s, a.rounds, a.epochs) for w, s in specs.items()}
    if "communication" in parts:  # bytes per step do not depend on the records: 16 steps
        report["communication"] = {w: comm(_spec(workdir, w, 32 * BATCH))
                                   for w in report["settings"]["records"]}
    if "size" in parts:
        w = "mobilenet" if "mobilenet" in specs else next(iter(specs))
        report["size"] = size_sweep(workdir, specs[w], a.epochs, report.get("throughput", {}).get(w))
    report["minutes"] = round((time.time() - started) / 60, 1)
    report["notes"] = notes(report)
    previous = None
    if a.previous:
        with open(a.previous) as f:
            previous = json.load(f)
        report["previous"] = {"file": os.path.relpath(a.previous, ROOT),
                              **{k: previous.get(k) for k in ("command", "date", "settings", "environment")}}
    os.makedirs(a.output, exist_ok=True)
    names = output_files(a.output)
    if os.path.abspath(a.previous or "") in map(os.path.abspath, names.values()):
        raise SystemExit(f"--previous={a.previous} would be overwritten by this report")
    with open(names["json"], "w") as f:
        json.dump(report, f, indent=2)
    text = markdown(report, previous)
    with open(names["md"], "w") as f:
        f.write(text + "\n")
    plots(report, names, previous)
    print(text)
    print(f"\nwritten: {', '.join(os.path.relpath(n) for n in names.values() if os.path.exists(n))} "
          f"({report['minutes']} min)")
    return 0


def output_files(folder: str) -> dict[str, str]:
    """This TensorFlow's report files in `folder` (report-tf221.json, ...)."""
    return {"json": os.path.join(folder, f"report-{TAG}.json"), "md": os.path.join(folder, f"report-{TAG}.md"),
            **{k: os.path.join(folder, f"{k}-{TAG}.png") for k in ("throughput", "scaling", "epoch_time")}}


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
        first = result.pop("first_step_at", None)  # none for an attempt that failed
        if first is not None:
            result["first_step_seconds"] = round(first - started, 1)
    return results


def attempt(spec: str) -> dict[str, Any]:
    """One short run of MWMS with Keras 3 (2 workers, 1 epoch): how it fails, or its figures."""
    contender, workers = ATTEMPT
    result = _run(spec, contender, workers, 1)
    shown = f"failed: {result['error']}" if result["failed"] else f"ran: {result['samples_per_sec']:.1f} samples/s"
    print(f"  {contender} x{workers} (Keras {result.get('keras')}, 1 epoch): {shown} ({result['seconds']:.0f}s)",
          file=sys.stderr, flush=True)
    return {"workload": os.path.basename(os.path.dirname(spec)), **result}


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
            steps = max(1, records // (n * BATCH))  # as distft: the remainder dropped
            if records == w["records"] and measured:
                sps = measured["median"][f"{c}{n}"]
            else:
                sps = _run(_spec(workdir, w["name"], records), c, n, epochs)["samples_per_sec"]
            row[f"{c}{n}"] = steps * n * BATCH / sps
        print(f"  size {records}: {row}", file=sys.stderr, flush=True)
        rows.append(row)
    return {"workload": w["name"], "rows": rows}


# --- output ------------------------------------------------------------------------------------

def notes(r: dict[str, Any]) -> list[str]:
    """What a reader must know to read this run's figures: which Keras each contender ran."""
    env, out = r["environment"], []
    if "throughput" in r:
        out.append(f"mwms x2 is MultiWorkerMirroredStrategy on tf_keras {env.get('tf_keras')} (Keras 2, "
                   f"`TF_USE_LEGACY_KERAS=1`) on TensorFlow {env['tensorflow']}, because Keras 3 has no "
                   "working multi-worker `fit` on TensorFlow (Keras issue #20585); keras x1 and distft run "
                   f"Keras {env.get('keras')}. All start from the same weights: the base from the same "
                   "architecture and values (a tf_keras .h5 twin of base_model.keras, checked to compute "
                   "the same features), the new head as distft makes it (benchmarks/workloads.py)")
    m = r.get("mwms_keras3")
    if m:
        if m["failed"]:
            out.append(f"Keras {m.get('keras')} under MultiWorkerMirroredStrategy (`mwms-keras3`: 2 workers, "
                       f"1 epoch of {m['workload']}) fails, so it has no figure: `{m['error']}`")
        else:
            out.append(f"Keras {m.get('keras')} under MultiWorkerMirroredStrategy (`mwms-keras3`, 2 workers, "
                       f"1 epoch of {m['workload']}) ran ({m['samples_per_sec']:.1f} samples/s, first epoch "
                       "included): Keras issue #20585 may be fixed, and MWMS could be measured on Keras 3")
    return out


def label(r: dict[str, Any]) -> str:
    """`TF 2.21 / Keras 3` for a report's environment (reports without a Keras version: TF 2.15's
    tf.keras, Keras 2)."""
    env = r.get("environment", {})
    tf = env.get("tensorflow", "?")
    keras = env.get("keras") or ("2" if tuple(map(int, tf.split(".")[:2])) < (2, 16) else "3")
    return f"TF {'.'.join(tf.split('.')[:2])} / Keras {keras.split('.')[0]}"


def _get(r: Optional[dict], *path: Any) -> Any:
    for key in path:
        if not isinstance(r, dict) or key not in r:
            return None
        r = r[key]
    return r


def comparison(prev: dict[str, Any], cur: dict[str, Any]) -> list[list[str]]:
    """Rows [measure, workload, previous, this run] of every figure both reports may have."""
    def fmt(value: Any, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows: list[list[str]] = []
    workloads = list(dict.fromkeys(w for r in (prev, cur) for part in ("throughput", "communication")
                                   for w in r.get(part, {})))
    for w in workloads:
        def add(measure: str, spec: str, *path: Any) -> None:
            rows.append([measure, w, *(fmt(_get(r, *path), spec) for r in (prev, cur))])

        for key, name in (("keras1", "keras x1"), ("distft1", "distft x1"), ("distft2", "distft x2"),
                          ("mwms2", "mwms x2 (Keras 2 in both: tf.keras 2.15 / tf_keras 2.21)")):
            add(f"samples/s: {name}", ".1f", "throughput", w, "median", key)
        add(f"1. overhead: distft x1 / keras x1 (goal >= {GOALS['overhead']})", ".3f", "throughput", w, "ratios", "overhead")
        add(f"2. scaling: distft x2 / distft x1 (goal >= {GOALS['scaling']:.2f})", ".2f", "throughput", w, "ratios", "scaling")
        add("MWMS x2 / keras x1", ".2f", "throughput", w, "ratios", "mwms_scaling")
        add(f"3. distft x2 / mwms x2 (goal >= {GOALS['vs_mwms']:.2f})", ".3f", "throughput", w, "ratios", "vs_mwms")
        for key, name in (("keras1", "keras x1"), ("distft1", "distft x1"), ("distft2", "distft x2 (horovodrun -np 2)"),
                          ("mwms2", "mwms x2")):
            add(f"5. seconds from launch to the first step's end: {name}", ".1f", "throughput", w, "first_step_seconds", key)
        for comp in ("none", "fp16"):
            rows.append([f"4. gradient bytes allreduced per step ({comp}), gradient tensors", w, *(
                "-" if _get(r, "communication", w, comp) is None else
                f"{_get(r, 'communication', w, comp, 'gradient_bytes_per_step'):.0f}, "
                f"{_get(r, 'communication', w, comp, 'gradient_tensors')}" for r in (prev, cur))])
        add("ms per step: rank 0 waiting for rank 1 (no compression)", ".1f",
            "communication", w, "none", "ms_per_step", "waiting_for_other_ranks")
        add("ms per step: allreduce (no compression)", ".1f", "communication", w, "none", "ms_per_step", "allreduce")
        add("trainable weights", "d", "throughput", w, "trainable_params")
    sizes = [{(_get(r, "size", "workload"), row["records"]): row for row in _get(r, "size", "rows") or []}
             for r in (prev, cur)]
    for w, records in sorted(set(sizes[0]) | set(sizes[1])):
        for key, name in (("keras1", "keras x1"), ("distft2", "distft x2")):
            rows.append([f"epoch seconds at {records} records: {name}", w,
                         *(fmt(_get(sz, (w, records), key), ".1f") for sz in sizes)])
    return rows


def beside(prev: dict[str, Any], cur: dict[str, Any]) -> list[str]:
    """The side-by-side table of the previous report and this run, as Markdown lines."""
    old, new = f"{label(prev)} (previous report)", f"{label(cur)} (this run)"
    settings = ("rounds", "epochs", "batch_size", "threads", "records")
    same = all(prev.get("settings", {}).get(k) == cur["settings"].get(k) for k in settings)
    e = cur["environment"]
    lines = [f"\n### {old} beside {new}\n",
             f"previous: `{cur['previous']['file']}`, `{prev.get('command')}` ({prev.get('date')}; TensorFlow "
             f"{_get(prev, 'environment', 'tensorflow')}, Horovod {_get(prev, 'environment', 'horovod')}, "
             f"{prev.get('minutes')} min). This run: TensorFlow {e['tensorflow']}, Keras {e.get('keras')}, "
             f"tf_keras {e.get('tf_keras')}, Horovod {e.get('horovod')}. "
             + ("Same settings (rounds, epochs, batch, threads, records)." if same else
                "**The settings differ** (previous: " + ", ".join(f"{k} {_get(prev, 'settings', k)}" for k in settings)
                + "; this run: " + ", ".join(f"{k} {cur['settings'].get(k)}" for k in settings)
                + "), so the figures cannot be compared one to one.")
             + " distft x2 averages its gradients with Horovod's DistributedOptimizer on TF 2.15 and with "
             "one `hvd.grouped_allreduce` in its own train step on Keras 3.\n",
             f"| measure | workload | {old} | {new} |", "|---|---|---:|---:|"]
    lines += [f"| {' | '.join(row)} |" for row in comparison(prev, cur)]
    return lines


def markdown(r: dict[str, Any], previous: Optional[dict[str, Any]] = None) -> str:
    s = r["settings"]
    lines = [f"## distft performance report: {label(r)} ({r['date']}, {r['environment']['cpus']} CPUs, "
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
                  f"| 3. distft 2 workers / MWMS 2 workers (tf_keras) | {w} | {q['vs_mwms']:.3f} | >= {GOALS['vs_mwms']} | {_ok(q['vs_mwms'] >= GOALS['vs_mwms'])} |"]
    m = r.get("mwms_keras3")
    if m:
        lines.append(f"| 3. distft 2 workers / MWMS 2 workers on Keras 3 (`mwms-keras3`) | {m['workload']} | "
                     + ("MWMS failed (see the note) | >= 1.1 | - |" if m["failed"] else
                        f"MWMS ran (see the note) | >= {GOALS['vs_mwms']} | - |"))
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
    if previous is not None:
        lines += beside(previous, r)
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
                  "| round | load | distft x1's core | keras x1 | distft x1 | distft x2 | mwms x2 (tf_keras) | distft/keras | distft 2/1 | mwms 2/keras 1 | distft/mwms |",
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


def plots(r: dict[str, Any], files: dict[str, str], previous: Optional[dict[str, Any]] = None) -> None:
    """throughput, scaling and epoch_time plots of this run, the previous report's beside them
    (lighter, hatched) where it has the same figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    prev = previous or {}
    runs = [(f"{label(prev)} (previous)", prev, dict(alpha=0.45, hatch="//")), (f"{label(r)} (this run)", r, {})] \
        if previous else [(label(r), r, {})]
    width = 0.8 / len(runs)
    if "throughput" in r:
        t = r["throughput"]
        names = [f"{c} x{n}" for c, n in THROUGHPUT]
        fig, axes = plt.subplots(1, len(t), figsize=(6 * len(t), 4), squeeze=False)
        for ax, w in zip(axes[0], t):
            for i, (name, rep, style) in enumerate(runs):
                values = [_get(rep, "throughput", w, "median", f"{c}{n}") or 0 for c, n in THROUGHPUT]
                ax.bar([j + (i - (len(runs) - 1) / 2) * width for j in range(len(names))], values, width,
                       color=["grey", "C0", "C0", "C1"], label=name, **style)
            ax.set_xticks(range(len(names)), names)
            ax.set_title(f"{w}: samples/s (median)")
            ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(files["throughput"])
        fig, ax = plt.subplots(figsize=(7, 4))
        bars = [(rep, style, key, f"{what} ({name})") for name, rep, style in runs
                for key, what in (("scaling", "distft 2 / distft 1"), ("mwms_scaling", "MWMS 2 / Keras 1"))]
        width = 0.8 / len(bars)
        workloads = list(t)
        for i, (rep, style, key, name) in enumerate(bars):
            ax.bar([j + (i - (len(bars) - 1) / 2) * width for j in range(len(workloads))],
                   [(_get(rep, "throughput", w, "ratios", key) or 0) / 2 for w in workloads], width,
                   color="C0" if key == "scaling" else "C1", label=name, **style)
        ax.axhline(0.85, color="k", ls="--", label="goal 0.85")
        ax.set_xticks(range(len(workloads)), workloads)
        ax.set_ylabel("scaling efficiency (2 workers)")
        ax.set_ylim(0, 1.45)
        ax.legend(fontsize="small", loc="upper left", ncol=2)
        fig.tight_layout()
        fig.savefig(files["scaling"])
    if "size" in r:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, rep, style in runs:
            if _get(rep, "size", "workload") != r["size"]["workload"]:
                continue
            rows = _get(rep, "size", "rows") or []
            for k, who, color in (("keras1", "Keras, 1 worker", "grey"), ("distft2", "distft, 2 workers", "C0")):
                ax.plot([x["records"] for x in rows], [x[k] for x in rows], "o-" if rep is r else "o--",
                        color=color, alpha=1 if rep is r else 0.5, label=f"{who}, {name}")
        ax.set_xlabel("records")
        ax.set_ylabel("epoch seconds")
        ax.set_title(f"{r['size']['workload']}: epoch time against data size")
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(files["epoch_time"])
    plt.close("all")

"""The cluster lab: distft against MultiWorkerMirroredStrategy on 2 and 4 emulated nodes whose
links are shaped to 1, 10 and 25 Gbit/s (benchmarks/netlab.py: network namespaces, veths, a
bridge, `tc`). Needs root.

Every worker runs inside its node's namespace, pinned to one core (node K on core K-1 mod the
cores: 4 nodes share 2 cores in pairs here):
- distft: `distft train --np=N --hosts=10.77.0.1:1,...` started inside node 1; horovodrun
  (Gloo, or `--controller=mpi`: horovodrun --mpi, i.e. mpirun) finds node 1 local and reaches
  the others through the lab's fake `ssh` (first on PATH), which runs the command in that
  node's namespace. Horovod's interface discovery then finds the one interface all nodes share,
  `distftlab-eth`, for Gloo (HOROVOD_GLOO_IFACE) and MPI (btl_tcp_if_include).
- mwms: benchmarks/contenders.py's tf_keras MWMS worker, one per node, `TF_CONFIG` listing the
  nodes' addresses.
- distft variants (DISTFT): one grouped allreduce (distft-group), fp16 compression
  (distft-fp16), XLA (distft-xla), MPI, and
  one worker on node 1 (distft-1worker), whose step is the compute time that the scaling
  model's calibration (`scaling_model` in the result, and a table) predicts the others from.
Each case prints one JSON line; `allreduce_ms` is distft's rank-health allreduce wait of rank
0 (TensorBoard `ranks/allreduce_wait_ms`, median of the epochs after the first; it includes
waiting for the other ranks), null for MWMS, which has no such figure. `sent_mb` is what the
busiest node's link carried (its qdisc's byte counter): the proof that the traffic crossed the
shaped links. Each (nodes, link) starts with a TCP check of the link (`link_gbps`).

Workloads (benchmarks/workloads.py, synthetic data, seed 42): `convnet10m-full` (10.4M weights,
all trained: convolutions below, big Dense layers on top, so compute and allreduce are of
similar length and the biggest gradients are ready first), `mlp10m-full` (10.2M weights, all
trained: the allreduce is most of the step and the biggest gradient is ready last),
`mlp10m-partial` (the same MLP, `features` and the head: 0.79M), `mlp10m-lora` (the same MLP
with rank-8 LoRA factors on every Dense layer; distft only), `mobilenet`.

Example (from the repository root, as root):
    python -m benchmarks cluster --quick        # 2 nodes, 1 Gbit/s, convnet10m-full: distft / group / mwms
                                                # (a look: saved under --workdir, not in results/)
    python -m benchmarks cluster --links=1gbit,10gbit --nodes=2,4 --models=convnet10m-full,mlp10m-full
    python -m benchmarks cluster --tune         # Horovod cycle time, fusion, threads at 1 and 10 Gbit/s
    python -m benchmarks cluster --tune --models=mobilenet --contenders="defaults (cycle 1 ms),cycle 5 ms"
    python -m benchmarks cluster --calibrate=results/a.json,results/b.json   # the scaling model
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
from typing import Any, Optional

from benchmarks import contenders, netlab, workloads
from benchmarks.common import CHILD_TIMEOUT, ROOT, environment, invocation, result_file, save

RESULTS = result_file("cluster.json")
LINKS = ("1gbit", "10gbit", "25gbit")
NODES = (2, 4)
# name: (workload, distft --unfreeze, the first layer the MWMS script trains (None: MWMS cannot
# run it), more distft flags)
MODELS = {"mlp10m-full": ("mlp10m", "all", "dense_1", []),
          "mlp10m-partial": ("mlp10m", "last:1", "features", []),
          "mlp10m-lora": ("mlp10m", "none", None, ["--lora=8"]),  # rank-8 factors on every Dense
          "convnet10m-full": ("convnet10m", "all", "conv1", []),
          "mobilenet": ("mobilenet", "from:block_13_expand", "block_13_expand", [])}
# distft contenders: name -> extra `distft train` flags (distft's defaults: per-tensor
# allreduce ops overlapping the backward pass, no XLA on CPU).
DISTFT: dict[str, list[str]] = {"distft": [], "distft-group": ["--allreduce=group"],
                                "distft-fp16": ["--compression=fp16"], "distft-xla": ["--jit=on"],
                                "distft-mpi": ["--controller=mpi"],
                                "distft-1worker": []}
# distft's one-worker run on node 1 (no allreduce): the scaling model's measured compute time.
ONE_WORKER = "distft-1worker"
# --tune: name -> (extra distft flags, environment); the first is distft's defaults.
TUNE: dict[str, tuple[list[str], dict[str, str]]] = {
    "defaults (cycle 1 ms)": ([], {}),
    "cycle 5 ms": ([], {"HOROVOD_CYCLE_TIME": "5"}),
    "fusion off": ([], {"HOROVOD_FUSION_THRESHOLD": "0"}),
    "fusion 16 MiB": ([], {"HOROVOD_FUSION_THRESHOLD": str(16 << 20)}),
    "threads 2": (["--threads=2"], {}),
}
BATCH = 32  # per worker
LINK_CHECK = """import socket, sys, time
if sys.argv[1] == "recv":
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[2]))); s.listen(); c, _ = s.accept()
    while c.recv(1 << 20): pass
else:
    for _ in range(100):  # until the receiver listens
        try:
            s = socket.create_connection((sys.argv[2], int(sys.argv[3]))); break
        except ConnectionRefusedError:
            time.sleep(0.1)
    b = b"x" * (1 << 20); t = time.time(); n = 0
    while time.time() - t < 2: s.sendall(b); n += len(b)
    s.close(); print(n * 8 / (time.time() - t) / 1e9)
"""


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks cluster", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="one case: 2 nodes, 1gbit, convnet10m-full: distft, distft-group, mwms, 1 worker")
    p.add_argument("--tune", action="store_true",
                   help="Horovod settings (TUNE; by default all, at 1 and 10 Gbit/s, 2 nodes, mlp10m-full)")
    p.add_argument("--links", help=f"default: {','.join(LINKS)}")
    p.add_argument("--nodes", help=f"default: {','.join(map(str, NODES))}")
    p.add_argument("--models", help=f"default: {','.join(MODELS)}")
    p.add_argument("--contenders", help=f"default: {','.join([*DISTFT, 'mwms'])}")
    p.add_argument("--rounds", type=int, default=1, help="runs of each case, contenders alternating")
    p.add_argument("--epochs", type=int, default=3, help="the first is not timed")
    p.add_argument("--records", type=int, default=1280)
    p.add_argument("--delay_ms", type=float, default=0.1, help="node to node (needs netem in the kernel)")
    p.add_argument("--workdir", default="/tmp/distft-cluster", help="models, data and runs (kept)")
    p.add_argument("--output", default=None, help=f"result JSON (default {os.path.relpath(RESULTS)}; "
                   "with --quick, cluster-quick.json in --workdir)")
    p.add_argument("--calibrate", metavar="FILE,...", help="no runs: the scaling model against these "
                   "results' cases (e.g. a 2-node and a 4-node run), printed and saved to --output")
    a = p.parse_args(argv)
    if a.calibrate:
        return calibrate_files(a.calibrate.split(","), a.output or result_file("cluster-calibration.json"))
    try:
        netlab.check()
    except netlab.LabError as e:
        print(f"cluster: {e}", file=sys.stderr)
        return 2
    if a.quick:
        a.links, a.nodes, a.models = "1gbit", "2", "convnet10m-full"
        a.contenders = f"distft,distft-group,mwms,{ONE_WORKER}"
    variants = {n: (flags, {}) for n, flags in DISTFT.items()}
    defaults = (",".join(LINKS), ",".join(map(str, NODES)), ",".join(MODELS), ",".join([*DISTFT, "mwms"]))
    if a.tune:
        defaults, variants = ("1gbit,10gbit", "2", "mlp10m-full", ",".join(TUNE)), TUNE
    a.links, a.nodes, a.models, a.contenders = (given or default for given, default in
                                                zip((a.links, a.nodes, a.models, a.contenders), defaults))
    names = a.contenders.split(",")
    unknown = [n for n in names if n != "mwms" and n not in variants]
    if unknown:
        print(f"cluster: unknown contender(s) {', '.join(unknown)}: choose from {', '.join([*variants, 'mwms'])}",
              file=sys.stderr)
        return 2
    unknown = [m for m in a.models.split(",") if m not in MODELS]
    if unknown:
        print(f"cluster: unknown model(s) {', '.join(unknown)}: choose from {', '.join(MODELS)}", file=sys.stderr)
        return 2
    output = output_path(a)
    print(f"command: {invocation()}", flush=True)
    # The lab is removed on these too (SIGINT also when started in the background, which ignores it).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"  # for rank_health's TensorFlow, and the workers
    cases, links, failed = [], {}, []
    for nodes in map(int, a.nodes.split(",")):
        for link in a.links.split(","):
            with netlab.Lab(nodes, link, a.delay_ms, bin_dir=os.path.join(a.workdir, "bin")) as lab:
                links[f"{nodes}x{link}"] = {"link_gbps": link_check(lab), "delay_applied": lab.delay_applied,
                                            "qdiscs": lab.qdiscs().splitlines()}
                print(f"lab: {nodes} nodes, {link}: TCP {links[f'{nodes}x{link}']['link_gbps']:.2f} Gbit/s "
                      f"node 2 -> 1; delay {'applied' if lab.delay_applied else 'NOT applied (no netem)'}",
                      file=sys.stderr, flush=True)
                for model in a.models.split(","):
                    spec = model_spec(a.workdir, model, a.records)
                    for r in range(1, a.rounds + 1):
                        for name in names:
                            if name == "mwms" and MODELS[model][2] is None:
                                continue  # e.g. LoRA: tf_keras's MWMS script has no such method
                            try:
                                case = run_case(lab, spec, model, name, variants.get(name), a, r)
                            except RuntimeError as e:  # recorded; the other cases still run
                                print(e, file=sys.stderr, flush=True)
                                failed.append({"link": link, "nodes": nodes, "model": model,
                                               "contender": name, "round": r, "error": str(e)[-2000:]})
                                continue
                            print(json.dumps(case), flush=True)
                            cases.append(case)
    result = {"benchmark": "cluster-tune" if a.tune else "cluster", "command": invocation(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "settings": {k: v for k, v in vars(a).items() if k not in ("workdir", "output")},
              "environment": environment(), "allreduce_ms": "distft rank-health allreduce wait, rank 0",
              "variants": variants, "links": links, "cases": cases, "failed": failed,
              "ratios": ratios(cases, names[0]),
              "scaling_model": calibration(cases, links)}
    print(table(cases, names[0]))
    if result["scaling_model"]:
        print(calibration_table(result["scaling_model"]))
    save(result, output)
    if a.quick and not a.output:
        print(f"--quick: saved in --workdir, {os.path.abspath(output)} (benchmarks/results/ unchanged)")
    for f in failed:
        print(f"cluster: {f['contender']} failed on {f['nodes']} nodes, {f['link']}, {f['model']}, round {f['round']}",
              file=sys.stderr)
    if a.quick:  # the comparison, one line: distft over each contender
        case = {k: result["ratios"][0][k] for k in ("link", "nodes", "model", "round")} if result["ratios"] else {}
        print(json.dumps({**case, **{r["ratio"]: r["value"] for r in result["ratios"]}}))
    return 1 if failed else 0


def output_path(a: argparse.Namespace) -> str:
    """Where the result goes: --output, else --quick's file in --workdir (a look, not a result:
    the repository's tracked results stay as they are), else this TensorFlow's result file."""
    if a.output:
        return a.output
    if a.quick:
        return os.path.join(a.workdir, "cluster-quick.json")
    return result_file("cluster-tune.json") if a.tune else RESULTS


def _interrupt(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def model_spec(workdir: str, model: str, records: int) -> str:
    """The workload.json of `model` (written once under `workdir`)."""
    name, unfreeze, first, flags = MODELS[model]
    spec = workloads.prepare(workdir, name, records)
    path = os.path.join(workdir, f"{model}-{records}.json")
    with open(path, "w") as f:
        json.dump(dict(spec, unfreeze=unfreeze, first_trainable=first, flags=flags), f)
    return path


def link_check(lab: netlab.Lab) -> float:
    """TCP throughput from node 2 to node 1, Gbit/s over 2 s (one Python stream)."""
    port = contenders._free_port()
    receiver = subprocess.Popen([*lab.run_in(1), sys.executable, "-c", LINK_CHECK, "recv", str(port)])
    try:
        sent = subprocess.run([*lab.run_in(2), sys.executable, "-c", LINK_CHECK, "send", netlab.address(1),
                               str(port)], stdout=subprocess.PIPE, text=True, check=True, timeout=60)
        return float(sent.stdout)
    finally:
        receiver.kill()
        receiver.wait()


def run_case(lab: netlab.Lab, spec_path: str, model: str, contender: str,
             variant: Optional[tuple[list[str], dict[str, str]]], a: argparse.Namespace,
             round_: int) -> dict[str, Any]:
    """One run of `contender` on the lab: the case's JSON line."""
    with open(spec_path) as f:
        spec = json.load(f)
    load = os.getloadavg()[0]
    before = lab.sent_bytes()
    if contender == "mwms":
        figures = run_mwms(lab, spec_path, a.epochs)
    else:
        figures = run_distft(lab, spec, contender, variant, a)
    sent = max(after - then for after, then in zip(lab.sent_bytes(), before))
    workers = _workers(lab, contender)
    return {"link": lab.rate, "nodes": lab.nodes, "workers": workers, "model": model,
            "trainable_params": figures["trainable_params"], "contender": contender,
            "samples_per_s": round(figures["samples_per_sec"], 1),
            "step_ms": round(1000 * workers * BATCH / figures["samples_per_sec"], 1),
            "allreduce_ms": figures.get("allreduce_ms"), "sent_mb": round(sent / 1e6, 1),
            "steps": figures["steps"], "round": round_, "load": round(load, 2)}


def run_distft(lab: netlab.Lab, spec: dict, name: str, variant: tuple[list[str], dict[str, str]],
               a: argparse.Namespace) -> dict[str, Any]:
    """`distft train` on every node, launched from node 1; its metrics and rank health."""
    flags, env = variant
    workers = _workers(lab, name)
    out = os.path.join(a.workdir, "runs", name.replace(" ", "_"))
    cmd = [*lab.run_in(1), sys.executable, "-m", "distft", "train", f"--model={spec['model']}",
           f"--data={spec['data']}", f"--output_dir={out}", f"--num_classes={spec['classes']}",
           f"--unfreeze={spec['unfreeze']}", f"--epochs={a.epochs}", f"--batch_size={BATCH}",
           f"--lr={contenders.LR}", "--threads=1", f"--log_every={contenders.LOG_EVERY}", "--overwrite",
           f"--np={workers}", f"--hosts={lab.hosts(workers)}",
           *spec.get("flags", []), *flags]
    # HOME: horovodrun caches the interfaces it found under ~/.horovod for an hour; the lab's own
    # home, emptied for every lab, keeps another lab's (or the user's) answer out.
    environ = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT, **env, HOME=lab.home,
                   PATH=f"{lab.bin_dir}{os.pathsep}{os.environ['PATH']}")
    done = subprocess.run(cmd, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=CHILD_TIMEOUT)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}")
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    return {"samples_per_sec": m["samples_per_sec"], "trainable_params": m["params"]["trainable"],
            "steps": m["steps_per_epoch"] * a.epochs, "allreduce_ms": rank_health(out, "allreduce_wait_ms")}


def _workers(lab: netlab.Lab, contender: str) -> int:
    """Workers of `contender`: one per node, or node 1's alone (ONE_WORKER)."""
    return 1 if contender == ONE_WORKER else lab.nodes


def rank_health(out: str, name: str) -> Optional[float]:
    """Rank 0's `ranks/NAME` in the run's TensorBoard logs, median of the epochs after the first."""
    import tensorflow as tf

    values = {}
    for path in glob.glob(os.path.join(out, "**", "rank_0", "events.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for v in event.summary.value:
                if v.tag == f"ranks/{name}":
                    values[event.step] = float(tf.make_ndarray(v.tensor)) if v.HasField("tensor") else v.simple_value
    later = [v for step, v in sorted(values.items()) if step > 1] or list(values.values())
    return round(statistics.median(later), 1) if later else None


def run_mwms(lab: netlab.Lab, spec_path: str, epochs: int) -> dict[str, Any]:
    """benchmarks/contenders.py's MWMS worker on every node (tf_keras, TF_CONFIG with the nodes'
    addresses); worker 0's figures."""
    port = contenders._free_port()
    cluster = {"worker": [f"{netlab.address(k)}:{port}" for k in range(1, lab.nodes + 1)]}
    procs = []
    for i in range(lab.nodes):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=ROOT, TF_USE_LEGACY_KERAS="1",
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        cmd = [*lab.run_in(i + 1), sys.executable, "-m", "benchmarks.contenders", "--contender=mwms",
               f"--workers={lab.nodes}", f"--spec={spec_path}", f"--epochs={epochs}",
               f"--batch_size={BATCH}", "--threads=1", f"--index={i}"]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = contenders._communicate(procs, CHILD_TIMEOUT)
    if outputs is None:
        raise RuntimeError(f"mwms: no result within {CHILD_TIMEOUT} s")
    m = contenders._result(max(p.returncode for p in procs), "".join(outputs))
    return {**m, "steps": m["steps_per_epoch"] * epochs}


def ratios(cases: list[dict[str, Any]], base: str) -> list[dict[str, Any]]:
    """For each case (link, nodes, model, round): every contender's samples/s over `base`'s
    (distft, or --tune's defaults), measured side by side in that round."""
    groups: dict[tuple, dict[str, dict]] = {}
    for c in cases:
        groups.setdefault((c["link"], c["nodes"], c["model"], c["round"]), {})[c["contender"]] = c
    rows = []
    for (link, nodes, model, round_), by in groups.items():
        if base not in by:
            continue
        for name, c in by.items():
            if name != base:
                rows.append({"link": link, "nodes": nodes, "model": model, "round": round_,
                             "ratio": f"{base} / {name}",
                             "value": round(by[base]["samples_per_s"] / c["samples_per_s"], 3),
                             base: by[base]["samples_per_s"], name: c["samples_per_s"],
                             "load": by[base]["load"]})
    return rows


def calibration(cases: list[dict[str, Any]], links: dict[str, dict]) -> list[dict[str, Any]]:
    """distft's scaling model (distft/scaling.py) against the lab, for each distft and
    distft-group case whose round also ran distft-1worker (its step is the compute time).

    The model's lab-specific inputs are fitted on the cases of the fewest nodes, and the cases
    of more nodes are then predictions (`fitted` marks the others):
    - each link's effective allreduce bandwidth, from the distft-group cases (one allreduce
      after the backward pass: the model with overlap 0), as bytes on the wire over
      (step - compute), median over rounds;
    - for distft (per-tensor ops), the overlap of each (link, model): the share of the
      predicted allreduce its step hid, median over rounds (what `distft inspect --overlap`
      should be given).
    Where the nodes outnumber the cores, each core runs nodes/cores workers, so one worker's
    compute counts that many times over."""
    from distft import scaling

    one = {(c["link"], c["nodes"], c["model"], c["round"]): c for c in cases if c["contender"] == ONE_WORKER}
    paired = []
    for c in cases:
        base = one.get((c["link"], c["nodes"], c["model"], c["round"]))
        if base is not None and c["contender"] in ("distft", "distft-group"):
            paired.append((c, base["step_ms"] * max(1.0, c["nodes"] / (os.cpu_count() or 1))))
    fit_nodes = min((c["nodes"] for c, _ in paired), default=0)
    fitting = [(c, compute) for c, compute in paired if c["nodes"] == fit_nodes]
    effective: dict[str, float] = {}
    for link in {c["link"] for c, _ in fitting}:
        rates = [scaling.allreduce_ms(c["nodes"], scaling.gradient_bytes(c["trainable_params"]), 1.0, 0.0)
                 / (c["step_ms"] - compute) for c, compute in fitting
                 if (c["link"], c["contender"]) == (link, "distft-group") and c["step_ms"] > compute]
        if rates:
            effective[link] = statistics.median(rates)  # bits per second

    def predict(c: dict[str, Any], compute: float, overlap: float = 0.0) -> dict[str, float]:
        latency = scaling.LATENCY_MS if links.get(f"{c['nodes']}x{c['link']}", {}).get("delay_applied") else 0.0
        return scaling.predict([c["nodes"]], compute, c["trainable_params"], effective[c["link"]], BATCH,
                               latency_ms=latency, overlap=overlap)[0]

    hidden: dict[tuple[str, str], list[float]] = {}
    for c, compute in fitting:
        if c["contender"] == "distft" and c["link"] in effective:
            p = predict(c, compute)
            hidden.setdefault((c["link"], c["model"]), []).append(
                min(1.0, max(0.0, p["step_ms"] - c["step_ms"]) / p["allreduce_ms"]) if p["allreduce_ms"] else 0.0)
    overlaps = {k: statistics.median(v) for k, v in hidden.items()}
    rows = []
    for c, compute in paired:
        if c["link"] not in effective:
            continue
        overlap = overlaps.get((c["link"], c["model"]), 0.0) if c["contender"] == "distft" else None
        p = predict(c, compute, overlap or 0.0)
        rows.append({"link": c["link"], "effective_gbps": round(effective[c["link"]] / 1e9, 2),
                     "nodes": c["nodes"], "model": c["model"], "round": c["round"],
                     "contender": c["contender"], "fitted": c["nodes"] == fit_nodes,
                     "compute_ms": round(compute, 1), "allreduce_ms": round(p["allreduce_ms"], 1),
                     "predicted_ms": round(p["step_ms"], 1), "measured_ms": c["step_ms"],
                     "error": round((p["step_ms"] - c["step_ms"]) / c["step_ms"], 3),
                     "overlap": None if overlap is None else round(overlap, 2)})
    return rows


def calibrate_files(paths: list[str], output: str) -> int:
    """`calibration` over the cases of the lab's result files `paths`."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    cases = [c for r in runs for c in r["cases"]]
    links = {k: v for r in runs for k, v in r["links"].items()}
    rows = calibration(cases, links)
    print(calibration_table(rows))
    save({"benchmark": "cluster-calibration", "command": invocation(), "from": paths,
          "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
          "environment": environment(), "rows": rows}, output)
    return 0 if rows else 1


def calibration_table(rows: list[dict[str, Any]]) -> str:
    """`calibration`'s rows as Markdown."""
    lines = ["\n| link (effective) | nodes | model | contender | compute ms | allreduce ms (model) | "
             "predicted ms | measured ms | error | overlap |", "|---|---:|---|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['link']} ({r['effective_gbps']:.2f} Gbit/s) | {r['nodes']} | {r['model']} | "
              f"{r['contender']} | {r['compute_ms']:.1f} | {r['allreduce_ms']:.1f} | {r['predicted_ms']:.1f} | "
              f"{r['measured_ms']:.1f} | {100 * r['error']:+.0f}%{' (fit)' if r['fitted'] else ''} | "
              f"{'-' if r['overlap'] is None else r['overlap']} |" for r in rows]
    return "\n".join(lines)


def table(cases: list[dict[str, Any]], base: str) -> str:
    """The cases as Markdown, then the ratios to `base`."""
    lines = ["\n| link | nodes | model | trainable | contender | samples/s | step ms | allreduce ms | "
             "MB sent (busiest node) | load |", "|---|---:|---|---:|---|---:|---:|---:|---:|---:|"]
    for c in cases:
        ar = "-" if c["allreduce_ms"] is None else f"{c['allreduce_ms']:.1f}"
        lines.append(f"| {c['link']} | {c['nodes']} | {c['model']} | {c['trainable_params']:,} | "
                     f"{c['contender']} | {c['samples_per_s']:.1f} | {c['step_ms']:.1f} | {ar} | "
                     f"{c['sent_mb']:.0f} | {c['load']:.1f} |")
    lines += ["", f"| link | nodes | model | ratio | value |", "|---|---:|---|---|---:|"]
    lines += [f"| {r['link']} | {r['nodes']} | {r['model']} | {r['ratio']} | {r['value']:.3f} |"
              for r in ratios(cases, base)]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

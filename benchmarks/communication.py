"""Bytes allreduced per step, read from Horovod's timeline (`HOROVOD_TIMELINE`).

Horovod 0.28.1's timeline is Chrome trace JSON: one "process" per tensor (its metadata event
`process_name` holds the tensor's name) and, per collective, an `ALLREDUCE` span whose end
event carries `args: {"dtype", "shape"}`. Gradients are the tensors of distft's train step's
one `hvd.grouped_allreduce` (Keras 3, distft/train/step.py), each named after the group and
its place in it:
`StatefulPartitionedCall/HorovodGroupedAllreduce_<first gradient>_<last gradient>_0_3of6`
(with `--compression=fp16` the gradients are cast first, which shows in the names). Timelines
of the TF 2.15 / Keras 2 version (Horovod's `DistributedOptimizer`:
`.../DistributedAdam_Allreduce/cond_3/HorovodAllreduce_grads_3_0`) are read too. Gradient bytes
per step should be 4 x trainable weights (2 with `--compression=fp16`), and there should be
exactly one gradient tensor per trainable variable (a frozen layer's would be extra tensors and
bytes).

The same spans time what each step's communication adds on rank 0 (Horovod's coordinator,
which writes the timeline): a tensor's NEGOTIATE_ALLREDUCE runs from rank 0's gradient being
ready to every rank's, so from rank 0's last gradient of the step to the end of the last
negotiation rank 0 waits for the other ranks; from there to the end of the last ALLREDUCE it
waits for the reduction.

Example:
    stats = allreduced("/tmp/timeline.json", steps=16)
    stats["gradient_bytes_per_step"], stats["gradient_tensors"], stats["other"]
    stats["ms_per_step"]   # {"waiting_for_other_ranks": ..., "allreduce": ...}: medians over steps
"""
from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from typing import Any

# distft's train step (one group; Keras 3), or horovod.keras's DistributedOptimizer scope (Keras 2)
GRADIENT = re.compile(r"HorovodGroupedAllreduce_.*_\d+of\d+$|Distributed\w*_Allreduce/")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8, "int32": 4, "int64": 8,
               "uint8": 1, "int8": 1, "bool": 1}


def load(path: str) -> list[dict]:
    """The timeline's events; Horovod leaves the JSON array unterminated while running."""
    with open(path) as f:
        text = f.read().strip().rstrip(",")
    return json.loads(text if text.endswith("]") else text + "]")


def allreduced(path: str, steps: int) -> dict[str, Any]:
    """Per-tensor allreduce counts and bytes; gradient bytes per training step."""
    names: dict[int, str] = {}
    open_spans: dict[int, list[tuple[str, int]]] = defaultdict(list)
    sizes: dict[str, list[int]] = defaultdict(list)
    spans: dict[str, dict[str, list[tuple[int, int]]]] = defaultdict(lambda: defaultdict(list))
    for e in load(path):
        pid = e.get("pid")
        if e.get("ph") == "M" and e.get("name") == "process_name" and "name" in e.get("args", {}):
            names[pid] = e["args"]["name"]
        elif e.get("ph") == "B":
            open_spans[pid].append((e.get("name", ""), e["ts"]))
        elif e.get("ph") == "E" and open_spans[pid]:
            span, start = open_spans[pid].pop()
            name = names.get(pid, str(pid))
            spans[span][name].append((start, e["ts"]))
            args = e.get("args") or {}
            if span == "ALLREDUCE" and "shape" in args:
                shape = json.loads(args["shape"]) if args["shape"].startswith("[") else []
                sizes[name].append(math.prod(shape) * DTYPE_BYTES.get(args["dtype"], 4))
    grads = {n: s for n, s in sizes.items() if GRADIENT.search(n)}
    return {
        "ms_per_step": _per_step(spans["NEGOTIATE_ALLREDUCE"], spans["ALLREDUCE"], grads),
        "gradient_tensors": len(grads),
        "gradient_bytes_per_step": sum(sum(s) for s in grads.values()) / max(1, steps),
        "gradient_bytes_per_allreduce": sum(s[0] for s in grads.values()),
        "allreduces_per_gradient": sorted({len(s) for s in grads.values()}),
        "other": {n: {"count": len(s), "bytes": sum(s)} for n, s in sizes.items() if n not in grads},
    }


def _per_step(negotiations: dict[str, list[tuple[int, int]]], reductions: dict[str, list[tuple[int, int]]],
              tensors: dict) -> dict[str, float]:
    """Medians over steps (the k-th span of every gradient tensor is step k's; the first step,
    with tracing, is left out) of rank 0's waits after its last gradient, in ms."""
    waits, reduces = [], []
    for negotiated, reduced in list(zip(zip(*(negotiations[n] for n in tensors)),
                                        zip(*(reductions[n] for n in tensors))))[1:]:
        ready, agreed = max(a for a, _ in negotiated), max(b for _, b in negotiated)
        waits.append((agreed - ready) / 1000)
        reduces.append((max(b for _, b in reduced) - agreed) / 1000)
    median = statistics.median
    return {"waiting_for_other_ranks": median(waits) if waits else float("nan"),
            "allreduce": median(reduces) if reduces else float("nan")}

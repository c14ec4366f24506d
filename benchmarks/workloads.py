"""The report's workloads: a saved base model plus synthetic TFRecord shards, written once.

- `mobilenet`: `keras.applications.MobileNetV2(alpha=0.35, input 96x96x3, weights=None)`;
  layers from `block_13_expand` on train (BatchNorm frozen), new 10-class head. Compute-bound:
  a step is ~0.13 s on one core at batch 32, ~320k weights allreduced.
- `cnn`: the overhead benchmark's small CNN on 32x32x3 (`last:2` unfrozen, ~140k weights).
  Short steps (~15 ms), so per-step costs (callbacks, allreduce latency, cycle time) show.
  ResNet50 was the suggested second model, but at 32x32 one step of batch 32 with the last
  stage training takes 1.7 s on one core here (15M trainable weights): too slow for a report
  of under 20 minutes.

Example:
    spec = prepare("/tmp/work", "mobilenet", records=2048)
    spec["model"], spec["data"], spec["unfreeze"]
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

CLASSES = 10
SHARDS = 8  # files: each of 2 workers reads 4
SEED = 42


@dataclass(frozen=True)
class Workload:
    name: str
    input: tuple  # H, W, C
    unfreeze: str  # distft's --unfreeze
    first_trainable: str  # the bare Keras script trains from this layer on (BatchNorm frozen)


WORKLOADS = {
    "mobilenet": Workload("mobilenet", (96, 96, 3), "from:block_13_expand", "block_13_expand"),
    "cnn": Workload("cnn", (32, 32, 3), "last:2", "conv4"),
}


def prepare(root: str, name: str, records: int) -> dict[str, Any]:
    """Write `ROOT/NAME-RECORDS/{base_model.h5, shards/*.tfrecord}` unless already there;
    return the spec (paths, workload fields)."""
    import numpy as np

    w = WORKLOADS[name]
    folder = os.path.join(root, f"{name}-{records}")
    spec = {**asdict(w), "input": list(w.input), "records": records, "classes": CLASSES,
            "model": os.path.join(folder, "base_model.h5"),
            "data": os.path.join(folder, "shards", "train-*.tfrecord")}
    done = os.path.join(folder, "workload.json")
    if os.path.exists(done):
        return spec
    import tensorflow as tf

    from distft.demo import write_tfrecords

    tf.keras.utils.set_random_seed(SEED)
    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
    _base_model(name).save(spec["model"], save_format="h5")
    # Noisy prototypes of CLASSES classes: learnable, and image-sized records.
    rng = np.random.default_rng(SEED)
    y = rng.integers(0, CLASSES, records)
    prototypes = rng.random((CLASSES, *w.input), dtype=np.float32)
    x = 0.5 * prototypes[y] + 0.5 * rng.random((records, *w.input), dtype=np.float32)
    write_tfrecords(x, y, os.path.join(folder, "shards", "train-{:02d}.tfrecord"), SHARDS)
    with open(done, "w") as f:
        json.dump(spec, f)
    return spec


def _base_model(name: str):
    import tensorflow as tf

    if name == "mobilenet":
        # A 20-class top that distft (and the Keras script) replace with a 10-class head.
        return tf.keras.applications.MobileNetV2(alpha=0.35, input_shape=WORKLOADS[name].input,
                                                 weights=None, classes=20)
    from benchmarks.overhead import base_model

    return base_model()

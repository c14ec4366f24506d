"""The report's workloads: a saved base model plus synthetic TFRecord shards, written once.

- `mobilenet`: `keras.applications.MobileNetV2(alpha=0.35, input 96x96x3, weights=None)`;
  layers from `block_13_expand` on train (BatchNorm frozen), new 10-class head. Compute-bound:
  a step is ~0.13 s on one core at batch 32, ~320k weights allreduced.
- `cnn`: the overhead benchmark's small CNN on 32x32x3 (`last:2` unfrozen, ~170k weights).
  Short steps (~15 ms), so per-step costs (callbacks, allreduce latency, cycle time) show.
  ResNet50 was the suggested second model, but at 32x32 one step of batch 32 with the last
  stage training takes 1.7 s on one core here (15M trainable weights): too slow for a report
  of under 20 minutes.
- `mlp10m`: a ~10M-weight MLP on 32x32x3 (Flatten, Dense 2048, 1536, 512 `features`), trained
  whole (`all`): the cluster lab's model, whose 41 MB of gradients a step make a 1 Gbit/s link
  the bottleneck; the lab also fine-tunes it in part (`features` and the head only). Its
  largest gradient (the first layer's, 60% of the bytes) is the backward pass's last, so little
  of its allreduce can overlap the compute.
- `convnet10m`: a ~10M-weight VGG-like network on 64x64x3 (5 3x3 convolutions, then Dense
  1024, 1024, 512 `features`), trained whole: most of the compute is in the convolutions, most
  of the weights in the Dense layers on top, whose gradients the backward pass computes first
  (as in VGG or AlexNet, and in any model whose big layers sit at the top). On one core of
  this machine its step takes about as long as its allreduce at 1 Gbit/s: the case an
  allreduce overlapping the backward pass can hide.

Every contender starts from the same weights:
- `base_model.keras`: the base, written by Keras 3 (distft, the bare Keras script, Horovod);
- `base_model_tf_keras.h5`: the same base for the MWMS contender, which runs tf_keras (Keras 2):
  tf_keras cannot read a Keras 3 file, so the same architecture is built with tf_keras, every
  weight is copied over by layer and variable name, tf_keras writes the .h5, and the model read
  back from it must compute the same features (the layer the new head goes on) as the Keras 3
  model on one batch of the data (relative difference <= 1e-5);
- `head_init.npz`: the new 10-class head's initial kernel and bias, as distft makes them with
  its default seed (`GlorotUniform(seed=42)`, zero bias); the bare scripts set these values, and
  `prepare` checks that distft's own head equals them.

Example:
    spec = prepare("/tmp/work", "mobilenet", records=2048)
    spec["model"], spec["model_tf_keras"], spec["head_init"], spec["data"], spec["unfreeze"]
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

CLASSES = 10
SHARDS = 8  # files: each of 2 workers reads 4
SEED = 42  # distft's default --seed: the new head's initializer seed
TOLERANCE = 1e-5  # largest relative difference of the Keras 3 and tf_keras features on one batch
KERAS3_NAME = {"depthwise_kernel": "kernel"}  # tf_keras variable name: Keras 3's (DepthwiseConv2D)


@dataclass(frozen=True)
class Workload:
    name: str
    input: tuple  # H, W, C
    unfreeze: str  # distft's --unfreeze
    first_trainable: str  # the bare Keras script trains from this layer on (BatchNorm frozen)


WORKLOADS = {
    "mobilenet": Workload("mobilenet", (96, 96, 3), "from:block_13_expand", "block_13_expand"),
    "cnn": Workload("cnn", (32, 32, 3), "last:2", "conv4"),
    "mlp10m": Workload("mlp10m", (32, 32, 3), "all", "dense_1"),
    "convnet10m": Workload("convnet10m", (64, 64, 3), "all", "conv1"),
}


def prepare(root: str, name: str, records: int) -> dict[str, Any]:
    """Write `ROOT/NAME-RECORDS/{base_model.keras, base_model_tf_keras.h5, head_init.npz,
    shards/*.tfrecord}` unless already there; return the spec (paths, workload fields)."""
    import numpy as np

    w = WORKLOADS[name]
    folder = os.path.join(root, f"{name}-{records}")
    spec = {**asdict(w), "input": list(w.input), "records": records, "classes": CLASSES,
            "model": os.path.join(folder, "base_model.keras"),
            "model_tf_keras": os.path.join(folder, "base_model_tf_keras.h5"),
            "head_init": os.path.join(folder, "head_init.npz"),
            "data": os.path.join(folder, "shards", "train-*.tfrecord")}
    done = os.path.join(folder, "workload.json")
    if os.path.exists(done) and all(os.path.exists(spec[k]) for k in ("model", "model_tf_keras", "head_init")):
        return spec
    import keras

    from distft.demo import write_tfrecords

    keras.utils.set_random_seed(SEED)
    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)
    base = _base_model(name, keras)
    base.save(spec["model"])
    # Noisy prototypes of CLASSES classes: learnable, and image-sized records.
    rng = np.random.default_rng(SEED)
    y = rng.integers(0, CLASSES, records)
    prototypes = rng.random((CLASSES, *w.input), dtype=np.float32)
    x = 0.5 * prototypes[y] + 0.5 * rng.random((records, *w.input), dtype=np.float32)
    spec["tf_keras_max_difference"] = write_tf_keras_twin(base, name, x[:32], spec["model_tf_keras"])
    write_head_init(spec, base)
    write_tfrecords(x, y, os.path.join(folder, "shards", "train-{:02d}.tfrecord"), SHARDS)
    with open(done, "w") as f:
        json.dump(spec, f)
    return spec


def _base_model(name: str, keras_module):
    """The workload's base model, built with `keras_module` (Keras 3's `keras` or `tf_keras`)."""
    if name == "mobilenet":
        # A 20-class top that distft (and the Keras script) replace with a 10-class head.
        return keras_module.applications.MobileNetV2(alpha=0.35, input_shape=WORKLOADS[name].input,
                                                     weights=None, classes=20)
    if name == "mlp10m":
        return _mlp10m(keras_module)
    if name == "convnet10m":
        return _convnet10m(keras_module)
    from benchmarks.overhead import base_model

    return base_model(keras_module)


def _mlp10m(K):
    """10.2M weights (Dense 3072x2048, 2048x1536, 1536x512) under a 20-class top."""
    inputs = K.Input(WORKLOADS["mlp10m"].input)
    x = K.layers.Flatten(name="flatten")(inputs)
    for name, units in (("dense_1", 2048), ("dense_2", 1536), ("features", 512)):
        x = K.layers.Dense(units, activation="relu", name=name)(x)
    return K.Model(inputs, K.layers.Dense(20, activation="softmax", name="top")(x), name="mlp10m")


def _convnet10m(K):
    """10.4M weights: 3x3 convolutions of 64, 64, 128, 128, 128 filters (a 2x2 max pool after
    the second, fourth and fifth), then Dense 8192x1024, 1024x1024, 1024x512 under a 20-class
    top."""
    x = inputs = K.Input(WORKLOADS["convnet10m"].input)
    for k, filters in enumerate((64, 64, 128, 128, 128), start=1):
        x = K.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"conv{k}")(x)
        if k in (2, 4, 5):
            x = K.layers.MaxPooling2D(name=f"pool{k}")(x)
    x = K.layers.Flatten(name="flatten")(x)
    for name, units in (("dense_1", 1024), ("dense_2", 1024), ("features", 512)):
        x = K.layers.Dense(units, activation="relu", name=name)(x)
    return K.Model(inputs, K.layers.Dense(20, activation="softmax", name="top")(x), name="convnet10m")


def write_tf_keras_twin(base, name: str, batch, path: str) -> float:
    """Write Keras 3 model `base` as a tf_keras `.h5` at `path`: the same architecture built by
    tf_keras, every weight copied by layer and variable name. Reads the file back with tf_keras
    and returns the largest difference, relative to the largest value, of the two models'
    features (the layer before the top, which the new head is put on) on `batch`; raises if it
    is above TOLERANCE."""
    import keras
    import numpy as np
    import tf_keras

    twin = _base_model(name, tf_keras)
    source = {l.name: l for l in base.layers}
    copied = 0
    for layer in twin.layers:
        if not layer.weights:
            continue
        if layer.name not in source:
            raise RuntimeError(f"tf_keras layer {layer.name} has no Keras 3 twin")
        by_name = {v.name.split("/")[-1]: v for v in source[layer.name].weights}
        names = [v.name.split("/")[-1].split(":")[0] for v in layer.weights]
        values = [by_name[KERAS3_NAME.get(n, n)].numpy() for n in names]
        layer.set_weights(values)
        copied += sum(v.size for v in values)
    total = sum(int(np.prod(v.shape)) for v in base.weights)
    if copied != total:
        raise RuntimeError(f"copied {copied} of the {total} weights to the tf_keras twin")
    twin.save(path)  # .h5: tf_keras's own format, which tf_keras 2.21 reads
    read = tf_keras.models.load_model(path, compile=False)
    ours = np.asarray(keras.Model(base.inputs, base.layers[-2].output)(batch, training=False))
    theirs = tf_keras.Model(read.inputs, read.layers[-2].output)(batch, training=False).numpy()
    difference = float(np.abs(ours - theirs).max() / max(1e-12, np.abs(ours).max()))
    if difference > TOLERANCE:
        raise RuntimeError(f"the tf_keras twin computes other features (relative difference {difference})")
    return difference


def write_head_init(spec: dict[str, Any], base) -> None:
    """The new head's initial weights, as distft makes them (its default seed); checked against
    the head distft builds for this model."""
    import keras
    import numpy as np

    from distft.model.head import HEAD_NAME
    from distft.model.prepare import prepare as distft_prepare

    features = base.layers[-2].output.shape[-1]
    kernel = np.asarray(keras.initializers.GlorotUniform(seed=SEED)((features, CLASSES)))
    bias = np.zeros(CLASSES, np.float32)
    ft = distft_prepare(spec["model"], CLASSES, spec["unfreeze"], seed=SEED)
    theirs = ft.model.get_layer(HEAD_NAME).get_weights()
    if not (np.array_equal(theirs[0], kernel) and np.array_equal(theirs[1], bias)):
        raise RuntimeError("distft's new head differs from head_init.npz")
    np.savez(spec["head_init"], kernel=kernel, bias=bias)

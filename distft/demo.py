"""The built-in example: a real fine-tuning on real data shipped inside distft.

1. Pretrain a small CNN on handwritten digits 0-4 (`base_model.keras`, Keras 3 format).
2. Write digits 5-9 as TFRecord shards (train and validation).
3. Fine-tune the base on them with a new 5-class head and its early layers frozen,
   on several Horovod workers.

Example:
    from distft.demo import run_demo
    run_demo("distft-demo", np=2, epochs=10)
"""
from __future__ import annotations

import gzip
import os
from typing import NamedTuple

import numpy as np

from distft import log
from distft.api import _setup_logging
from distft.files import atomic_write

SHARDS = 4
DIGITS = os.path.join(os.path.dirname(__file__), "assets", "digits.csv.gz")


class Digits(NamedTuple):
    images: np.ndarray  # (1797, 8, 8) float64, grey levels 0-16
    target: np.ndarray  # (1797,) int64, the digit


def load_digits() -> Digits:
    """The 1,797 8x8 handwritten digits of UCI's "Optical Recognition of Handwritten Digits"
    (CC BY 4.0), as scikit-learn's `load_digits` gives them: one row a digit, 64 grey levels
    then the label. Read from the copy shipped in distft, so that the demo needs no
    scikit-learn (which Keras imports on start whenever it is installed).

    Example:
        images, target = load_digits()
    """
    with gzip.open(DIGITS, "rt") as f:
        rows = np.loadtxt(f, delimiter=",")
    return Digits(rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64))


def build_base_model(classes: int = 5, seed: int = 0):
    """The 'pretrained' model: a small CNN for 8x8 grey digits, with BatchNormalization."""
    import keras

    keras.utils.set_random_seed(seed)
    L = keras.layers
    return keras.Sequential([
        L.Input((8, 8, 1), name="pixels"),
        L.Conv2D(16, 3, padding="same", activation="relu", name="conv1"),
        L.BatchNormalization(name="bn1"),
        L.Conv2D(32, 3, padding="same", activation="relu", name="conv2"),
        L.MaxPooling2D(name="pool"),
        L.Flatten(name="flatten"),
        L.Dense(64, activation="relu", name="features"),
        L.Dense(classes, activation="softmax", name="classes"),
    ], name="digits_base")


def write_tfrecords(x: np.ndarray, y: np.ndarray, pattern: str, shards: int) -> list[str]:
    """Write records (`x` float list, `y` int64) round-robin into `shards` files."""
    import tensorflow as tf

    paths = [pattern.format(i) for i in range(shards)]
    for i, path in enumerate(paths):
        def write(tmp, i=i):
            with tf.io.TFRecordWriter(tmp) as w:
                for xi, yi in zip(x[i::shards], y[i::shards]):
                    w.write(tf.train.Example(features=tf.train.Features(feature={
                        "x": tf.train.Feature(float_list=tf.train.FloatList(value=xi.ravel())),
                        "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(yi)])),
                    })).SerializeToString())
        atomic_write(path, write)
    return paths


def make_demo_data(folder: str, seed: int = 0) -> dict[str, str]:
    """Write base_model.keras and the shards; return their paths."""
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "shards"), exist_ok=True)

    low = y < 5
    base = build_base_model(seed=seed)
    base.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    base.fit(x[low], y[low], epochs=15, batch_size=32, verbose=0)
    model_path = os.path.join(folder, "base_model.keras")
    atomic_write(model_path, base.save, suffix=".keras")

    order = rng.permutation(np.flatnonzero(~low))
    split = int(0.8 * len(order))
    train, val = order[:split], order[split:]
    write_tfrecords(x[train], y[train] - 5, os.path.join(folder, "shards", "train-{:02d}.tfrecord"), SHARDS)
    write_tfrecords(x[val], y[val] - 5, os.path.join(folder, "shards", "val-{:02d}.tfrecord"), 1)
    return {"model": model_path, "data": os.path.join(folder, "shards", "train-*.tfrecord"),
            "val_data": os.path.join(folder, "shards", "val-*.tfrecord"),
            "train_records": len(train), "val_records": len(val)}


def run_demo(output_dir: str = "distft-demo", np: int = 2, epochs: int = 10,
             controller: str = "gloo") -> dict:
    """Run the whole example; return the fine-tuning metrics."""
    from distft.api import train
    from distft.horovod_install import require

    require()  # before the pretraining, not after it
    _setup_logging(0, 1, False)
    log.info("demo: pretraining a CNN on digits 0-4 (UCI's handwritten digits) -> %s", output_dir)
    paths = make_demo_data(output_dir)
    log.info("demo: base model %s; digits 5-9 as %d train shards (%d records) and a validation "
             "shard (%d records)", paths["model"], SHARDS, paths["train_records"], paths["val_records"])
    log.info("demo: fine-tuning with a new 5-class head, early layers frozen, on %d workers", np)
    run_dir = os.path.join(output_dir, "run")
    metrics = train(model=paths["model"], data=paths["data"], val_data=paths["val_data"],
                    output_dir=run_dir, num_classes=5, unfreeze="last:2", epochs=epochs,
                    batch_size=32, lr=1e-3, np=np, controller=controller, overwrite=True,
                    log_every=10)
    before = metrics["validation_before"].get("accuracy", float("nan"))
    after = metrics["validation"].get("accuracy", float("nan"))
    print(f"\nvalidation accuracy on digits 5-9: {before:.3f} before fine-tuning, "
          f"{after:.3f} after ({metrics['epochs']} epochs on {metrics['workers']} workers, "
          f"{metrics['samples_per_sec']:.0f} samples/s)")
    print(f"fine-tuned model: {os.path.join(run_dir, 'model.keras')}")
    print(f"metrics:          {os.path.join(run_dir, 'metrics.json')}")
    print(f"watch it:         tensorboard --logdir {os.path.join(run_dir, 'tensorboard')} "
          "--host 127.0.0.1 --port 6006")
    return metrics

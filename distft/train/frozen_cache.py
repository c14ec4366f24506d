"""--cache_frozen: run the frozen prefix once over each worker's share, then train the rest
on the cached features.

Each worker streams its own share once (at inference, as the frozen layers run in training
too), keeps the prefix's outputs and labels in memory, and trains the trainable rest on them,
each epoch shuffled and cut as without the cache (dataset.epoch_stream), for the same steps per
epoch. Validation, the checkpoints and model.keras use the full model (the rest shares its
layers).

Example:
    parts = worker.all_ok(lambda: split_model(ft, plan, cfg))   # before anything is written
    fit_model, streams = cached(parts, ft, train_data, cfg, worker,
                                compile=lambda rest: rest.compile(optimizer=opt, loss=ft.loss),
                                steps=steps)
    # skip: batches of epoch initial_epoch already trained (a run resumed mid-epoch)
    fit_model.fit(streams(initial_epoch, skip), steps_per_epoch=steps, ...)
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import keras
import tensorflow as tf

from distft import log
from distft.config import TrainConfig
from distft.data.dataset import Ready, epoch_stream
from distft.errors import DistftError
from distft.model.prepare import FineTuneModel
from distft.model.split import split
from distft.model.stages import Plan
from distft.train.runtime import Worker


def check_pipeline(cfg: TrainConfig) -> None:
    """The input pipeline must give the same inputs every epoch for a cache to be exact."""
    if cfg.augment:
        raise DistftError(f"--cache_frozen needs the same inputs every epoch, and --augment="
                          f"{','.join(cfg.augment)} changes them: drop one of the two")


def split_model(ft: FineTuneModel, plan: Plan, cfg: TrainConfig) -> tuple[keras.Model, keras.Model]:
    """(frozen prefix, trainable rest), or a DistftError saying why the run cannot be cached.
    With a schedule, the prefix is what stays frozen in every stage."""
    check_pipeline(cfg)
    return split(ft.model, plan.ever_trainable())


def cached(parts: tuple[keras.Model, keras.Model], ft: FineTuneModel, data: Ready,
           cfg: TrainConfig, worker: Worker, compile: Callable[[keras.Model], None],
           steps: int, preprocess: str) -> tuple[keras.Model, Callable[..., tf.data.Dataset]]:
    """The model to fit (the trainable rest, compiled by `compile`) and `streams(first,
    skip=0)`: its stream of cached features (the images fed as `preprocess`), `steps` batches
    an epoch, from batch `skip` of epoch `first` to the last epoch (as Ready.stream's)."""
    prefix, rest = parts
    started = time.perf_counter()
    stream = data.stream(worker.rank, worker.size, cfg.batch_size, ft.input_shape, training=False,
                         preprocess=preprocess)
    features, labels = worker.all_ok(lambda: _features(prefix, stream))
    counts = worker.gather(len(labels))
    log.info("cached the frozen prefix's output %s for %d records (%s per worker) in %.1fs: "
             "training %d layers on it", tuple(prefix.output_shape[1:]), sum(counts),
             "/".join(map(str, counts)), time.perf_counter() - started,
             len([l for l in rest.layers if l.trainable_weights]))
    share = tf.data.Dataset.from_tensor_slices((features, labels))

    def streams(first: int, skip: int = 0) -> tf.data.Dataset:
        ds = epoch_stream(lambda e: share, steps * cfg.batch_size, (first, cfg.epochs), cfg.seed,
                          worker.rank, min(len(labels), cfg.shuffle_buffer), skip * cfg.batch_size)
        return ds.batch(cfg.batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)

    compile(rest)
    return rest, streams


def _features(prefix: keras.Model, stream: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    run = tf.function(lambda x: prefix(x, training=False))
    xs, ys = [], []
    for x, y in stream:
        xs.append(run(x).numpy())
        ys.append(y.numpy())
    if not xs:
        raise DistftError("--cache_frozen: this worker's share of --data is empty: use fewer "
                          "workers or more data files")
    return np.concatenate(xs), np.concatenate(ys)

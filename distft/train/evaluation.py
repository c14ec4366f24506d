"""Exact metrics over a data set split across workers.

Each worker evaluates its own records once (no collective inside Keras, so uneven shares
cannot hang), then the per-worker means are combined weighted by record counts.

Example:
    metrics = evaluate_split(model, stream, records=share.records, worker=worker)
    metrics["loss"], metrics["accuracy"]
"""
from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from distft.train.runtime import Worker


def evaluate_split(model: keras.Model, stream: tf.data.Dataset, records: int,
                   worker: Worker) -> dict[str, float]:
    """Metrics of `model` over all workers' records, the same dict on every worker."""
    with warnings.catch_warnings():  # Keras 3 warns when a finite stream ends, as it must here
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        local = model.evaluate(stream, verbose=0, return_dict=True) if records else {}
    parts = worker.gather((records, {k: float(v) for k, v in local.items()}))
    total = sum(n for n, _ in parts)
    names = next((m.keys() for n, m in parts if n), [])
    return {k: sum(n * m[k] for n, m in parts if n) / total for k in names} if total else {}

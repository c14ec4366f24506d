"""Exact metrics over a data set split across workers.

Each worker evaluates its own records once (no collective inside Keras, so uneven shares
cannot hang), then the metric states are summed over the workers (train/metrics.py): exact
for every Keras metric, AUC, precision, recall and F1 included.

Example:
    metrics = evaluate_split(model, stream, records=share.records, worker=worker)
    metrics["loss"], metrics["accuracy"]
"""
from __future__ import annotations

import warnings

import keras
import tensorflow as tf

from distft.train.metrics import build_compiled, summed_results
from distft.train.runtime import Worker


def evaluate_split(model: keras.Model, stream: tf.data.Dataset, records: int,
                   worker: Worker) -> dict[str, float]:
    """Metrics of `model` over all workers' records, the same dict on every worker."""
    if records:
        with warnings.catch_warnings():  # Keras 3 warns when a finite stream ends, as it must here
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            keras.Model.evaluate(model, stream, verbose=0)  # not a Keras Hub task's: preprocessed already
    else:  # takes part with zero states; evaluate would have built the compiled metrics
        build_compiled(model, stream.element_spec)
        model.reset_metrics()
    return summed_results(model.metrics, worker, "distft_evaluate")

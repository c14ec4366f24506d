"""Each epoch's training metrics over all workers, exact: the metric states are summed over the
workers (train/metrics.py), one allreduce per epoch. Horovod's MetricAverageCallback (in its
Keras layer) averaged each worker's results instead, which is exact for means only."""
from __future__ import annotations

import keras

from distft.train.metrics import summed_results
from distft.train.runtime import Worker


class EpochMetrics(keras.callbacks.Callback):
    """Replaces each worker's own epoch metrics (`loss`, `accuracy`, `auc`, ...; not `val_*`)
    with the results of the states summed over all workers, so every worker logs and
    checkpoints the figures one worker would have had on all the epoch's batches.

    Example:
        model.fit(..., callbacks=[EpochMetrics(worker), ...])   # before the loggers and validation
    """

    def __init__(self, worker: Worker):
        super().__init__()
        self.worker = worker

    def on_epoch_end(self, epoch, logs=None):
        results = summed_results(self.model.metrics, self.worker, "distft_epoch_metrics")
        if logs is not None:
            logs.update(results)

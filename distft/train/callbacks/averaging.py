"""Each epoch's training metrics averaged over all workers (Horovod's MetricAverageCallback,
which lives in its Keras layer, rewritten on its core ops): one allreduce per epoch."""
from __future__ import annotations

import keras

from distft.train.runtime import Worker


class MetricAverage(keras.callbacks.Callback):
    """Replaces each worker's own epoch metrics (`loss`, `accuracy`, ...; not `val_*`) with
    their mean over all workers, so every worker logs and checkpoints the same values.

    Example:
        model.fit(..., callbacks=[MetricAverage(worker), ...])   # before the loggers
    """

    def __init__(self, worker: Worker):
        super().__init__()
        self.worker = worker

    def on_epoch_end(self, epoch, logs=None):
        if logs:
            own = {k: v for k, v in logs.items() if not k.startswith("val_")}
            logs.update(self.worker.average(own, name="distft_metric_average"))

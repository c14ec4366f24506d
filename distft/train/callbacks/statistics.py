"""Layer statistics that train outside the gradients (BatchNormalization's moving mean and
variance under `--train_bn`) averaged over the workers.

Each worker updates a training layer's moving statistics from its own batches, so they drift
apart between workers. This callback averages them at every epoch's end, before validation,
checkpoints and the final save read them (and `GracefulStop` calls `average` before its
mid-epoch checkpoint), so every worker holds the same values wherever they are used. Only
layers that train are touched: frozen layers stay bit-identical. With `--sync_bn` the workers'
statistics are equal already and the average leaves them as they are.

Example:
    stats = LayerStatistics(model, worker)
    model.fit(..., callbacks=[stats, Validation(...), ...])   # before validation and checkpoints
"""
from __future__ import annotations

import keras

from distft.model.variables import classify
from distft.train.runtime import Worker


class LayerStatistics(keras.callbacks.Callback):
    def __init__(self, model: keras.Model, worker: Worker):
        super().__init__()
        self.watched, self.worker = model, worker

    def variables(self) -> list:
        """The float statistics of the layers that train now (model/variables.py: not the
        seed states, nor the weights under LoRA's factors, which are frozen)."""
        return [v for v in classify(self.watched).statistics if "float" in str(v.dtype)]

    def average(self) -> None:
        """Replace the statistics with their mean over all workers (a collective)."""
        variables = self.variables()
        for v, mean in zip(variables, self.worker.allreduce(variables, "distft_layer_statistics",
                                                            average=True)):
            v.assign(mean)

    def on_epoch_end(self, epoch, logs=None):
        self.average()

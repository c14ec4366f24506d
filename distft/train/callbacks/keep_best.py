"""--keep_best=METRIC: model.keras holds the weights of the epoch with the best METRIC.

Every worker follows the metric (the epoch's logs are the same on all of them, so all find the
same best epoch); whenever it improves, rank 0 writes the model's weights to
`checkpoints/best/` (atomically, as every checkpoint, with the epoch's `RunState`). At the
run's end rank 0 loads them back before it saves model.keras, after the check that the workers
ended with the same weights (metrics.json's `weights_checksums` are the last epoch's). Whether
higher is better is decided as Keras's EarlyStopping decides it (`mode=auto`: `loss` is lower
is better, a metric by its own direction), unless `:mode=min|max` says. The best so far is
part of the run's state (`RunState.best`), so `--resume` goes on comparing with it.

Example:
    best = KeepBest("val_loss", "auto", worker, run.checkpoints, tf.train.Checkpoint(model=m), {})
    model.fit(..., callbacks=[..., Validation(...), best, ...])
    best.record        # {"monitor": "val_loss", "value": 0.3012, "epoch": 3}
    best.restore()     # rank 0, at the end: epoch 3's weights in the model
"""
from __future__ import annotations

import os

import tensorflow as tf
# EarlyStopping's base (not exported by Keras): its `mode` and how `auto` reads a metric.
from keras.src.callbacks.monitor_callback import MonitorCallback

from distft.errors import DistftError
from distft.train.checkpoint import CheckpointStore
from distft.train.runtime import Worker
from distft.train.state import RunState

FOLDER = "best"  # in the run's checkpoints folder


class KeepBest(MonitorCallback):
    """`store`: the run's checkpoints (rank 0 writes); `checkpoint`: the model's weights alone;
    `best`: the record of the run so far (`RunState.best`; empty at the start)."""

    def __init__(self, monitor: str, mode: str, worker: Worker, store: CheckpointStore,
                 checkpoint: tf.train.Checkpoint, best: dict):
        super().__init__(monitor, mode)
        self.worker, self.store, self.checkpoint = worker, store, checkpoint
        resumed = best.get("monitor") == monitor
        self.best, self.epoch = (best["value"], best["epoch"]) if resumed else (None, 0)

    @property
    def record(self) -> dict:
        """The best epoch so far (1-based) and its value; empty before the first epoch's end."""
        return {"monitor": self.monitor, "value": float(self.best), "epoch": self.epoch} if self.epoch else {}

    def on_epoch_end(self, epoch, logs=None):
        option = f"--keep_best={self.monitor}"
        if self.monitor_op is None:
            try:
                self._set_monitor_op()
            except ValueError:
                raise DistftError(f"{option}: Keras cannot tell whether {self.monitor} is better "
                                  f"high or low: pass {option}:mode=max (or mode=min)") from None
        logs = logs or {}
        if self.monitor not in logs:
            raise DistftError(f"{option}: the epoch's logs do not have {self.monitor}: pass one of "
                              f"{', '.join(sorted(logs))}")
        current = float(logs[self.monitor])
        if self._is_improvement(current, self.best):
            self.best, self.epoch = current, epoch + 1
            if self.worker.rank == 0:
                state = RunState(epoch=epoch + 1, logs={k: float(v) for k, v in logs.items()}, best=self.record)
                self.store.save(self.checkpoint, state, name=FOLDER)

    def restore(self) -> None:
        """Rank 0: the best epoch's weights into the model."""
        CheckpointStore.restore(self.checkpoint, os.path.join(self.store.folder, FOLDER))

"""Staged unfreezing: at the first epoch of each stage, switch the trainable layers.

Every worker runs the same epochs, so all switch before the same step. The train function is
rebuilt so Keras differentiates the new trainable set; the optimizer was built over every
stage's variables (Plan.variables), so the weights that trained before keep their state and
Horovod allreduces every gradient of the new set.

Example:
    StagedUnfreezing(plan, scalars=tb.write_epoch)   # first in the callback list
"""
from __future__ import annotations

from typing import Callable, Optional

import keras
import tensorflow as tf

from distft import log
from distft.model.stages import Plan


class StagedUnfreezing(keras.callbacks.Callback):
    def __init__(self, plan: Plan, scalars: Optional[Callable[[dict, int], None]] = None):
        super().__init__()
        self.plan, self.scalars = plan, scalars
        self.record: list[dict] = []  # per epoch: stage and trainable layers (for metrics.json)

    def on_epoch_begin(self, epoch, logs=None):
        index = self.plan.index_at(epoch)
        if index != self.plan.current:
            names = self.plan.apply(index)
            self.model.make_train_function(force=True)  # traced again for the new set
            log.info("epoch %d: %s, %d layers / %d weights trainable (%s)", epoch + 1,
                     self.plan.describe(index), len(names), self.plan.ft.trainable_params,
                     ", ".join(names[-6:]) + (" ..." if len(names) > 6 else ""))

    def on_epoch_end(self, epoch, logs=None):
        self.record.append({"epoch": epoch + 1, "stage": self.plan.current,
                            "trainable_params": self.plan.ft.trainable_params,
                            "trainable_layers": self.plan.trainable_layers()})
        if self.scalars:
            self.scalars({"stage": self.plan.current,
                          "trainable_params": self.plan.ft.trainable_params}, epoch)

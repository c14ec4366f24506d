"""What the user watches: a progress bar (or a line every `log_every` steps when output is
not a terminal; with --steps_per_execution, at the first execution end at or after each
multiple) and one summary line per epoch. Rank 0 only."""
from __future__ import annotations

import sys

import keras
import tensorflow as tf

from distft import log
from distft.train.callbacks.steps import StepCounter, crossed


class Progress(StepCounter):
    """Example: Progress(epochs=3, steps_per_epoch=56, log_every=50, bar=not launched)."""

    def __init__(self, epochs: int, steps_per_epoch: int, log_every: int, bar: bool = True):
        super().__init__()
        self.epochs, self.steps, self.log_every = epochs, steps_per_epoch, log_every
        self.interactive = bar and sys.stdout.isatty()

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        if self.interactive:
            self.bar = keras.utils.Progbar(self.steps, stateful_metrics=["loss"], unit_name="step")

    def on_train_batch_end(self, batch, logs=None):
        step, ran = batch + 1, self.ran(batch)
        if self.interactive:
            if crossed(step, ran, 5) or step == self.steps:
                self.bar.update(step, [(k, float(v)) for k, v in (logs or {}).items()])
        elif crossed(step, ran, self.log_every) and step != self.steps:
            shown = "  ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items())
            log.info("epoch %d/%d  step %d/%d  %s", self.epoch + 1, self.epochs, step, self.steps, shown)

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        rate = logs.pop("samples_per_sec", 0.0)
        seconds = logs.pop("epoch_seconds", 0.0)
        logs.pop("step_time_ms", None)
        shown = "  ".join(f"{k} {float(v):.4f}" for k, v in logs.items())
        log.info("epoch %d/%d  %s  (%.0f samples/s, %.1fs)", epoch + 1, self.epochs, shown, rate, seconds)

"""Validation after each epoch over every worker's share, exact and hang-free."""
from __future__ import annotations

from typing import Callable

import tensorflow as tf


class Validation(tf.keras.callbacks.Callback):
    """Adds `val_<metric>` to each epoch's logs, the same on every worker.

    Example:
        Validation(lambda: evaluate_split(model, val_stream, n, worker))
    """

    def __init__(self, evaluate: Callable[[], dict[str, float]], stop=None):
        super().__init__()
        self.evaluate, self.stop = evaluate, stop

    def on_epoch_end(self, epoch, logs=None):
        if self.stop is not None and self.stop.mid_epoch:
            return  # the epoch was cut short by a signal: it is run again on --resume
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in self.evaluate().items()})

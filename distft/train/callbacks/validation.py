"""Validation after each epoch over every worker's share, exact and hang-free."""
from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf


class Validation(keras.callbacks.Callback):
    """Adds `val_<metric>` to each epoch's logs, the same on every worker.

    Example:
        Validation(lambda: evaluate_split(model, val_stream, n, worker))
    """

    def __init__(self, evaluate: Callable[[], dict[str, float]]):
        super().__init__()
        self.evaluate = evaluate

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs.update({f"val_{k}": v for k, v in self.evaluate().items()})

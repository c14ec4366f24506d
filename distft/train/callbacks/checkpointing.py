"""Rank 0 writes a checkpoint (model, optimizer, the run's state) at the end of every epoch."""
from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf

from distft.train.checkpoint import CheckpointStore
from distft.train.state import RunState


class Checkpointing(keras.callbacks.Callback):
    """`state(epoch, logs)`: the run's state at the start of `epoch`, with the metrics of the
    epoch that ended there.

    Example: Checkpointing(store, tf.train.Checkpoint(model=m, optimizer=o),
                           lambda epoch, logs: RunState(epoch=epoch, logs=logs)) on rank 0."""

    def __init__(self, store: CheckpointStore, checkpoint: tf.train.Checkpoint,
                 state: Callable[[int, dict], RunState]):
        super().__init__()
        self.store, self.checkpoint, self.state = store, checkpoint, state

    def on_epoch_end(self, epoch, logs=None):
        self.store.save(self.checkpoint, self.state(epoch + 1, logs or {}))

"""Rank 0 writes a checkpoint (model, optimizer, epoch) at the end of every epoch."""
from __future__ import annotations

from typing import Callable, Optional

import keras
import tensorflow as tf

from distft.train.checkpoint import CheckpointStore


class Checkpointing(keras.callbacks.Callback):
    """Example: Checkpointing(store, tf.train.Checkpoint(model=m, optimizer=o)) on rank 0."""

    def __init__(self, store: CheckpointStore, checkpoint: tf.train.Checkpoint,
                 extra: Optional[Callable[[int], dict]] = None):
        super().__init__()
        self.store, self.checkpoint, self.extra = store, checkpoint, extra

    def on_epoch_end(self, epoch, logs=None):
        state = {"epoch": epoch + 1, "logs": {k: float(v) for k, v in (logs or {}).items()},
                 **(self.extra(epoch) if self.extra else {})}
        self.store.save(self.checkpoint, state)

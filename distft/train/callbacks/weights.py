"""What moved: weight histograms and each trainable layer's relative change, on rank 0.

Every `every` epochs the trainable layers' weights go to TensorBoard as histograms
(`weights/<layer>/<weight>`) with each layer's relative change since the run began,
||w - w0|| / ||w0|| over all its weights (`moved/<layer>`); the frozen layers' weights are
written once, at step 0 (`frozen/<layer>/<weight>`), for comparison: they do not move.

Example:
    WeightChanges(ft.model, writer, every=2)   # rank 0, with --histograms=2
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf


class WeightChanges(keras.callbacks.Callback):
    def __init__(self, model: keras.Model, writer: tf.summary.SummaryWriter, every: int,
                 initial_epoch: int = 0):
        super().__init__()
        self.watched, self.writer, self.every = model, writer, every
        self.initial_epoch = initial_epoch

    def on_train_begin(self, logs=None):
        layers = [l for l in _leaves(self.watched) if l.weights]
        self._start = {id(l): [w.numpy() for w in l.weights] for l in layers}
        with self.writer.as_default():
            for layer in layers:
                if not layer.trainable_weights:
                    for w in layer.weights:
                        tf.summary.histogram(f"frozen/{layer.name}/{_short(w)}", w, step=self.initial_epoch)
        self.writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        with self.writer.as_default():
            for layer in _leaves(self.watched):
                if not layer.trainable_weights:
                    continue
                start = self._start[id(layer)]
                now = [w.numpy() for w in layer.weights]
                for w, value in zip(layer.weights, now):
                    tf.summary.histogram(f"weights/{layer.name}/{_short(w)}", value, step=epoch + 1)
                moved = np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(now, start)))
                size = np.sqrt(sum(np.sum(b ** 2) for b in start))
                tf.summary.scalar(f"moved/{layer.name}", moved / max(size, 1e-12), step=epoch + 1)
        self.writer.flush()


def _leaves(model: keras.Model) -> list[keras.layers.Layer]:
    """The model's layers, those of nested models in their place."""
    return [leaf for layer in model.layers
            for leaf in (_leaves(layer) if isinstance(layer, keras.Model) else [layer])]


def _short(weight) -> str:
    """A weight's name within its layer (`kernel`, `bias`, `gamma`, ...)."""
    return weight.path.rsplit("/", 1)[-1]

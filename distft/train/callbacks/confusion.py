"""A classifier's confusion matrix at each validation, over every rank's validation records.

Each rank counts its own share (one more forward pass over it), the counts are summed with one
gather, and rank 0's `report` receives the K x K matrix (rows: true class, columns: predicted).
`render` draws it as a PNG labelled with the class names; `per_class_accuracy` is its diagonal
over its row sums.

Example:
    confusion = ConfusionMatrix(ft.model, val_stream, classes=5, worker=worker,
                                report=tb.write_confusion if worker.rank == 0 else None)
    confusion.measure(0)                   # before training
    model.fit(..., callbacks=[..., confusion])   # then after each epoch
"""
from __future__ import annotations

import io
from typing import Callable, Optional

import keras
import numpy as np
import tensorflow as tf

from distft.train.runtime import Worker

# Per-class accuracy scalars are written for heads of up to this many classes (the image always).
MAX_CLASS_SCALARS = 50


class ConfusionMatrix(keras.callbacks.Callback):
    def __init__(self, model: keras.Model, stream: tf.data.Dataset, classes: int, worker: Worker,
                 report: Optional[Callable[[np.ndarray, int], None]] = None):
        super().__init__()
        self.stream, self.classes, self.worker, self.report = stream, classes, worker, report

        @tf.function
        def count(stream: tf.data.Dataset) -> tf.Tensor:
            total = tf.zeros([classes, classes], tf.int64)
            for batch in stream:
                x, y, _ = keras.utils.unpack_x_y_sample_weight(batch)
                predicted = tf.argmax(model(x, training=False), axis=-1)
                total += tf.math.confusion_matrix(_labels(y, classes), predicted, classes,
                                                  dtype=tf.int64)
            return total

        self._count = count

    def measure(self, step: int) -> None:
        """Count on every rank (a collective); rank 0 reports the sum at `step`."""
        counts = sum(self.worker.gather(self._count(self.stream).numpy()))
        if self.report:
            self.report(counts, step)

    def on_epoch_end(self, epoch, logs=None):
        self.measure(epoch + 1)


def _labels(y: tf.Tensor, classes: int) -> tf.Tensor:
    """Class indices from integer labels or one-hot rows."""
    if y.shape.rank and y.shape.rank > 1 and y.shape[-1] == classes:
        return tf.argmax(y, axis=-1)
    return tf.reshape(tf.cast(y, tf.int64), [-1])


def per_class_accuracy(counts: np.ndarray) -> list[Optional[float]]:
    """Each true class's share predicted right (None for a class absent from the records)."""
    rows = counts.sum(axis=1)
    return [float(counts[i, i] / rows[i]) if rows[i] else None for i in range(len(counts))]


def render(counts: np.ndarray, names: list[str], title: str) -> bytes:
    """The matrix as a PNG: cells shaded by each true class's share, labelled with the counts."""
    import matplotlib

    matplotlib.use("Agg")  # no display; before pyplot
    from matplotlib import pyplot as plt

    k = len(counts)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    size = min(12.0, 2.5 + 0.45 * k)
    fig, ax = plt.subplots(figsize=(size, size), dpi=100)
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=45 if k > 3 else 0, ha="right" if k > 3 else "center")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if k <= 30:  # beyond that the numbers no longer fit their cells
        for i in range(k):
            for j in range(k):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    plt.close(fig)
    return out.getvalue()

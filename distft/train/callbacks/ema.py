"""An exponential moving average (EMA) of the trainable weights, validated and saved beside them.

After every step, shadow = d * shadow + (1 - d) * weight with d = min(decay, (1 + n) / (10 + n))
at update n (the warm-up of tf.train.ExponentialMovingAverage's `num_updates`, so short runs
are not dominated by the starting weights). The update runs in the compiled train step, after
the optimizer's, so it is per step also when one call runs several (--steps_per_execution).
The weights are identical on all workers, so the shadows are too. The shadows and n are part
of the checkpoint (`ema=` in tf.train.Checkpoint), so `--resume` continues the average exactly.
At each epoch end the validation runs again with the averaged weights (`val_ema_*` logs:
TensorBoard `epoch_ema_*` in the validation run).

Example:
    average = WeightAverage(plan.variables(), decay=0.999)
    checkpoint = tf.train.Checkpoint(model=model, optimizer=opt, ema=average.state)
    model.train_step = averager.train_step(model, then=average.update)
    model.fit(..., callbacks=[EMA(average, validate)])
    with average.swapped(): model.save("model_ema.keras")
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional

import keras
import tensorflow as tf


class WeightAverage:
    """The shadows of `variables` and the update count: the EMA's state, which lives as long
    as the run (the train step updates it). Created from the variables' values."""

    def __init__(self, variables: list[tf.Variable], decay: float):
        self.variables, self.decay = variables, decay
        self.state = tf.Module()
        self.state.shadows = [tf.Variable(tf.convert_to_tensor(v), trainable=False,
                                          name=f"ema/{i}") for i, v in enumerate(variables)]
        self.state.updates = tf.Variable(0, dtype=tf.int64, trainable=False, name="ema/updates")

    def update(self) -> list:
        """One step's update (in the train step's graph); its ops."""
        n = tf.cast(self.state.updates, tf.float32)
        d = tf.minimum(self.decay, (1.0 + n) / (10.0 + n))
        return [s.assign(d * s + (1.0 - d) * tf.convert_to_tensor(v))
                for s, v in zip(self.state.shadows, self.variables)] + [self.state.updates.assign_add(1)]

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """The averaged weights in the model inside the block, the raw ones after it."""
        raw = [tf.identity(v) for v in self.variables]
        for v, s in zip(self.variables, self.state.shadows):
            v.assign(s)
        try:
            yield
        finally:
            for v, r in zip(self.variables, raw):
                v.assign(r)

    def checksum(self, model: keras.Model) -> str:
        """`weights_checksum` of `model` with the averaged weights (equal on in-sync workers)."""
        from distft.model.prepare import weights_checksum

        with self.swapped():
            return weights_checksum(model)



class EMA(keras.callbacks.Callback):
    """At each epoch's end adds `validate`'s figures with the averaged weights as `val_ema_*`."""

    def __init__(self, average: WeightAverage,
                 validate: Optional[Callable[[], dict[str, float]]] = None):
        super().__init__()
        self.average, self.validate = average, validate

    def on_epoch_end(self, epoch, logs=None):
        if self.validate is not None and logs is not None:
            with self.average.swapped():
                logs.update({f"val_ema_{k}": v for k, v in self.validate().items()})

"""`--steps_per_execution=N`: each call of the train function runs up to N training steps in
one TensorFlow graph. Keras converts the logs to Python after every call, and that waits for
the device; with N steps a call it waits once per N steps.

Keras 3's own N-step loop (keras/src/backend/tensorflow/trainer.py) ends a call early only
when the data ends, and distft's stream runs on from one epoch into the next: an epoch whose
steps are not a multiple of N would train the next epoch's first batches in its last call.
Keras also counts N batches per call against the stream's length, and would end the last epoch
early. So with N > 1 distft installs its own train function, which runs min(N, steps left in
the epoch) steps (a callback from `Execution.callbacks` sets that count from the batch index
Keras passes before each call), and gives `fit` the stream without a length (`unsized`). With
N = 1 Keras's own function runs, as without this option.

Example:
    model.compile(..., steps_per_execution=4)
    model.train_step = my_step
    execution = Execution(4)
    execution.install(model)
    model.fit(execution.unsized(stream), steps_per_epoch=10,
              callbacks=ResumedRun([*execution.callbacks(10), ...], model, epochs=3, steps=10))
"""
from __future__ import annotations

from typing import Callable

import keras
import tensorflow as tf


class Execution:
    """Up to `n` steps per call of the train function; `count` is the next call's."""

    def __init__(self, n: int):
        self.n, self.count = n, n

    def install(self, model: keras.Model) -> None:
        """Make `model` (compiled, its `train_step` set) build distft's train function, also when
        Keras or staged unfreezing rebuild it."""
        if self.n == 1:
            return

        def make_train_function(force: bool = False) -> Callable:
            if model.train_function is None or force:
                model.train_function = self._function(model.train_step)
            return model.train_function

        model.make_train_function = make_train_function

    def _function(self, step: Callable) -> Callable:
        """`count` calls of `step` on the iterator's next batches; the last call's outputs."""
        one = tf.function(step, reduce_retracing=True)  # traced once, called twice below

        @tf.function(reduce_retracing=True)
        def steps(iterator, count):
            def body(i, _):
                return i + 1, one(iterator.get_next())

            return tf.while_loop(lambda i, _: i < count, body, (1, one(iterator.get_next())))[1]

        return lambda iterator: steps(iterator, tf.constant(self.count))

    def unsized(self, stream: tf.data.Dataset) -> tf.data.Dataset:
        """`stream` as `fit` takes it: without a length when N > 1 (the train function never
        reads past the last epoch's end, so the repetition is never reached)."""
        return stream.repeat() if self.n > 1 else stream

    def callbacks(self, steps: int) -> list[keras.callbacks.Callback]:
        """With N > 1, the callback that ends each execution at the end of its epoch of `steps`
        steps; in a ResumedRun, which passes batch indices in the whole epoch."""
        return [_Bounds(self, steps)] if self.n > 1 else []


class _Bounds(keras.callbacks.Callback):
    def __init__(self, execution: Execution, steps: int):
        super().__init__()
        self.execution, self.steps = execution, steps

    def on_train_batch_begin(self, batch, logs=None):
        self.execution.count = min(self.execution.n, self.steps - batch)

"""Counting training steps from the batch indices Keras passes, which with
`--steps_per_execution=N` come once per execution of up to N steps: the begin hook gets the
execution's first batch index, the end hook its last (in the whole epoch, and never past its
end: ResumedRun sees to both). Callbacks that act every K steps act at the first execution
boundary at or after each multiple of K.

Example:
    class Counter(StepCounter):
        def on_train_batch_end(self, batch, logs=None):
            self.steps += self.ran(batch)                  # 1 with N=1, up to N otherwise
            if crossed(batch + 1, self.ran(batch), 50):    # a multiple of 50 in this execution
                ...
"""
from __future__ import annotations

import keras


class StepCounter(keras.callbacks.Callback):
    """A callback that knows how many steps each execution ran (`ran`); a subclass that
    overrides `on_train_batch_begin` calls this one's."""

    def on_train_batch_begin(self, batch, logs=None):
        self._first_batch = batch

    def ran(self, batch: int) -> int:
        """Steps of the execution whose last batch index is `batch`."""
        return batch - self._first_batch + 1


def crossed(done: int, ran: int, every: int) -> bool:
    """True when the last `ran` of `done` steps include a multiple of `every`."""
    return done // every > (done - ran) // every

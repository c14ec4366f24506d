"""One callback list for a run that `fit` trains in two calls: the rest of an epoch that a
stop interrupted (resumed with `--resume`), then the whole epochs after it.

Keras' epochs all have `steps_per_epoch` steps, so a resumed epoch's remaining steps are a
`fit` of their own. The callbacks still see one training: `on_train_begin` and `on_train_end`
once each, and each batch of the resumed epoch under its index in the whole epoch, so step
counters, stop positions and logs go on where the stopped run left them. With
`--steps_per_execution=N` Keras ends an epoch's last execution at index N - 1 past its first
even when the epoch ends sooner (distft's train function stops there: train/execution.py); the
callbacks see the epoch's last index. Each step and each callback's epoch end is recorded as
this rank's progress, for the stall watchdog (train/stall/).

Example:
    callbacks = ResumedRun(callbacks, model, epochs=10, steps=100, skip=40)
    model.fit(rest_of_epoch, steps_per_epoch=60, initial_epoch=4, epochs=5, callbacks=callbacks)
    callbacks.last_call()
    model.fit(later_epochs, steps_per_epoch=100, initial_epoch=5, epochs=10, callbacks=callbacks)
"""
from __future__ import annotations

import keras
from keras.src.utils import python_utils

from distft.train.stall.progress import PROGRESS

AFTER_STEP = "the callbacks after a train step"


class ResumedRun(keras.callbacks.CallbackList):
    def __init__(self, callbacks: list[keras.callbacks.Callback], model: keras.Model, epochs: int,
                 steps: int, skip: int = 0):
        super().__init__(callbacks, add_history=True, model=model, epochs=epochs, steps=steps,
                         verbose=0)
        self.steps, self.skip, self._begun, self._ending = steps, skip, False, not skip
        self._epoch = 0

    def last_call(self) -> None:
        """The next `fit` is the last: its end ends the training for the callbacks."""
        self._ending = True

    def on_train_begin(self, logs=None):
        if not self._begun:
            self._begun = True
            super().on_train_begin(logs)

    def on_train_end(self, logs=None):
        if self._ending:
            super().on_train_end(logs)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        super().on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch + self.skip, logs)
        PROGRESS.step(self._epoch, batch + self.skip)  # the step itself runs next

    def on_train_batch_end(self, batch, logs=None):
        PROGRESS.enter(AFTER_STEP)
        super().on_train_batch_end(min(batch + self.skip, self.steps - 1), logs)

    def on_epoch_end(self, epoch, logs=None):
        self.skip = 0
        logs = python_utils.pythonify_logs(logs)  # as Keras's CallbackList, a phase a callback
        for callback in self.callbacks:
            with PROGRESS.phase(f"callback {type(callback).__name__}.on_epoch_end"):
                callback.on_epoch_end(epoch, logs)

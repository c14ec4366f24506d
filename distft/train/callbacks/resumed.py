"""One callback list for a run that `fit` trains in two calls: the rest of an epoch that a
stop interrupted (resumed with `--resume`), then the whole epochs after it.

Keras' epochs all have `steps_per_epoch` steps, so a resumed epoch's remaining steps are a
`fit` of their own. The callbacks still see one training: `on_train_begin` and `on_train_end`
once each, and each batch of the resumed epoch under its index in the whole epoch, so step
counters, stop positions and logs go on where the stopped run left them. With
`--steps_per_execution=N` Keras ends an epoch's last execution at index N - 1 past its first
even when the epoch ends sooner (distft's train function stops there: train/execution.py); the
callbacks see the epoch's last index.

Example:
    callbacks = ResumedRun(callbacks, model, epochs=10, steps=100, skip=40)
    model.fit(rest_of_epoch, steps_per_epoch=60, initial_epoch=4, epochs=5, callbacks=callbacks)
    callbacks.last_call()
    model.fit(later_epochs, steps_per_epoch=100, initial_epoch=5, epochs=10, callbacks=callbacks)
"""
from __future__ import annotations

import keras


class ResumedRun(keras.callbacks.CallbackList):
    def __init__(self, callbacks: list[keras.callbacks.Callback], model: keras.Model, epochs: int,
                 steps: int, skip: int = 0):
        super().__init__(callbacks, add_history=True, model=model, epochs=epochs, steps=steps,
                         verbose=0)
        self.steps, self.skip, self._begun, self._ending = steps, skip, False, not skip

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

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch + self.skip, logs)

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(min(batch + self.skip, self.steps - 1), logs)

    def on_epoch_end(self, epoch, logs=None):
        self.skip = 0
        super().on_epoch_end(epoch, logs)

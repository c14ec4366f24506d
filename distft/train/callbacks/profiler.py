"""The TensorFlow profiler over a window of steps, into the run's TensorBoard folder.

Steps count from 1 over the whole run (as the `batch_*` scalars do). The trace lands in
`<log_dir>/plugins/profile/<time stamp>/`, which TensorBoard's Profile tab lists (it needs the
`tensorboard-plugin-profile` package: `pip install 'distft[profile]'`).

Example:
    Profiler("runs/a/tensorboard", first=5, last=15)   # on the ranks to profile
"""
from __future__ import annotations

import keras
import tensorflow as tf

from distft import log


class Profiler(keras.callbacks.Callback):
    def __init__(self, log_dir: str, first: int, last: int, initial_step: int = 0):
        super().__init__()
        self.log_dir, self.first, self.last = log_dir, first, last
        self.step = initial_step  # steps done before this run (a resume)
        self.running = False

    def on_train_batch_begin(self, batch, logs=None):
        if self.step + 1 == self.first:
            tf.profiler.experimental.start(self.log_dir)
            self.running = True

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.running and self.step >= self.last:
            self._stop()

    def on_train_end(self, logs=None):
        if self.running:  # the run ended inside the window
            self._stop()

    def _stop(self) -> None:
        tf.profiler.experimental.stop()
        self.running = False
        log.info("profiler: steps %d-%d traced into %s/plugins/profile", self.first, self.step,
                 self.log_dir)

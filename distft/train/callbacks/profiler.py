"""The TensorFlow profiler over a window of steps, into the run's TensorBoard folder.

Steps count from 1 over the whole run (as the `batch_*` scalars do). The trace lands in
`<log_dir>/plugins/profile/<time stamp>/`, which TensorBoard's Profile tab lists (it needs the
`tensorboard-plugin-profile` package: `pip install 'distft[profile]'`). With
`--steps_per_execution=N` the trace holds whole executions: from the one that may hold step
`first` (that is, starts fewer than N steps before it) to the one that holds step `last`.

Example:
    Profiler("runs/a/tensorboard", first=5, last=15)   # on the ranks to profile
"""
from __future__ import annotations

import tensorflow as tf

from distft import log
from distft.train.callbacks.steps import StepCounter


class Profiler(StepCounter):
    def __init__(self, log_dir: str, first: int, last: int, initial_step: int = 0,
                 per_execution: int = 1):
        super().__init__()
        self.log_dir, self.first, self.last, self.per_execution = log_dir, first, last, per_execution
        self.step = initial_step  # steps done before this run (a resume)
        self.running, self.started = False, None  # the first step traced

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        if self.started is None and self.step < self.first <= self.step + self.per_execution:
            tf.profiler.experimental.start(self.log_dir)
            self.running, self.started = True, self.step + 1

    def on_train_batch_end(self, batch, logs=None):
        self.step += self.ran(batch)
        if self.running and self.step >= self.last:
            self._stop()

    def on_train_end(self, logs=None):
        if self.running:  # the run ended inside the window
            self._stop()

    def _stop(self) -> None:
        tf.profiler.experimental.stop()
        self.running = False
        log.info("profiler: steps %d-%d traced into %s/plugins/profile", self.started, self.step,
                 self.log_dir)

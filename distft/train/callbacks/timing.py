"""Throughput, step time and time to the first step, measured on rank 0, for the log,
TensorBoard and metrics.json."""
from __future__ import annotations

import time
from typing import Optional

from distft.train.callbacks.steps import StepCounter


class Timing(StepCounter):
    """Adds `samples_per_sec` (all workers) and `step_time_ms` to each epoch's logs.

    Example:
        timing = Timing(samples_per_step=32 * hvd.size())
        model.fit(..., callbacks=[timing])
        timing.window()   # (samples/s, ms/step) since the previous call
        timing.first_step_at   # time.time() when the run's first step (execution) ended
    """

    def __init__(self, samples_per_step: int):
        super().__init__()
        self.samples_per_step = samples_per_step
        self.epochs: list[tuple[int, float]] = []  # (steps, seconds) per epoch
        self.first_step_at: Optional[float] = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self._window_start = time.perf_counter()
        self._steps = self._window_steps = 0

    def on_train_batch_end(self, batch, logs=None):
        if self.first_step_at is None:
            self.first_step_at = time.time()
        ran = self.ran(batch)
        self._steps += ran
        self._window_steps += ran

    def window(self) -> tuple[float, float]:
        now = time.perf_counter()
        seconds, steps = now - self._window_start, max(1, self._window_steps)
        self._window_start, self._window_steps = now, 0
        return self.samples_per_step * steps / seconds, 1000 * seconds / steps

    def on_epoch_end(self, epoch, logs=None):
        seconds = time.perf_counter() - self._epoch_start
        self.epochs.append((self._steps, seconds))
        if logs is not None and self._steps:
            logs["samples_per_sec"] = self.samples_per_step * self._steps / seconds
            logs["step_time_ms"] = 1000 * seconds / self._steps
            logs["epoch_seconds"] = seconds

    @property
    def samples_per_sec(self) -> float:
        """Steady-state throughput: the first epoch (graph tracing, warm-up) is left out
        when there are later ones."""
        epochs = self.epochs[1:] or self.epochs
        steps, seconds = sum(s for s, _ in epochs), sum(t for _, t in epochs)
        return self.samples_per_step * steps / max(1e-9, seconds)

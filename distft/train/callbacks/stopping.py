"""Stop on SIGTERM, SIGUSR1 or Ctrl-C (SIGINT) with a checkpoint that every worker agrees on.

A signal may reach one worker or all of them (Slurm's `--signal`, `scancel --signal`, a
launcher forwarding it). Every `every` steps the workers allreduce a "stop requested" flag
(and their step time, from which all set the same next `every`: about one check per
`interval` seconds, a multiple of 10 steps, so the check costs nothing on short steps), so all
of them stop after the same step (with --steps_per_execution=N, at the end of the first call
of the train function that ends `every` or more steps after the previous check); rank 0 then
writes a checkpoint of that step (the `RunState` that `state` gives for its `Position`, where
`--resume` goes on) and `fit` is left at once with `StopRequested`, so no
end-of-epoch work runs on a partial epoch. The run ends with exit code 75. A second Ctrl-C at
a worker stops it at once (KeyboardInterrupt), without a checkpoint.

The same allreduce carries `vote`'s (AgreedStop's) flag: a user callback on any worker that set
`stop_training` mid-epoch; all workers then stop after that step, without a checkpoint of
their own (the epoch ends there, and the run finishes as an early stop).

Example:
    signals = StopSignals()
    signals.install()                   # signal handlers, before the set-up
    stop = GracefulStop(signals, hvd.size(), store, checkpoint, steps=100,
                        state=lambda at: RunState(stopped_by=signals.name).at(at))
    try:
        model.fit(..., callbacks=[stop, ...])
    except StopRequested:
        pass
    if stop.requested: raise Stopped(...)
"""
from __future__ import annotations

import signal
import time
from typing import TYPE_CHECKING, Callable, Optional

import tensorflow as tf

from distft.train.callbacks.steps import StepCounter
from distft.train.checkpoint import CheckpointStore
from distft.train.stall.progress import PROGRESS
from distft.train.state import Position, RunState

if TYPE_CHECKING:
    from distft.train.callbacks.agreed_stop import AgreedStop

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequested(Exception):
    """Raised out of `fit` on every worker at the agreed step, after the checkpoint."""


class StopSignals:
    """The stop signal this worker received, remembered from `install()` on (set-up included).

    Example:
        signals = StopSignals()
        signals.install()
    """

    def __init__(self):
        self.received: Optional[int] = None  # signal number

    def install(self) -> None:
        for sig in SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt  # Ctrl-C twice: stop now
        self.received = signum

    @property
    def name(self) -> str:
        if not self.received:
            return "a signal"
        name = signal.Signals(self.received).name
        return f"Ctrl-C ({name})" if self.received == signal.SIGINT else name


class GracefulStop(StepCounter):
    """`store` and `checkpoint` on rank 0 (None elsewhere), written with `state(position)`;
    `before_save` is a collective that every worker runs before the checkpoint; with `steps`
    per epoch in the position, a resume on another number of workers finds the same place;
    `vote`: the user callbacks' stop, agreed at the same checks."""

    def __init__(self, signals: StopSignals, size: int, store: Optional[CheckpointStore] = None,
                 checkpoint: Optional[tf.train.Checkpoint] = None,
                 before_save: Callable[[], None] = lambda: None, every: int = 10, interval: float = 1.0,
                 steps: int = 0, state: Callable[[Position], RunState] = lambda at: RunState().at(at),
                 vote: Optional[AgreedStop] = None):
        super().__init__()
        self.signals, self.size, self.store, self.checkpoint = signals, size, store, checkpoint
        self.steps, self.state, self.vote = steps, state, vote
        self.before_save, self.every, self.interval = before_save, every, interval
        self.requested = False  # agreed by all workers
        self.where: tuple[int, int] = (0, 0)  # (epoch, step in epoch) of the stop

    @property
    def position(self) -> Position:
        """Where the agreed stop is."""
        return Position(*self.where, self.steps)

    @property
    def stopped_by(self) -> Optional[str]:
        """The signal of the agreed stop, for a checkpoint's state (one at an epoch's end too)."""
        return self.signals.name if self.requested else None

    def _agree(self, step_seconds: float = 0.0) -> tuple[bool, bool]:
        """(any worker received a signal (whose number all learn), any worker's callbacks asked
        to stop), the same on every worker; every worker sets the same `every` from the slowest
        worker's `step_seconds`."""
        signum, voted = self.signals.received or 0, float(bool(self.vote and self.vote.wanted))
        if self.size > 1:
            import horovod.tensorflow as hvd_tf

            with PROGRESS.collective("allreduce distft_stop from GracefulStop"):
                signum, step_seconds, voted = hvd_tf.allreduce(
                    tf.constant([float(signum), step_seconds, voted], tf.float64), op=hvd_tf.Max,
                    name="distft_stop").numpy()
            signum = int(signum)
        if step_seconds > 0:  # a multiple of 10: checks fall on steps 10, 20, ... of an epoch
            self.every = 10 * max(1, min(100, int(self.interval / step_seconds / 10)))
        if signum:
            self.signals.received = signum
        return bool(signum), bool(voted)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self._since, self._start = 0, time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._since += self.ran(batch)
        if self._since < self.every:
            return
        now = time.perf_counter()
        seconds, self._since, self._start = (now - self._start) / self._since, 0, now
        signalled, voted = self._agree(seconds)
        if signalled:
            self.requested = True
            self.where = (self.epoch, batch + 1)
            self.before_save()
            if self.store is not None:  # rank 0; --resume continues at the next step
                self.store.save(self.checkpoint, self.state(self.position))
            raise StopRequested()
        if voted:  # a callback's stop: `fit` leaves after this step on every worker
            self.vote.stop_at(self.epoch, batch + 1)

    def on_epoch_end(self, epoch, logs=None):
        # A signal in the last steps of an epoch: the epoch's own checkpoint will do.
        if not self.requested and self._agree()[0]:  # AgreedStop takes the votes after the epoch's end
            self.requested = True
            self.where = (epoch + 1, 0)
            self.model.stop_training = True

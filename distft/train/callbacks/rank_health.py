"""Per-rank health: each rank's step time, allreduce wait, input wait and busy time, gathered
once per epoch; rank 0 reports them and names a rank that keeps the others waiting.

Ranks move in lockstep through the gradient allreduce, so their wall step times agree: a slow
rank shows as the one with the most busy time (computing) and the least allreduce wait. Each
rank's step splits into
- input wait: its batch was not ready yet (wall time around the compiled step minus the step's
  own time, measured in the graph from the moment its batch is ready);
- allreduce wait: inside the gradient allreduce (waiting for the other ranks, then communicating;
  with overlap, from the backward pass's end, i.e. what the backward pass did not hide);
- busy: the rest, its own forward and backward passes and the optimizer.
The first step of each epoch is left out: it may include tracing the step function. With
`--steps_per_execution=N` the wall time is measured around each execution, and its steps
counted; the first execution of each epoch is left out.

Example:
    clock = StepClock()
    averager = GradientAverager(variables, clock=clock)   # the step feeds the clock
    health = RankHealth(clock, worker, placement, slow=0.2, slow_epochs=2,
                        report=tb.write_ranks if worker.rank == 0 else None)
    model.fit(..., callbacks=[health, ...])   # first: its batch hooks bracket the step
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import tensorflow as tf

from distft import log
from distft.train.callbacks.steps import StepCounter
from distft.train.runtime import Worker

# Share of a step spent waiting for the next batch above which the log calls the job input-bound,
# when that wait is also over INPUT_BOUND_MS per step: it includes the step function's dispatch,
# about 1-2 ms on CPU, so steps of a few ms read high without waiting for input.
INPUT_BOUND = 0.3
INPUT_BOUND_MS = 5.0
# A rank is slow only when it is also this much over the median: on steps of a millisecond, a
# 20% difference is noise (0.1 ms fired the warning on a tiny job). Not more: with 2 ranks the
# median is their mean, so a rank twice as busy as the other is only a third over it.
SLOW_RANK_MS = 1.0


class StepClock:
    """Seconds the compiled train step runs (from its batch being ready) and spends in the
    gradient allreduce, summed in this rank's own variables (neither checkpointed nor broadcast).

    On a GPU an op counts as done once its kernel is launched, so a timestamp that merely
    follows it marks the launch. There (`synchronise`, by default when TensorFlow sees a GPU)
    each timestamp waits for one value of the tensors it follows to be copied to the host: a
    GPU runs one stream's kernels in launch order, so the copy, launched after them all, lands
    only once they have run. On CPU the timestamps follow the ops themselves, as before."""

    def __init__(self, synchronise: Optional[bool] = None):
        self.step_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="clock_step")
        self.allreduce_seconds = tf.Variable(0.0, dtype=tf.float64, trainable=False,
                                             name="clock_allreduce")
        if synchronise is None:
            synchronise = bool(tf.config.list_logical_devices("GPU"))
        self._probe = None
        if synchronise:
            with tf.device("/CPU:0"):
                self._probe = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="clock_probe")

    def step(self, run: Callable[[], dict], data, done: Callable[[], tf.Tensor]) -> dict:
        """`run()`'s outputs, timing it from `data` being ready to `done()` (read after the update)."""
        start = self._stamp(tf.nest.flatten(data))
        with tf.control_dependencies([start]):
            outputs = run()
        end = self._stamp(tf.nest.flatten(outputs) + [done()])
        self.step_seconds.assign_add(end - start)
        return outputs

    def allreduce(self, reduce: Callable[[list], list], grads: list, overlapped: bool = False) -> list:
        """`reduce(grads)`, timed from the last gradient's end. `overlapped` ops start as their
        own gradient is ready (nothing waits for the stamp), so their time counted is the part
        the backward pass did not hide."""
        start = self._stamp(grads)
        with tf.control_dependencies([] if overlapped else [start]):
            reduced = reduce(grads)
        self.allreduce_seconds.assign_add(self._stamp(reduced) - start)
        return reduced

    def read(self) -> tuple[float, float]:
        """(step seconds, allreduce seconds) summed so far."""
        return float(self.step_seconds.numpy()), float(self.allreduce_seconds.numpy())

    def _stamp(self, after: list) -> tf.Tensor:
        numbers = [t for t in after if t.dtype.is_floating or t.dtype.is_integer]
        if self._probe is not None and numbers:
            with tf.control_dependencies(after):
                value = tf.reduce_sum(tf.cast(tf.reshape(numbers[-1], [-1])[:1], tf.float64))
            after = [self._probe.assign(value)]  # a host variable: the copy must have landed
        with tf.control_dependencies(after):
            return tf.timestamp()


class RankHealth(StepCounter):
    """On every rank: measures its steps and joins the one gather per epoch. On rank 0, `report`
    receives each rank's figures (ms per step and input-wait share) with the epoch, and the log
    names a rank that is `slow` (a fraction) slower than the median for `slow_epochs` epochs in a
    row, or ranks that wait for input."""

    def __init__(self, clock: StepClock, worker: Worker, placement: list[str], slow: float,
                 slow_epochs: int, report: Optional[Callable[[list[dict[str, float]], int], None]] = None):
        super().__init__()
        self.clock, self.worker, self.placement = clock, worker, placement
        self.slow, self.slow_epochs, self.report = slow, slow_epochs, report
        self._streak = [0] * worker.size
        self._best: list[float] = []  # each rank's least busy time per step so far (rank 0)
        self._input_warned = False

    def on_epoch_begin(self, epoch, logs=None):
        self._wall, self._steps, self._start = 0.0, 0, None

    def on_train_batch_begin(self, batch, logs=None):
        super().on_train_batch_begin(batch, logs)
        self._began = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if self._start is None:
            self._start = self.clock.read()
            return
        self._wall += time.perf_counter() - self._began
        self._steps += self.ran(batch)

    def on_epoch_end(self, epoch, logs=None):
        if not self._steps:  # one step per epoch: nothing measured (the same on every rank)
            return
        step, allreduce = (now - then for now, then in zip(self.clock.read(), self._start))
        ranks = [_per_step(*r) for r in self.worker.gather_floats(
            [self._steps, self._wall, step, allreduce], name="distft_rank_health")]
        if self.worker.rank == 0:
            self._best = straggling(ranks, self._best)
            if self.report:
                self.report(ranks, epoch)
            self._judge(ranks, epoch)

    def _judge(self, ranks: list[dict[str, float]], epoch: int) -> None:
        median = statistics.median(r["busy_ms"] for r in ranks)
        for rank, r in enumerate(ranks):
            slower = r["busy_ms"] / max(median, 1e-9) - 1
            self._streak[rank] = self._streak[rank] + 1 if is_slow(r["busy_ms"], median, self.slow) else 0
            if self._streak[rank] == self.slow_epochs:
                log.warning("rank %d (%s) is slow: busy %.1f ms per step, %.0f%% over the median "
                            "rank's %.1f ms, for %d epochs in a row (to epoch %d); every other rank "
                            "waits for it in each allreduce: check what else runs there",
                            rank, self.placement[rank], r["busy_ms"], 100 * slower, median,
                            self.slow_epochs, epoch + 1)
        bound = [rank for rank, r in enumerate(ranks)
                 if r["input_share"] > INPUT_BOUND and r["input_wait_ms"] > INPUT_BOUND_MS]
        if bound and not self._input_warned and epoch > 0:  # the first epoch fills the shuffle buffer
            self._input_warned = True
            log.warning("input-bound: rank(s) %s wait for their next batch %s of each step "
                        "(epoch %d); in order, try --cache=memory (or --cache=DIR), more --threads "
                        "or cores per worker, more shards than workers (distft shard)",
                        ", ".join(map(str, bound)),
                        "/".join(f"{100 * ranks[r]['input_share']:.0f}%" for r in bound), epoch + 1)


def _per_step(steps: int, wall: float, step: float, allreduce: float) -> dict[str, float]:
    """One rank's epoch as ms per step and the share of the step spent waiting for input."""
    waiting = max(0.0, wall - step)
    return {"step_time_ms": 1000 * wall / steps, "busy_ms": 1000 * (step - allreduce) / steps,
            "allreduce_wait_ms": 1000 * allreduce / steps, "input_wait_ms": 1000 * waiting / steps,
            "input_share": waiting / wall if wall else 0.0}


def is_slow(busy_ms: float, median_ms: float, slow: float) -> bool:
    """Whether a rank busy `busy_ms` per step is slow beside the median rank: over it by more
    than the fraction `slow` and by more than SLOW_RANK_MS."""
    return busy_ms - median_ms > SLOW_RANK_MS and busy_ms > median_ms * (1 + slow)


def straggling(ranks: list[dict[str, float]], best: list[float]) -> list[float]:
    """Add each rank's straggler scores to its figures: `over_median_ms`, its busy time per step
    over the median rank's, and `over_own_best`, its busy time over its own least so far (1:
    as fast as it has been). `best`: those least times before this epoch ([] at first); returns
    them with this epoch's."""
    median = statistics.median(r["busy_ms"] for r in ranks)
    best = [min(b, r["busy_ms"]) for b, r in zip(best, ranks)] if len(best) == len(ranks) \
        else [r["busy_ms"] for r in ranks]
    for r, least in zip(ranks, best):
        r["over_median_ms"] = r["busy_ms"] - median
        r["over_own_best"] = r["busy_ms"] / max(least, 1e-9)
    return best


def spread(ranks: list[dict[str, float]]) -> float:
    """Slowest rank's busy time over the median rank's."""
    busy = [r["busy_ms"] for r in ranks]
    return max(busy) / max(statistics.median(busy), 1e-9)

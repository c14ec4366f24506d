"""Elastic training: a job that loses a worker, or gains one, goes on without a restart.

Under an elastic launcher (`distft train --np=3 --min_np=2`, or `horovodrun --min-np ...`
directly) the workers train in attempts, each watched by the stall watchdog (which evicts a
rank that keeps the others waiting: train/stall/watchdog.py). Every `--commit_every` steps and
at every epoch's end they commit their training state in memory (`ElasticState`: the
variables training changes, and where in the run they are). When a collective fails (a worker
died), the survivors restore the last commit, start Horovod again with the workers that are
left, take rank 0's state and go on from the commit's epoch and step; when the launcher finds a
new host, all workers stop at the next commit and go on with the newcomer, which takes rank 0's
state.

Horovod's own `hvd.elastic.run` is not used as it is: its TensorFlow wrapper turns only some
failed ops into a reset (by op name; distft's grouped allreduce is not among them) and
swallows the others, and its Keras state calls `optimizer.variables()`, a property on Keras 3.
The loop below is Horovod's (`horovod.common.elastic.run_fn`) with distft's state and a reset
on any failed Horovod collective.

Example (under `horovodrun -np 3 --min-np 2 ...`, which sets HOROVOD_ELASTIC=1):
    metrics = run(cfg, Worker.start())   # train/trainer.py's run does this in elastic mode

    state = ElasticState(worker, variables, RunState(steps_per_epoch=100))   # the parts, alone
    history = train(state, attempt, reset=on_new_workers)   # attempt's callbacks: Commit(state, ...)
"""
from __future__ import annotations

import dataclasses
import re
import time
from typing import Any, Callable, Optional

import numpy as np
from horovod.common.elastic import State, notification_manager
from horovod.common.exceptions import HorovodInternalError, HostsUpdatedInterrupt

from distft import log
from distft.config import TrainConfig
from distft.train import optim
from distft.train.callbacks.steps import StepCounter, crossed
from distft.train.phases import fit, inputs, restore, sync
from distft.train.report import announce, finish
from distft.train.run_callbacks import callbacks
from distft.train.runtime import Worker
from distft.train.setup import Setup
from distft.train.stall.progress import PROGRESS
from distft.train.stall.watchdog import watching
from distft.train.state import Position, RunState
from distft.train.trainee import Trainee

# A failed Horovod op (HorovodAllreduce, HorovodGroupedAllreduce, HorovodAllgather, ...) or its
# Gloo transport: a peer is gone.
_COLLECTIVE = re.compile(r"Horovod|[Gg]loo|[Cc]onnection (closed|reset)|[Bb]roken pipe")


def lost_peer(error: BaseException) -> bool:
    """True when `error` (or an error it was raised from) is a failed Horovod collective."""
    import tensorflow as tf

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, HorovodInternalError):
            return True
        if isinstance(error, (tf.errors.OpError, RuntimeError)) and _COLLECTIVE.search(str(error)):
            return True
        error = error.__cause__ or error.__context__
    return False


class ElasticState(State):
    """The training state of the last commit, in host memory: the values of `variables` and the
    run's `RunState` (where it was, and what the workers share: broadcast from rank 0 on sync).
    Horovod's `State` adds the listening for host changes: `commit` raises
    `HostsUpdatedInterrupt` on every worker at the same commit."""

    def __init__(self, worker: Worker, variables: list, run: RunState):
        super().__init__(bcast_object=worker.broadcast, get_rank=lambda: worker.rank)
        self.worker, self.variables, self.run = worker, variables, run
        self.commits, self.commit_seconds = 0, 0.0  # this worker's, for metrics.json
        self.save()

    @property
    def committed(self) -> RunState:
        """The run's state at the last commit."""
        return self._saved

    def save(self) -> None:
        self._values = [np.array(v.numpy(), copy=True) for v in self.variables]
        self._saved = self.run

    def restore(self) -> None:
        for v, value in zip(self.variables, self._values):
            v.assign(value)
        self.run = self._saved

    def sync(self) -> None:
        """Rank 0's variables and run state on every worker."""
        self.worker.broadcast_variables(self.variables)
        self.run = self.worker.broadcast(self.run)
        self.save()

    def commit_at(self, position: Position, steps_run: int) -> None:
        """Commit at `position`, with `steps_run` steps trained over all attempts."""
        self.run = self.run.at(position, steps_run=steps_run)
        started = time.perf_counter()
        try:
            self.commit()
        finally:
            self.commits += 1
            self.commit_seconds += time.perf_counter() - started


class Commit(StepCounter):
    """Commits `state` every `every` steps (with --steps_per_execution, at the first execution
    end at or after each multiple) and at every epoch's end; last in the callbacks, so every
    other callback's work on the step is in the commit. It counts `steps_run`, the steps
    trained over all attempts (TensorBoard's step, which goes on after a reset although an
    epoch's steps change with the number of workers)."""

    def __init__(self, state: ElasticState, every: int, steps: int):
        super().__init__()
        self.state, self.every, self.steps = state, every, steps
        self.steps_run = state.run.steps_run

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done, ran = batch + 1, self.ran(batch)
        self.steps_run += ran
        if crossed(done, ran, self.every) and done < self.steps:  # the epoch's end commits the last
            self.state.commit_at(Position(self.epoch, done, self.steps), self.steps_run)

    def on_epoch_end(self, epoch, logs=None):
        self.state.commit_at(Position(epoch + 1, 0, self.steps), self.steps_run)


def train(state: ElasticState, attempt: Callable[[], Any], reset: Callable[[str], None],
          restored: Callable[[], None] = lambda: None) -> Any:
    """`attempt()` until it returns; after a failed collective the last commit is restored
    (then `restored()`, e.g. a checkpoint of it, in case too few workers are left to go on),
    and after that or a change of hosts Horovod starts again with the workers there are, then
    `reset(why)` adapts the run to them and rank 0's state is taken (Horovod's `run_fn`)."""
    notification_manager.init()
    notification_manager.register_listener(state)
    skip_sync = False
    try:
        while True:
            try:
                if not skip_sync:
                    state.sync()
                return attempt()
            except HostsUpdatedInterrupt as e:
                skip_sync, why = e.skip_sync, "hosts changed"
            except Exception as e:  # noqa: BLE001 - only a failed collective is handled
                if not lost_peer(e):
                    raise
                state.worker.break_links()  # the others blocked on this worker learn it now
                log.info("a collective failed (a worker lost?): back to the commit at %s",
                         state.committed.position.next_step())
                state.restore()
                restored()
                skip_sync, why = False, "worker lost"
            state.worker.reset()
            state.on_reset()
            reset(why)
    finally:
        notification_manager.remove_listener(state)


def run(cfg: TrainConfig, worker: Worker) -> dict[str, Any]:
    """Fine-tune in elastic mode: every worker sets up alone (no collective), since one may
    join while the others train; then the workers fit in attempts, each from the last commit
    on the workers there are. Returns the final metrics."""
    cfg.check_elastic_mode()  # under a user's own elastic horovodrun, too
    alone = worker.alone()
    setup = Setup.open(cfg, alone)
    trainee = Trainee.build(setup, alone)
    state = ElasticState(worker, trainee.trained_variables(), restore(setup, trainee, alone, worker.size))
    placement: list[str] = []  # the last attempt's, for the log of what changed

    def attempt() -> tuple[Any, Any, RunState]:
        PROGRESS.enter(f"the set-up for {worker.size} workers")  # out of the last attempt's step
        with watching(worker, cfg.stall_timeout, setup.folder):  # a stalled rank evicted
            return attempt_on()

    def attempt_on() -> tuple[Any, Any, RunState]:
        nonlocal placement
        size, steps, run = worker.size, trainee.steps(worker.size), state.run
        position = run.position.rescaled(steps)
        if run.size != size:  # once per size; the same figures on every worker (rank 0's state)
            run = dataclasses.replace(run, size=size, lr_offset=optim.offset(
                cfg, steps, position.epoch + position.skip / steps, int(trainee.optimizer.iterations.numpy())))
        trainee.optimizer.learning_rate = optim.schedule(cfg, size, steps, run.lr_offset)
        before, placement = placement, sync(setup, trainee, worker, position, broadcast=False)
        previous = worker.gather(worker.previous_rank)
        if not run.announced:
            if setup.refused:
                raise setup.refused
            announce(setup, trainee, worker, run.at(position), placement)
            run = dataclasses.replace(run, announced=True)
        elif worker.rank == 0:
            _log_change(position, size, before, placement, previous)
        data = inputs(setup, trainee, worker, position)
        cbs = callbacks(setup, trainee, worker, run.at(position), data.model, placement,
                        (Commit(state, cfg.commit_every, steps),))
        state.run = dataclasses.replace(run, before=cbs.before)
        state.commit_at(position, run.steps_run)  # the start, announced and validated
        try:
            return fit(setup, position, data, cbs), cbs, state.run
        except BaseException:
            if cbs.tensorboard:  # a reset or an error: this fit's writers are done
                cbs.tensorboard.on_train_end()
            raise

    def reset(why: str) -> None:
        state.run = dataclasses.replace(state.run, resets=state.run.resets + 1)

    def rescue() -> None:  # rank 0 before the failure, if it lives: --resume goes on from the commit
        committed = state.committed
        if worker.rank == 0 and committed.announced:
            setup.folder.checkpoints.save(trainee.checkpoint, dataclasses.replace(
                committed, stage=trainee.plan.index_at(committed.epoch), stopped_by="a lost worker"))

    history, cbs, started = train(state, attempt, reset, rescue)
    return finish(setup, trainee, worker, started, history, cbs, {"elastic": {
        "resets": state.run.resets, "commits": state.commits,
        "commit_ms": 1000 * state.commit_seconds / max(1, state.commits)}})


def _log_change(position: Position, size: int, before: list[str], placement: list[str],
                previous: list[Optional[int]]) -> None:
    """Rank 0: which workers were lost or joined (given each one's rank before the reset and
    the placement then), and where training goes on."""
    host = lambda where: where.split(" cores ")[0]
    lost = [r for r in range(len(before)) if r not in previous]
    joined = [host(placement[r]) for r, p in enumerate(previous) if p is None]
    changes = [f"rank {r} (host {host(before[r])}) lost" for r in lost] + \
              [f"a worker joined (host {h})" for h in joined]
    log.warning("%s: continuing with %d worker%s from %s", ", ".join(changes) or "hosts changed",
                size, "s" if size > 1 else "", position.next_step())

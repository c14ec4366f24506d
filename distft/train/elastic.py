"""Elastic training: a job that loses a worker, or gains one, goes on without a restart.

Under an elastic launcher (`distft train --np=3 --min_np=2`, or `horovodrun --min-np ...`
directly) the workers train in attempts. Every `--commit_every` steps and at every epoch's
end they commit their training state in memory (`ElasticState`: the variables training
changes, and where in the run they are). When a collective fails (a worker died), the
survivors restore the last commit, start Horovod again with the workers that are left, take
rank 0's state and go on from the commit's epoch and step; when the launcher finds a new host,
all workers stop at the next commit and go on with the newcomer, which takes rank 0's state.

Horovod's own `hvd.elastic.run` is not used as it is: its TensorFlow wrapper turns only some
failed ops into a reset (by op name; distft's grouped allreduce is not among them) and
swallows the others, and its Keras state calls `optimizer.variables()`, a property on Keras 3.
The loop below is Horovod's (`horovod.common.elastic.run_fn`) with distft's state and a reset
on any failed Horovod collective.

Example (under `horovodrun -np 3 --min-np 2 ...`, which sets HOROVOD_ELASTIC=1):
    metrics = run(cfg, Worker.start())   # train/trainer.py's run does this in elastic mode

    state = ElasticState(worker, variables, epoch=0, skip=0, steps=100)   # the parts, alone
    history = train(state, attempt, reset=on_new_workers)   # attempt's callbacks: Commit(state, ...)
"""
from __future__ import annotations

import os
import re
import time
from typing import Any, Callable, Optional

import numpy as np
from horovod.common.elastic import State, notification_manager
from horovod.common.exceptions import HorovodInternalError, HostsUpdatedInterrupt

from distft import log
from distft.config import TrainConfig
from distft.errors import DistftError
from distft.train import optim
from distft.train.callbacks.steps import StepCounter, crossed
from distft.train.phases import (Callbacks, Job, announce, build, callbacks, finish, fit, inputs,
                                 open_job, restore, steps_for, sync)
from distft.train.runtime import Worker

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
    """The training state of the last commit, in host memory: the values of `variables` and
    where the run was (epoch, steps done in it, steps per epoch then), plus `extra` objects
    the workers share (broadcast from rank 0 on sync). Horovod's `State` adds the listening for
    host changes: `commit` raises `HostsUpdatedInterrupt` on every worker at the same commit."""

    def __init__(self, worker: Worker, variables: list, epoch: int, skip: int, steps: int,
                 extra: Optional[dict] = None):
        super().__init__(bcast_object=worker.broadcast, get_rank=lambda: worker.rank)
        self.worker, self.variables = worker, variables
        self.position = (epoch, skip, steps)
        self.extra = dict(extra or {})
        self.commits, self.commit_seconds = 0, 0.0  # this worker's, for metrics.json
        self.save()

    @property
    def committed(self) -> tuple[int, int, int]:
        """(epoch, steps done in it, steps per epoch) of the last commit."""
        return self._saved[0]

    def save(self) -> None:
        self._values = [np.array(v.numpy(), copy=True) for v in self.variables]
        self._saved = (self.position, dict(self.extra))

    def restore(self) -> None:
        for v, value in zip(self.variables, self._values):
            v.assign(value)
        self.position, self.extra = self._saved[0], dict(self._saved[1])

    def sync(self) -> None:
        """Rank 0's variables, position and extras on every worker."""
        self.worker.broadcast_variables(self.variables)
        self.position, self.extra = self.worker.broadcast((self.position, self.extra))
        self.save()

    def commit_at(self, epoch: int, skip: int, steps: int) -> None:
        """Commit at step `skip` of `epoch` (`steps` per epoch)."""
        self.position = (epoch, skip, steps)
        started = time.perf_counter()
        try:
            self.commit()
        finally:
            self.commits += 1
            self.commit_seconds += time.perf_counter() - started


class Commit(StepCounter):
    """Commits `state` every `every` steps (with --steps_per_execution, at the first execution
    end at or after each multiple) and at every epoch's end; last in the callbacks, so every
    other callback's work on the step is in the commit. The state's extra `steps_run` counts
    the steps trained over all attempts (TensorBoard's step, which goes on after a reset
    although an epoch's steps change with the number of workers)."""

    def __init__(self, state: ElasticState, every: int, steps: int):
        super().__init__()
        self.state, self.every, self.steps = state, every, steps
        self.steps_run = state.extra["steps_run"]

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        done, ran = batch + 1, self.ran(batch)
        self.steps_run += ran
        if crossed(done, ran, self.every) and done < self.steps:  # the epoch's end commits the last
            self._commit(self.epoch, done)

    def on_epoch_end(self, epoch, logs=None):
        self._commit(epoch + 1, 0)

    def _commit(self, epoch: int, skip: int) -> None:
        self.state.extra["steps_run"] = self.steps_run
        self.state.commit_at(epoch, skip, self.steps)


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
                epoch, skip, steps = state.committed
                log.info("a collective failed (a worker lost?): back to the commit at epoch %d "
                         "step %d/%d", epoch + 1, skip, steps)
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
    if not cfg.output_dir:
        raise DistftError("elastic mode needs --output_dir: every worker, a late one too, must "
                          "write to the same run folder")
    if "HOROVOD_FUSION_THRESHOLD" in os.environ:
        # Seen here with 64 MB and with Horovod's own default, 128 MB: the survivors of a lost
        # worker crash in hvd.init() (SIGSEGV) instead of going on.
        raise DistftError("HOROVOD_FUSION_THRESHOLD is set, and Horovod 0.28.1 crashes on an elastic "
                          "reset when it is: unset it for elastic jobs (Horovod's 128 MB applies)")
    job = open_job(cfg, worker.alone())
    build(job)
    _resized(job, worker.size)
    restore(job)
    job.worker = worker
    state = ElasticState(worker, job.trained_variables(), job.epoch, job.skip, job.steps,
                         {"before": {}, "announced": False, "size": None, "lr_offset": 0.0,
                          "resets": 0, "steps_run": job.done})

    def attempt() -> tuple[Any, Callbacks]:
        before = job.placement
        _go_on_from(job, state)
        sync(job, broadcast=False)
        previous = worker.gather(worker.previous_rank)
        if not state.extra["announced"]:
            if job.setup_error:
                raise job.setup_error
            announce(job)
            state.extra["announced"] = True
        elif worker.rank == 0:
            _log_change(job, before, previous)
        data = inputs(job)
        cbs = callbacks(job, data, (Commit(state, cfg.commit_every, job.steps),))
        state.extra["before"] = job.before
        state.commit_at(job.epoch, job.skip, job.steps)  # the start, announced and validated
        try:
            return fit(job, data, cbs), cbs
        except BaseException:
            if cbs.tensorboard:  # a reset or an error: this fit's writers are done
                cbs.tensorboard.on_train_end()
            raise

    def reset(why: str) -> None:
        state.extra["resets"] += 1
        _resized(job, worker.size)

    def rescue() -> None:  # rank 0 before the failure, if it lives: --resume goes on from the commit
        epoch, skip, steps = state.committed
        if worker.rank == 0 and state.extra["announced"]:
            job.folder.checkpoints.save(job.checkpoint, {
                "epoch": epoch, "stage": job.plan.index_at(epoch), "step_in_epoch": skip,
                "steps_per_epoch": steps, "stopped_by": "a lost worker"})

    history, cbs = train(state, attempt, reset, rescue)
    return finish(job, history, cbs, {"elastic": {
        "resets": state.extra["resets"], "commits": state.commits,
        "commit_ms": 1000 * state.commit_seconds / max(1, state.commits)}})


def _resized(job: Job, size: int) -> None:
    """Steps per epoch and the gradient averager for `size` workers."""
    job.steps = steps_for(job, size)
    job.averager.size = size


def _go_on_from(job: Job, state: ElasticState) -> None:
    """Take the last commit's place in the run, on this many workers: the same fraction of
    its epoch, and (once per size) the learning rate's place in its schedule."""
    cfg, size = job.cfg, job.worker.size
    epoch, skip, steps_then = state.position
    job.epoch, job.skip = epoch, skip * job.steps // steps_then
    if state.extra["size"] != size:  # the same figures on every worker: all hold rank 0's state
        state.extra["size"] = size
        state.extra["lr_offset"] = optim.offset(cfg, job.steps, job.epoch + job.skip / job.steps,
                                                int(job.optimizer.iterations.numpy()))
    job.optimizer.learning_rate = optim.schedule(cfg, size, job.steps, state.extra["lr_offset"])
    job.before = state.extra["before"]
    job.steps_run = state.extra["steps_run"]


def _log_change(job: Job, before: list[str], previous: list[Optional[int]]) -> None:
    """Rank 0: which workers were lost or joined (given each one's rank before the reset and
    the placement then), and where training goes on."""
    host = lambda placement: placement.split(" cores ")[0]
    lost = [r for r in range(len(before)) if r not in previous]
    joined = [host(job.placement[r]) for r, p in enumerate(previous) if p is None]
    where = f"epoch {job.epoch + 1} step {job.skip}/{job.steps}" if job.skip else f"epoch {job.epoch + 1}"
    changes = [f"rank {r} (host {host(before[r])}) lost" for r in lost] + \
              [f"a worker joined (host {h})" for h in joined]
    size = job.worker.size
    log.warning("%s: continuing with %d worker%s from %s", ", ".join(changes) or "hosts changed",
                size, "s" if size > 1 else "", where)

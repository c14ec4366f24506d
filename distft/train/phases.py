"""The phases of a worker's run between its stages (train/trainer.py puts them in order;
train/elastic.py repeats `sync` to `fit` whenever the set of workers changes). Each takes the
stages it needs and returns a new value; none writes onto them.

Example (under `horovodrun -np 2`):
    setup = Setup.open(cfg, worker)             # train/setup.py
    trainee = Trainee.build(setup, worker)      # train/trainee.py
    state = restore(setup, trainee, worker)     # where the run starts (RunState)
    placement = sync(setup, trainee, worker, state.position)
    data = inputs(setup, trainee, worker, state.position)
    history = fit(setup, state.position, data, cbs)   # cbs: train/run_callbacks.py
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Callable, Optional

import keras
import tensorflow as tf

from distft.errors import DistftError, Stopped, root_cause
from distft.train import frozen_cache, seeds, sync_bn
from distft.train.callbacks.resumed import ResumedRun
from distft.train.callbacks.stopping import StopRequested
from distft.train.metrics import build_compiled
from distft.train.runtime import Worker
from distft.train.run_callbacks import Callbacks
from distft.train.setup import Setup
from distft.train.state import Position, RunState
from distft.train.trainee import Trainee


def restore(setup: Setup, trainee: Trainee, worker: Worker, size: Optional[int] = None) -> RunState:
    """Where the run starts on `size` workers (default: the worker's): with --resume, the
    checkpoint's state (loaded into the trainee by `worker`'s rank 0) at the same place in its
    epoch; else the start. Elastic mode restores on every worker alone."""
    cfg, folder, steps = setup.cfg, setup.folder, trainee.steps(size or worker.size)
    state = RunState()
    if setup.resume_from:
        def read() -> RunState:
            try:
                folder.checkpoints.restore(trainee.checkpoint, setup.resume_from)
            except Exception as e:  # a checkpoint from another model or options
                raise DistftError(f"cannot resume from {setup.resume_from} ({type(e).__name__}): "
                                  "it does not match this model and options; pass --overwrite "
                                  "to start again") from e
            return folder.checkpoints.latest()[1]

        state = worker.agree(read)
    position = state.position.rescaled(steps)
    if position.epoch >= cfg.epochs:
        raise DistftError(f"the checkpoint in {folder.path} is at epoch {position.epoch} and "
                          f"--epochs={cfg.epochs}: raise --epochs to train further")
    return state.at(position, steps_run=position.done)


def sync(setup: Setup, trainee: Trainee, worker: Worker, position: Position,
         broadcast: bool = True) -> list[str]:
    """The model compiled with distft's train step for these workers and the stage of
    `position`, and rank 0's training state (restored or fresh) on every worker
    (`broadcast=False`: there already). Returns each rank's placement."""
    cfg, model = setup.cfg, trainee.ft.model
    trainee.plan.apply(trainee.plan.index_at(position.epoch))  # before compile: fit restores compile's trainable set
    if cfg.sync_bn:
        sync_bn.synchronize(model, worker.hvd)
    trainee.compile(model, worker.size)
    if broadcast:
        worker.broadcast_variables(trainee.variables())
    seeds.per_worker(model, cfg.seed, worker.rank)  # dropout masks differ between workers
    return worker.gather(worker.placement)


@dataclass(frozen=True)
class Inputs:
    """The model that `fit` trains (the trainable rest with --cache_frozen), `streams(epoch,
    skip)`, this worker's batches from step `skip` of `epoch` on, and the first of them."""

    model: keras.Model
    streams: Callable[..., tf.data.Dataset]
    first: tf.data.Dataset


def inputs(setup: Setup, trainee: Trainee, worker: Worker, position: Position) -> Inputs:
    """This worker's training batches from `position` on, for the model `fit` trains."""
    cfg, ft = setup.cfg, trainee.ft
    if cfg.cache_frozen:
        fit_model, batches = frozen_cache.cached(
            trainee.parts, ft, trainee.train_data, cfg, worker, lambda rest: trainee.compile(rest, worker.size),
            position.steps, trainee.feed.preprocess)
    else:
        fit_model = ft.model

        def batches(first: int, skip: int = 0) -> tf.data.Dataset:
            return trainee.train_data.stream(
                worker.rank, worker.size, cfg.batch_size, ft.input_shape, training=True,
                seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, steps=position.steps,
                epochs=(first, cfg.epochs), skip=skip, preprocess=trainee.feed.preprocess,
                augment=cfg.augment or (), cache=cfg.cache)

    def streams(first: int, skip: int = 0) -> tf.data.Dataset:
        return trainee.execution.unsized(batches(first, skip))

    first = streams(position.epoch, position.skip)
    build_compiled(fit_model, first.element_spec)
    return Inputs(fit_model, streams, first)


def fit(setup: Setup, position: Position, data: Inputs, cbs: Callbacks):
    """Train from `position` to the last epoch; the history of this `fit`."""
    history = None
    try:
        history = _fit(data.model, data.first, data.streams, cbs.run, position, setup.cfg.epochs)
    except StopRequested:  # mid-epoch, checkpoint written: the partial epoch logs nothing
        if cbs.tensorboard:
            cbs.tensorboard.on_train_end()
    except tf.errors.OpError as e:  # e.g. a shard that vanished or broke mid-run
        raise failed(e) from e
    if cbs.stop.requested:
        where = cbs.stop.position
        raise Stopped(f"{setup.signals.name} received: stopped at {where.stopped_at()} with a "
                      f"checkpoint in {setup.folder.checkpoints.folder}; run the same command with "
                      f"--resume to continue from {where.next_step()}")
    return history


# A data file that became unreadable mid-run: TensorFlow's message starts with its path.
_UNREADABLE = re.compile(r"(?P<path>/[^;]+); (?P<why>.+?)(?: \[Op:\w+\])?$")


def failed(e: tf.errors.OpError) -> DistftError:
    """The line of a step that failed on this rank (`local`: the CLI prefixes the rank): a data
    file that could not be read is named with the host and what to do."""
    cause = root_cause(e.message)
    found = _UNREADABLE.match(cause)
    if found and isinstance(e, (tf.errors.NotFoundError, tf.errors.PermissionDeniedError)):
        return DistftError(f"could not read {found['path']} mid-run on host {socket.gethostname()} "
                           f"({found['why']}): make it readable again, then run the same command with "
                           "--resume (the last checkpoint is kept)", exit_code=1, local=True)
    return DistftError(f"training failed: {type(e).__name__}: {cause}", exit_code=1, local=True)


def _fit(model: keras.Model, stream: tf.data.Dataset, streams: Callable[..., tf.data.Dataset],
         callbacks: ResumedRun, start: Position, epochs: int):
    """`model.fit` from `start`: the rest of its epoch first (a call of their own), then whole
    epochs from `streams(start.epoch + 1)`."""
    # Keras's own fit, not a Keras Hub task's, which would run its preprocessor again: the
    # stream is preprocessed already. Each worker's stream is shuffled already.
    fit = lambda data, first, last, n: keras.Model.fit(
        model, data, steps_per_epoch=n, epochs=last, initial_epoch=first, callbacks=callbacks, verbose=0,
        shuffle=False)
    if not start.skip:
        return fit(stream, start.epoch, epochs, start.steps)
    history = fit(stream, start.epoch, start.epoch + 1, start.steps - start.skip)
    callbacks.last_call()
    if model.stop_training or start.epoch + 1 == epochs:
        callbacks.on_train_end()
        return history
    return fit(streams(start.epoch + 1), start.epoch + 1, epochs, start.steps)

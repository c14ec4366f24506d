"""A run's model stage: the model bound to the data, with everything that depends on it (the
feed, the stages, the optimizer, the gradient averager, the EMA) and the checkpoint that holds
its state.

Example (under `horovodrun -np 2`):
    trainee = Trainee.build(setup, worker)
    trainee.steps(worker.size)                    # steps per epoch on this many workers
    trainee.compile(trainee.ft.model, worker.size)   # distft's step, averaging over them
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

import keras
import tensorflow as tf

from distft.config import TrainConfig
from distft.data.dataset import Ready, Source, load
from distft.errors import DistftError
from distft.model import preprocessing
from distft.model.prepare import FineTuneModel, prepare
from distft.model.stages import Plan
from distft.model.variables import classify
from distft.train import frozen_cache, methods, optim
from distft.train.callbacks.ema import WeightAverage
from distft.train.callbacks.rank_health import StepClock
from distft.train.checks import check_fit
from distft.train.execution import Execution
from distft.train.metrics import objective
from distft.train.runtime import Worker
from distft.train.setup import Setup
from distft.train.step import GradientAverager, evaluate_per_token


@dataclass(frozen=True)
class Trainee:
    """The model to fine-tune and all that trains it."""

    ft: FineTuneModel
    feed: preprocessing.Feed  # what the images are fed as (`--preprocess`, decided for this model)
    train_data: Ready  # matched to the model and counted
    val_data: Optional[Ready]  # --val_data's, or --val_split's held-out part
    records: int  # training records over all workers
    plan: Plan
    parts: Optional[tuple]  # --cache_frozen: (frozen prefix, trainable rest)
    optimizer: keras.optimizers.Optimizer
    clock: Optional[StepClock]
    averager: GradientAverager
    ema: Optional[WeightAverage]
    execution: Execution
    checkpoint: tf.train.Checkpoint
    cfg: TrainConfig  # the options as run: `--preprocess` as fed to this model

    @classmethod
    def build(cls, setup: Setup, worker: Worker) -> Trainee:
        cfg = setup.cfg
        ft = worker.all_ok(lambda: _prepare(cfg, setup.train_data))
        train_data, val_data = load(setup.train_data, ft.model, worker, val=setup.val_data)
        feed = preprocessing.choose(cfg.preprocess, ft.model, train_data.layout)
        records = sum(train_data.part_counts())
        plan = worker.all_ok(lambda: methods.plan(ft, cfg))
        parts = worker.all_ok(lambda: frozen_cache.split_model(ft, plan, cfg)) if cfg.cache_frozen else None
        worker.all_ok(lambda: check_fit(ft, train_data, cfg.num_classes))
        steps = _steps(records, worker.size, cfg.steps_per_epoch, train_data, cfg.batch_size)
        optimizer = methods.optimizer(cfg, optim.build(cfg, worker.size, steps), ft, worker.rank == 0)
        optimizer.build(plan.variables())  # every stage's weights: their state survives switches
        clock = StepClock() if cfg.rank_health else None
        averager = GradientAverager(plan.variables(), cfg.grad_accum, cfg.compression, clock,
                                    overlap=cfg.allreduce == "overlap",
                                    jit=methods.use_xla(cfg.jit, ft.model, cfg.sync_bn),
                                    tokens=train_data.layout.token_weighted)
        ema = WeightAverage(plan.variables(), cfg.ema) if cfg.ema else None
        # A Keras Hub task compiles itself with a default optimizer whenever it is made (loaded,
        # or rebuilt for LoRA), which its checkpoint dependencies keep until another takes its
        # place: distft's, as compile will, so that a checkpoint read before compile matches.
        ft.model.optimizer = optimizer
        checkpoint = tf.train.Checkpoint(model=ft.model, optimizer=optimizer, **(
            {"ema": ema.state} if ema else {}), **({"grads": averager.state} if cfg.grad_accum > 1 else {}))
        return cls(ft, feed, train_data, val_data, records, plan, parts, optimizer, clock, averager,
                   ema, Execution(cfg.steps_per_execution), checkpoint,
                   dataclasses.replace(cfg, preprocess=feed.preprocess))

    def steps(self, size: int) -> int:
        """Steps per epoch on `size` workers (the per-worker batch stays)."""
        return _steps(self.records, size, self.cfg.steps_per_epoch, self.train_data, self.cfg.batch_size)

    def compile(self, model: keras.Model, size: int) -> None:
        """Compile `model` (the trainee's, or its trainable rest) with distft's train step, which
        averages gradients over `size` workers and updates the EMA, `--steps_per_execution` a call.

        Not XLA as a whole (Keras 3's default on GPUs): Horovod's ops have no XLA kernel; the
        step compiles its compute around them (--jit)."""
        tokens = self.averager.tokens
        model.compile(optimizer=self.optimizer, jit_compile=False, steps_per_execution=self.execution.n,
                      **objective(self.ft, self.cfg, tokens))
        model.train_step = self.averager.train_step(model, size, self.ema.update if self.ema else None)
        if tokens:
            evaluate_per_token(model)
        self.execution.install(model)

    def variables(self) -> list:
        """Everything a worker's training state is made of, in one fixed order: rank 0's is
        broadcast to all workers before training."""
        return self._with_training_state(self.ft.model.variables)

    def trained_variables(self) -> list:
        """The part of `variables()` that training changes: every stage's trainable weights, the
        statistics of their layers (BatchNormalization's), the seed generators' counters, and
        the optimizer's, gradient sums' and EMA's state. What elastic mode commits."""
        kinds = classify(self.ft.model, self.plan.ever_trainable())
        found = self.plan.variables() + list(kinds.statistics + kinds.seeds)
        return self._with_training_state(list({id(v): v for v in found}.values()))

    def _with_training_state(self, model_variables: list) -> list:
        return (model_variables + list(self.optimizer.variables) + list(self.averager.state.variables) +
                (list(self.ema.state.variables) if self.ema else []))


def _steps(records: int, size: int, steps_per_epoch: Optional[int], data: Ready, batch_size: int) -> int:
    if records < size:
        raise DistftError(f"--data has {records} training records for {size} workers: "
                          "give more data than workers, or fewer workers")
    return steps_per_epoch or data.steps_per_epoch(size, batch_size)


def _prepare(cfg: TrainConfig, data: Source) -> FineTuneModel:
    return prepare(cfg.model, cfg.num_classes, cfg.unfreeze, cfg.head_dropout, cfg.train_bn,
                   cfg.weights, cfg.input_shape, cfg.loss, cfg.metrics, cfg.seed,
                   cfg.unsafe_deserialization, cfg.precision, data.layout.target_shape, cfg.head,
                   cfg.loss_weights, cfg.lora, cfg.lora_layers, cfg.lora_alpha,
                   quantize=cfg.quantize)


def saved_model(setup: Setup, trainee: Trainee) -> keras.Model:
    """The model to save (before `lora.plain`): with --quantize, the same model prepared in
    float holding what trained (model/lora.py's `onto`), so that the file keeps the base's dtype."""
    if not setup.cfg.quantize:
        return trainee.ft.model
    import dataclasses as dc

    from distft.model import lora

    base = _prepare(dc.replace(setup.cfg, quantize=None), setup.train_data).model
    return lora.onto(base, trainee.ft.model)

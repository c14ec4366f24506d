"""The callbacks of one `fit`, in the order their work depends on:

1. rank health first: its batch hooks bracket the step alone;
2. the execution bounds, staged unfreezing, then `LayerStatistics`: statistics averaged at an
   epoch's end before anything reads them (validation, checkpoints, the save);
3. the exact epoch metrics, timing, and the stop check (its mid-epoch checkpoint averages the
   statistics itself);
4. validation, then the confusion matrix and the EMA's validation, which read the same weights;
5. the user's callbacks (--callbacks, --early_stopping), their stop agreed by all workers, then
   --keep_best: after every figure of the epoch's logs, the same on every worker;
6. on rank 0: histograms, TensorBoard (after validation: it writes its figures), progress, and
   the epoch's checkpoint last, so it holds every other callback's work;
7. the profiler, and `last` (elastic mode's commit: after everything else of the step).

Example:
    cbs = callbacks(setup, trainee, worker, state, data, placement)
    model.fit(..., callbacks=cbs.run)
    cbs.before        # validation before fine-tuning
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import keras
import tensorflow as tf

from distft import log
from distft.model.callback_specs import keep_best
from distft.train.callbacks.agreed_stop import AgreedStop
from distft.train.callbacks.checkpointing import Checkpointing
from distft.train.callbacks.confusion import ConfusionMatrix
from distft.train.callbacks.ema import EMA
from distft.train.callbacks.epoch_metrics import EpochMetrics
from distft.train.callbacks.keep_best import KeepBest
from distft.train.callbacks.profiler import Profiler
from distft.train.callbacks.progress import Progress
from distft.train.callbacks.rank_health import RankHealth
from distft.train.callbacks.resumed import ResumedRun
from distft.train.callbacks.statistics import LayerStatistics
from distft.train.callbacks.stopping import GracefulStop
from distft.train.callbacks.tensorboard import TensorBoardLogger
from distft.train.callbacks.timing import Timing
from distft.train.callbacks.unfreezing import StagedUnfreezing
from distft.train.callbacks.samples import Generations
from distft.train.callbacks.validation import Validation
from distft.train.callbacks.weights import WeightChanges
from distft.train.evaluation import evaluate_split
from distft.train.runtime import Worker
from distft.train.setup import Setup
from distft.train.state import Position, RunState
from distft.train.trainee import Trainee


@dataclass(frozen=True)
class Callbacks:
    """The callbacks of one `fit`, with those whose figures the run's end reads, and the
    validation before fine-tuning (measured by the run's first `fit`)."""

    run: ResumedRun
    timing: Timing
    stop: GracefulStop
    unfreezing: StagedUnfreezing
    tensorboard: Optional[TensorBoardLogger]
    before: dict
    agreed: Optional[AgreedStop]  # the user's callbacks
    best: Optional[KeepBest]  # --keep_best


def callbacks(setup: Setup, trainee: Trainee, worker: Worker, state: RunState, fit_model: keras.Model,
              placement: list[str], last: tuple = ()) -> Callbacks:
    """The callbacks of a `fit` of `fit_model` from `state`'s position. `state.before` holds the
    validation before fine-tuning once measured (an elastic reset's fit does not measure again)."""
    cfg, ft, folder, position = setup.cfg, trainee.ft, setup.folder, state.position
    val_stream = _val_stream(setup, trainee, worker)
    validate = _validator(trainee, val_stream, worker)
    first = validate is not None and not state.before
    before = validate() if first else state.before
    if first:
        log.info("validation before fine-tuning: %s", fmt(before))
    timing, tb = Timing(cfg.batch_size * worker.size), None
    if worker.rank == 0:
        tb = TensorBoardLogger(
            folder.file("tensorboard"), timing, cfg.log_every,
            trainee.cfg.to_dict(), {"params/trainable": ft.trainable_params, "params/frozen": ft.frozen_params,
                            "workers": worker.size},
            initial_step=state.steps_run, class_names=trainee.train_data.classes)
        tb.write_graph(ft.model)
        if first and not position.epoch:
            tb.write_validation(before, 0)
    statistics = LayerStatistics(ft.model, worker)
    agreed = AgreedStop(list(setup.user_callbacks), worker, cfg.epochs) if setup.user_callbacks else None
    best = _keep_best(setup, trainee, worker, state)
    stop = GracefulStop(setup.signals, worker.size, folder.checkpoints if worker.rank == 0 else None,
                        trainee.checkpoint, before_save=statistics.average, steps=position.steps,
                        state=lambda at: _state(trainee, state, at, stop, best), vote=agreed)
    unfreezing = StagedUnfreezing(trainee.plan, tb.write_epoch if tb else None)
    found: list[keras.callbacks.Callback] = [
        *trainee.execution.callbacks(position.steps), unfreezing, statistics, EpochMetrics(worker),
        timing, stop]
    if trainee.clock:
        found.insert(0, RankHealth(trainee.clock, worker, placement, cfg.slow_rank,
                                   cfg.slow_rank_epochs, tb.write_ranks if tb else None))
    if validate:
        found.append(Validation(validate))
        if ft.classes and not trainee.averager.tokens:  # a class a record, not a token a position
            confusion = ConfusionMatrix(ft.model, val_stream, ft.classes, worker,
                                        tb.write_confusion if tb else None)
            found.append(confusion)
            if first and not position.epoch:
                confusion.measure(0)
    if tb and trainee.averager.tokens and cfg.generations:  # what the causal LM says
        samples = Generations(ft.model, _prompts(trainee), folder.file("tensorboard/validation"),
                              _generated_length(trainee), worker.rank, every=cfg.generations)
        found.append(samples)
        if not position.epoch and not position.skip:
            samples.write(0)
    if trainee.ema:
        found.append(EMA(trainee.ema, validate))
    found += [c for c in (agreed, best) if c]
    if tb:
        if cfg.histograms:
            found.append(WeightChanges(ft.model, tb.train_writer, cfg.histograms, position.epoch))
        found += [tb, Progress(cfg.epochs, position.steps, cfg.log_every, bar=not worker.env.is_launched),
                  Checkpointing(folder.checkpoints, trainee.checkpoint, lambda epoch, logs: _state(
                      trainee, state, Position(epoch, 0, position.steps), stop, best, logs))]
    if cfg.profile:
        found += _profiler(setup, worker, position)
    return Callbacks(ResumedRun(found + list(last), fit_model, cfg.epochs, position.steps, position.skip),
                     timing, stop, unfreezing, tb, before, agreed, best)


def fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())


def _state(trainee: Trainee, state: RunState, at: Position, stop: GracefulStop,
           best: Optional[KeepBest], logs: Optional[dict] = None) -> RunState:
    """The run's state at `at`, as a checkpoint records it: `stage` is the one that trained the
    step before it."""
    trained = at.epoch if at.skip else max(0, at.epoch - 1)
    return state.at(at, stage=trainee.plan.index_at(trained), stopped_by=stop.stopped_by,
                    logs={k: float(v) for k, v in (logs or {}).items()},
                    best=best.record if best else state.best)


def _keep_best(setup: Setup, trainee: Trainee, worker: Worker, state: RunState) -> Optional[KeepBest]:
    """--keep_best's callback, going on from the best so far of a resumed run."""
    named = keep_best(setup.cfg.keep_best)
    if named is None:
        return None
    return KeepBest(named.name, named.kwargs.get("mode", "auto"), worker, setup.folder.checkpoints,
                    tf.train.Checkpoint(model=trainee.ft.model), state.best)


def _prompts(trainee: Trainee, n: int = 3) -> list[str]:
    """A few prompts of the validation data (else the training data's): see Text.prompts."""
    data = trainee.val_data or trainee.train_data
    return data.layout.prompts(data.files[0], n)


def _generated_length(trainee: Trainee) -> int:
    """Tokens in all of a generation: the length the model trains on."""
    return trainee.train_data.layout.packed_length


def _val_stream(setup: Setup, trainee: Trainee, worker: Worker) -> Optional[tf.data.Dataset]:
    if trainee.val_data is None:
        return None
    return trainee.val_data.stream(worker.rank, worker.size, setup.cfg.batch_size,
                                   tuple(trainee.ft.model.input_shape[1:]), training=False,
                                   preprocess=trainee.feed.preprocess)


def _validator(trainee: Trainee, stream: Optional[tf.data.Dataset],
               worker: Worker) -> Optional[Callable[[], dict]]:
    if trainee.val_data is None:
        return None
    share = trainee.val_data.share(worker.rank, worker.size)
    return lambda: evaluate_split(trainee.ft.model, stream, share.records, worker)


def _profiler(setup: Setup, worker: Worker, position: Position) -> list[keras.callbacks.Callback]:
    """The Profiler on this rank if --profile_ranks (default 0) names it."""
    cfg, log_dir = setup.cfg, setup.folder.file("tensorboard")
    first, last = cfg.profile_steps()
    done, total = position.done, cfg.epochs * position.steps
    ranks = cfg.profiled_ranks(worker.size)
    if worker.rank == 0 and not done < first <= total:
        log.warning("--profile=%s: the run goes from step %d to %d, so nothing is traced",
                    cfg.profile, done + 1, total)
    if worker.rank not in ranks:
        return []
    return [Profiler(log_dir if worker.rank == 0 else f"{log_dir}/rank_{worker.rank}", first, last, done,
                     cfg.steps_per_execution)]

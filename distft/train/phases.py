"""The phases of one worker's fine-tuning run, which share one `Job` (train/trainer.py puts
them in order; train/elastic.py repeats the later ones whenever the set of workers changes).

Example (under `horovodrun -np 2`):
    job = open_job(cfg, Worker.start())   # signals caught, run folder checked, data opened
    build(job)                            # model bound to the data, optimizer, averager, EMA
    restore(job)                          # --resume: the checkpoint, the epoch and step
    sync(job)                             # compiled with the allreduce step; rank 0's state
    announce(job)                         # rank 0 prepares the run folder and logs the run
    data = inputs(job)
    cbs = callbacks(job, data)
    metrics = finish(job, fit(job, data, cbs), cbs)
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import keras
import tensorflow as tf

from distft import log
from distft.config import TrainConfig, default_output_dir
from distft.data.dataset import Ready, Source, load
from distft.errors import DistftError, Stopped, root_cause
from distft.launch.environment import launched_at
from distft.files import atomic_write
from distft.model import lora, preprocessing, unfreeze as unfreezing
from distft.model.prepare import FineTuneModel, combined_checksum, layer_checksums, prepare
from distft.model.stages import Plan
from distft.train import frozen_cache, methods, optim, seeds, sync_bn
from distft.train.gpu import check_gpus
from distft.train.callbacks.checkpointing import Checkpointing
from distft.train.callbacks.confusion import ConfusionMatrix
from distft.train.callbacks.ema import EMA, WeightAverage
from distft.train.callbacks.epoch_metrics import EpochMetrics
from distft.train.callbacks.profiler import Profiler
from distft.train.callbacks.progress import Progress
from distft.train.callbacks.rank_health import RankHealth, StepClock
from distft.train.callbacks.resumed import ResumedRun
from distft.train.callbacks.statistics import LayerStatistics
from distft.train.callbacks.stopping import GracefulStop, StopRequested, StopSignals
from distft.train.callbacks.tensorboard import TensorBoardLogger
from distft.train.callbacks.timing import Timing
from distft.train.callbacks.unfreezing import StagedUnfreezing
from distft.train.callbacks.validation import Validation
from distft.train.callbacks.weights import WeightChanges
from distft.train.checks import check_fit
from distft.train.evaluation import evaluate_split
from distft.train.execution import Execution
from distft.train.metrics import build_compiled, compiled
from distft.train.output import RunFolder
from distft.train.runtime import Worker
from distft.train.step import GradientAverager


@dataclass
class Job:
    """What the phases of one run share: the worker, the run folder, the data, the model and
    its training state, and where in the run training starts (epoch, steps done in it)."""

    cfg: TrainConfig
    worker: Worker
    signals: StopSignals
    folder: RunFolder
    started: float
    resume_from: Optional[str]
    sources: tuple[Source, Optional[Source]]  # --data and --val_data, opened
    train_data: Ready = None
    val_data: Optional[Ready] = None
    ft: FineTuneModel = None
    feed: preprocessing.Feed = None
    plan: Plan = None
    parts: Optional[tuple] = None  # --cache_frozen: (frozen prefix, trainable rest)
    records: int = 0
    steps: int = 0
    optimizer: keras.optimizers.Optimizer = None
    clock: Optional[StepClock] = None
    averager: GradientAverager = None
    ema: Optional[WeightAverage] = None
    execution: Execution = None
    checkpoint: tf.train.Checkpoint = None
    epoch: int = 0
    skip: int = 0  # steps of `epoch` trained already
    before: dict = field(default_factory=dict)  # validation before fine-tuning
    placement: list[str] = field(default_factory=list)  # each rank's node and cores
    setup_error: Optional[DistftError] = None  # elastic mode: raised unless the run is underway
    steps_run: Optional[int] = None  # elastic mode: steps trained in all attempts (else `done`)

    @property
    def done(self) -> int:
        """Steps trained before this `fit`."""
        return self.epoch * self.steps + self.skip

    def variables(self) -> list:
        """Everything a worker's training state is made of, in one fixed order: rank 0's is
        broadcast to all workers before training."""
        return self._with_training_state(self.ft.model.variables)

    def trained_variables(self) -> list:
        """The part of `variables()` that training changes: every stage's trainable weights, the
        statistics of their layers (BatchNormalization's), the seed generators' counters, and
        the optimizer's, gradient sums' and EMA's state. What elastic mode commits."""
        model = self.ft.model
        ever = self.plan.ever_trainable()
        statistics = [v for layer in unfreezing.flatten(model) if layer.name in ever
                      for v in unfreezing.statistics(layer)]
        found = self.plan.variables() + statistics + [g.state for g in seeds.generators(model)]
        return self._with_training_state(list({id(v): v for v in found}.values()))

    def _with_training_state(self, model_variables: list) -> list:
        return (model_variables + list(self.optimizer.variables) + list(self.averager.state.variables) +
                (list(self.ema.state.variables) if self.ema else []))


@dataclass
class Callbacks:
    """The callbacks of one `fit`, with those whose figures the run's end reads."""

    run: ResumedRun
    timing: Timing
    stop: GracefulStop
    unfreezing: StagedUnfreezing
    tensorboard: Optional[TensorBoardLogger]


def open_job(cfg: TrainConfig, worker: Worker) -> Job:
    """Signals caught, the run folder agreed and checked, the data opened."""
    started = time.time()
    signals = StopSignals()
    signals.install()  # remember a signal that arrives while the run is being set up
    keras.utils.set_random_seed(cfg.seed)
    check_gpus(worker, cfg.require_gpu)
    if not cfg.output_dir:  # launched without --output_dir: rank 0's choice for all
        cfg.output_dir = worker.agree(lambda: default_output_dir(cfg.model))
        if worker.rank == 0:
            log.info("run folder: %s (choose one with --output_dir)", cfg.output_dir)
    folder = RunFolder(cfg.output_dir, cfg.keep_checkpoints)
    resume_from, setup_error = None, None
    try:
        resume_from = worker.agree(lambda: folder.check(cfg.resume, cfg.overwrite))
    except DistftError as e:
        if not worker.env.elastic:
            raise
        setup_error = e  # a worker that joins a run underway finds its folder in use
    sources = worker.all_ok(lambda: _open_data(cfg))
    return Job(cfg, worker, signals, folder, started, resume_from, sources, setup_error=setup_error)


def build(job: Job) -> None:
    """The model bound to the data, its stages, optimizer, gradient averager and EMA, and the
    checkpoint that holds them."""
    cfg, worker, (source, val_source) = job.cfg, job.worker, job.sources
    job.ft = ft = worker.all_ok(lambda: _prepare(cfg, source))
    job.train_data, job.val_data = load(source, ft.model, worker, val=val_source)
    train_data = job.train_data
    job.feed = preprocessing.choose(cfg.preprocess, ft.model, train_data.schema)
    cfg.preprocess = job.feed.preprocess  # config.yaml records what was fed, for evaluate and predict
    job.records = sum(train_data.part_counts())
    job.steps = steps_for(job, worker.size)
    job.plan = plan = worker.all_ok(lambda: methods.plan(ft, cfg))
    job.parts = worker.all_ok(lambda: frozen_cache.split_model(ft, plan, cfg)) if cfg.cache_frozen else None
    worker.all_ok(lambda: check_fit(ft, train_data, cfg.num_classes))
    job.optimizer = methods.optimizer(cfg, optim.build(cfg, worker.size, job.steps), ft, worker.rank == 0)
    job.optimizer.build(plan.variables())  # every stage's weights: their state survives switches
    job.clock = StepClock() if cfg.rank_health else None
    job.averager = GradientAverager(worker.size, plan.variables(), cfg.grad_accum, cfg.compression, job.clock,
                                    overlap=cfg.allreduce == "overlap",
                                    jit=methods.use_xla(cfg.jit, ft.model, cfg.sync_bn))
    job.ema = WeightAverage(plan.variables(), cfg.ema) if cfg.ema else None
    job.execution = Execution(cfg.steps_per_execution)
    job.checkpoint = tf.train.Checkpoint(model=ft.model, optimizer=job.optimizer, **(
        {"ema": job.ema.state} if job.ema else {}), **({"grads": job.averager.state} if cfg.grad_accum > 1 else {}))


def steps_for(job: Job, size: int) -> int:
    """Steps per epoch on `size` workers (the per-worker batch stays); an error line when the
    data has fewer records than workers."""
    if job.records < size:
        raise DistftError(f"--data has {job.records} training records for {size} workers: "
                          "give more data than workers, or fewer workers")
    return job.cfg.steps_per_epoch or job.train_data.steps_per_epoch(size, job.cfg.batch_size)


def restore(job: Job) -> None:
    """With --resume: the checkpoint's state, and the epoch and step it continues from."""
    cfg, folder = job.cfg, job.folder
    if job.resume_from:
        def read():
            try:
                folder.checkpoints.restore(job.checkpoint, job.resume_from)
            except Exception as e:  # a checkpoint from another model or options
                raise DistftError(f"cannot resume from {job.resume_from} ({type(e).__name__}): "
                                  "it does not match this model and options; pass --overwrite "
                                  "to start again") from e
            state = folder.checkpoints.latest()[1]
            return state["epoch"], state.get("step_in_epoch", 0), state.get("steps_per_epoch") or job.steps
        job.epoch, skip, steps_then = job.worker.agree(read)
        job.skip = skip * job.steps // steps_then  # the same place in the epoch on any number of workers
        if job.skip >= job.steps:  # stopped after an epoch's last step, before its end
            job.epoch, job.skip = job.epoch + 1, 0
    if job.epoch >= cfg.epochs:
        raise DistftError(f"the checkpoint in {cfg.output_dir} is at epoch {job.epoch} and "
                          f"--epochs={cfg.epochs}: raise --epochs to train further")


def sync(job: Job, broadcast: bool = True) -> None:
    """The model compiled with distft's train step for the stage of `job.epoch`, and rank 0's
    training state (restored or fresh) on every worker (`broadcast=False`: there already)."""
    cfg, worker, ft = job.cfg, job.worker, job.ft
    job.plan.apply(job.plan.index_at(job.epoch))  # before compile: fit restores compile's trainable set
    if cfg.sync_bn:
        sync_bn.synchronize(ft.model, worker.hvd)
    compile_for_workers(ft.model, job)
    if broadcast:
        worker.broadcast_variables(job.variables())
    seeds.per_worker(ft.model, cfg.seed, worker.rank)  # dropout masks differ between workers
    job.placement = worker.gather(worker.placement)


def announce(job: Job) -> None:
    """Rank 0 prepares the run folder and logs what the run does."""
    cfg, worker, folder = job.cfg, job.worker, job.folder
    if worker.rank != 0:
        return
    folder.prepare(cfg.overwrite)
    cfg.save(folder.file("config.yaml"))
    _log_start(job)
    job.feed.report()
    methods.describe(cfg, job.plan, job.averager.jit)
    if job.train_data.classes:  # the names of the model's outputs, in order
        folder.write_json("classes.json", {"class_names": job.train_data.classes})
        log.info("classes: %s", ", ".join(job.train_data.classes))


@dataclass
class Inputs:
    """The model that `fit` trains (the trainable rest with --cache_frozen), `streams(epoch,
    skip)`, this worker's batches from step `skip` of `epoch` on, and the first of them."""

    model: keras.Model
    streams: Callable[..., tf.data.Dataset]
    first: tf.data.Dataset


def inputs(job: Job) -> Inputs:
    """This worker's training batches from where the run starts, for the model `fit` trains."""
    cfg, worker, ft = job.cfg, job.worker, job.ft
    if cfg.cache_frozen:
        fit_model, batches = frozen_cache.cached(
            job.parts, ft, job.train_data, cfg, worker, lambda rest: compile_for_workers(rest, job),
            job.steps)
    else:
        fit_model = ft.model

        def batches(first: int, skip: int = 0) -> tf.data.Dataset:
            return job.train_data.stream(
                worker.rank, worker.size, cfg.batch_size, ft.input_shape, training=True,
                seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer, steps=job.steps,
                epochs=(first, cfg.epochs), skip=skip, preprocess=cfg.preprocess,
                augment=cfg.augment or (), cache=cfg.cache)

    def streams(first: int, skip: int = 0) -> tf.data.Dataset:
        return job.execution.unsized(batches(first, skip))

    first = streams(job.epoch, job.skip)
    build_compiled(fit_model, first.element_spec)
    return Inputs(fit_model, streams, first)


def callbacks(job: Job, data: Inputs, last: tuple = ()) -> Callbacks:
    """The run's callbacks, in order, each given what it reports to (rank 0's TensorBoard);
    `last` after them all."""
    cfg, worker, ft, folder = job.cfg, job.worker, job.ft, job.folder
    val_stream = _val_stream(ft.model, job.val_data, cfg, worker)
    validate = _validator(ft.model, job.val_data, val_stream, worker)
    # The run's first fit (a resumed one too) validates the weights it starts from; an elastic
    # reset's fit does not (the first one's figures are in the shared state).
    first = validate is not None and not job.before
    if first:
        job.before = validate()
        log.info("validation before fine-tuning: %s", _fmt(job.before))
    timing, tb = Timing(cfg.batch_size * worker.size), None
    if worker.rank == 0:
        tb = TensorBoardLogger(
            folder.file("tensorboard"), timing, cfg.log_every,
            cfg.to_dict(), {"params/trainable": ft.trainable_params, "params/frozen": ft.frozen_params,
                            "workers": worker.size},
            initial_step=job.done if job.steps_run is None else job.steps_run,
            class_names=job.train_data.classes)
        tb.write_graph(ft.model)
        if first and not job.epoch:
            tb.write_validation(job.before, 0)
    statistics = LayerStatistics(ft.model, worker)
    stop = GracefulStop(job.signals, worker.size, folder.checkpoints if worker.rank == 0 else None,
                        job.checkpoint, before_save=statistics.average, steps=job.steps)
    unfreezing = StagedUnfreezing(job.plan, tb.write_epoch if tb else None)
    found: list[keras.callbacks.Callback] = [  # statistics before validation and checkpoints
        *job.execution.callbacks(job.steps), unfreezing, statistics, EpochMetrics(worker), timing, stop]
    if job.clock:  # first: its batch hooks bracket the step alone
        found.insert(0, RankHealth(job.clock, worker, job.placement, cfg.slow_rank,
                                   cfg.slow_rank_epochs, tb.write_ranks if tb else None))
    if validate:
        found.append(Validation(validate))
        if ft.classes:
            confusion = ConfusionMatrix(ft.model, val_stream, ft.classes, worker,
                                        tb.write_confusion if tb else None)
            found.append(confusion)
            if first and not job.epoch:
                confusion.measure(0)
    if job.ema:
        found.append(EMA(job.ema, validate))
    if tb:
        if cfg.histograms:
            found.append(WeightChanges(ft.model, tb.train_writer, cfg.histograms, job.epoch))
        found += [tb, Progress(cfg.epochs, job.steps, cfg.log_every, bar=not worker.env.is_launched),
                  Checkpointing(folder.checkpoints, job.checkpoint,
                                lambda epoch: {"stage": job.plan.index_at(epoch), **stop.state})]
    if cfg.profile:
        found += _profiler(cfg, worker, folder.file("tensorboard"), job.done, cfg.epochs * job.steps)
    return Callbacks(ResumedRun(found + list(last), data.model, cfg.epochs, job.steps, job.skip), timing, stop,
                     unfreezing, tb)


def fit(job: Job, data: Inputs, cbs: Callbacks):
    """Train from `job.epoch` step `job.skip` to the last epoch; the history of this `fit`."""
    history = None
    try:
        history = _fit(data.model, data.first, data.streams, cbs.run, job.epoch, job.skip, job.steps,
                       job.cfg.epochs)
    except StopRequested:  # mid-epoch, checkpoint written: the partial epoch logs nothing
        if cbs.tensorboard:
            cbs.tensorboard.on_train_end()
    except tf.errors.OpError as e:  # e.g. a shard that vanished or broke mid-run
        raise DistftError(f"training failed: {type(e).__name__}: {root_cause(e.message)}",
                          exit_code=1, local=True) from e
    if cbs.stop.requested:
        epoch, step = cbs.stop.where
        where = f"epoch {epoch + 1} step {step + 1}" if step else f"epoch {epoch + 1}"
        raise Stopped(f"{job.signals.name} received: stopped at epoch {epoch + (step > 0)}"
                      f"{f' step {step}' if step else ''} with a checkpoint in "
                      f"{job.folder.checkpoints.folder}; run the same command with --resume to "
                      f"continue from {where}")
    return history


def finish(job: Job, history, cbs: Callbacks, extra: Optional[dict] = None) -> dict[str, Any]:
    """Check that the workers agree, then rank 0 saves the model and metrics.json (with
    `extra`) and logs the summary; the metrics, the same on every worker."""
    cfg, worker, ft, folder, timing = job.cfg, job.worker, job.ft, job.folder, cbs.timing
    steps_run = worker.gather([s for s, _ in timing.epochs])  # per rank, per epoch
    per_rank = worker.gather(layer_checksums(ft.model))
    checksums = [combined_checksum(layers) for layers in per_rank]
    differing = differing_layers(per_rank)
    last = {k: float(v[-1]) for k, v in history.history.items()}
    metrics = {
        "train": {k: v for k, v in last.items() if not k.startswith("val_") and
                  k not in ("samples_per_sec", "step_time_ms", "epoch_seconds")},
        "validation": {k[4:]: v for k, v in last.items() if k.startswith("val_")},
        "validation_before": job.before,
        "epochs": cfg.epochs, "initial_epoch": job.epoch, "steps_per_epoch": job.steps,
        "workers": worker.size, "launcher": worker.env.name, "steps_run": steps_run,
        "samples_per_sec": timing.samples_per_sec,
        # From the launch (a launcher's workers) or this call (in-process) to the first step's end.
        "first_step_seconds": (timing.first_step_at - (launched_at() if worker.env.is_launched else job.started)
                               if timing.first_step_at else None),
        "first_step_at": timing.first_step_at,
        "params": {"trainable": ft.trainable_params, "frozen": ft.frozen_params},
        "weights_checksums": checksums, "seconds": time.time() - job.started,
        # Updates applied over the whole run: fewer than steps / --grad_accum where mixed_float16
        # skipped steps whose gradients overflowed.
        "optimizer_updates": int(job.optimizer.iterations.numpy()),
    }
    if isinstance(job.optimizer, keras.mixed_precision.LossScaleOptimizer):
        metrics["loss_scale"] = float(job.optimizer.dynamic_scale.numpy())
    if cfg.unfreeze_schedule:
        metrics["stages"] = cbs.unfreezing.record
    if job.ema:
        metrics["ema_checksums"] = worker.gather(job.ema.checksum(ft.model))
    if cfg.lora:
        metrics["lora"] = lora.summary(ft.model)
    metrics.update(extra or {})
    if worker.rank == 0:
        _save(job, metrics, not differing)
    if differing:  # after the save: a run's result is never lost to this check
        raise DistftError(f"workers ended with different weights in {', '.join(differing[:8])}"
                          f"{' ...' if len(differing) > 8 else ''}: model.keras and the checkpoints "
                          "hold rank 0's; this is a bug in distft, please report it", exit_code=1)
    return metrics


def _save(job: Job, metrics: dict[str, Any], identical: bool) -> None:
    """Rank 0: the model (and EMA model, adapter), metrics.json and the summary lines."""
    cfg, ft, folder = job.cfg, job.ft, job.folder
    path = folder.save_model(_plain(ft.model))
    if job.ema:
        with job.ema.swapped():
            folder.save_model(_plain(ft.model, f"{ft.model.name}_ema"), "model_ema.keras")
    if cfg.save_adapter:
        atomic_write(folder.file("adapter.npz"), lambda tmp: lora.save_adapter(ft.model, tmp))
    folder.write_json("metrics.json", metrics)
    if identical:
        log.info("weights identical on all %d workers (checksum %s)", job.worker.size,
                 metrics["weights_checksums"][0])
    first = metrics["first_step_seconds"]
    log.info("done in %.0fs (first step %s after launch), %.0f samples/s: %s", metrics["seconds"],
             f"{first:.1f}s" if first is not None else "-", metrics["samples_per_sec"],
             _fmt({**metrics["train"], **{f"val_{k}": v for k, v in metrics["validation"].items()}}))
    log.info("model: %s", path)
    log.info("watch: tensorboard --logdir %s --host 127.0.0.1 --port 6006", folder.file("tensorboard"))


def _fit(model: keras.Model, stream: tf.data.Dataset, streams: Callable[..., tf.data.Dataset],
         callbacks: ResumedRun, initial_epoch: int, skip: int, steps: int, epochs: int):
    """`model.fit` from step `skip` of `initial_epoch`: the epoch's remaining steps first (a
    call of their own), then whole epochs from `streams(initial_epoch + 1)`."""
    fit = lambda data, first, last, n: model.fit(  # each worker's stream is shuffled already
        data, steps_per_epoch=n, epochs=last, initial_epoch=first, callbacks=callbacks, verbose=0,
        shuffle=False)
    if not skip:
        return fit(stream, initial_epoch, epochs, steps)
    history = fit(stream, initial_epoch, initial_epoch + 1, steps - skip)
    callbacks.last_call()
    if model.stop_training or initial_epoch + 1 == epochs:
        callbacks.on_train_end()
        return history
    return fit(streams(initial_epoch + 1), initial_epoch + 1, epochs, steps)


def differing_layers(per_rank: list[dict[str, str]]) -> list[str]:
    """The layers whose weights differ between workers, given each worker's layer checksums."""
    return [name for name in per_rank[0] if any(r.get(name) != per_rank[0][name] for r in per_rank[1:])]


def compile_for_workers(model: keras.Model, job: Job) -> None:
    """Compile `model` (the job's, or its trainable rest) with distft's train step, which
    averages gradients over the workers and updates the EMA, `--steps_per_execution` a call.

    Not XLA as a whole (Keras 3's default on GPUs): Horovod's ops have no XLA kernel; the
    step compiles its compute around them (--jit)."""
    ft = job.ft
    model.compile(optimizer=job.optimizer, loss=ft.loss, loss_weights=ft.loss_weights,
                  jit_compile=False, metrics=compiled(ft), steps_per_execution=job.execution.n)
    model.train_step = job.averager.train_step(model, job.ema.update if job.ema else None)
    job.execution.install(model)


def _plain(model: keras.Model, name: Optional[str] = None) -> keras.Model:
    """`model` as a plain functional model, for saving: no distft train step or compile state,
    LoRA factors merged."""
    return lora.merged(keras.Model(_single(model.inputs), _single(model.outputs), name=name or model.name))


def _single(tensors: list) -> Any:
    """The one tensor of a one-element list (so the saved model's `output` is a tensor)."""
    return tensors[0] if len(tensors) == 1 else tensors


def _open_data(cfg: TrainConfig) -> tuple[Source, Optional[Source]]:
    train = Source.open(cfg.data, cfg.label, cfg.val_split, cfg.x_key, cfg.y_key, named_csv=True)
    if cfg.val_data:
        return train, Source.open(cfg.val_data, cfg.label, 0.0, cfg.x_key, cfg.y_key, flag="val_data",
                                  named_csv=True)
    return train, None


def _prepare(cfg: TrainConfig, data: Source) -> FineTuneModel:
    return prepare(cfg.model, cfg.num_classes, cfg.unfreeze, cfg.head_dropout, cfg.train_bn,
                   cfg.weights, cfg.input_shape, cfg.loss, cfg.metrics, cfg.seed,
                   cfg.unsafe_deserialization, cfg.precision, data.schema.target_shape, cfg.head,
                   cfg.loss_weights, cfg.lora, cfg.lora_layers, cfg.lora_alpha)


def _val_stream(model: keras.Model, val_data: Optional[Ready], cfg: TrainConfig,
                worker: Worker) -> Optional[tf.data.Dataset]:
    if val_data is None:
        return None
    return val_data.stream(worker.rank, worker.size, cfg.batch_size, tuple(model.input_shape[1:]),
                           training=False, preprocess=cfg.preprocess)


def _validator(model: keras.Model, val_data: Optional[Ready], stream: Optional[tf.data.Dataset],
               worker: Worker):
    if val_data is None:
        return None
    share = val_data.share(worker.rank, worker.size)
    return lambda: evaluate_split(model, stream, share.records, worker)


def _profiler(cfg: TrainConfig, worker: Worker, log_dir: str, done: int,
              total: int) -> list[keras.callbacks.Callback]:
    """The Profiler on this rank if --profile_ranks (default 0) names it."""
    first, last = cfg.profile_steps()
    ranks = sorted({int(r) for r in cfg.profile_ranks or ("0",)})
    if ranks[-1] >= worker.size:
        raise DistftError(f"--profile_ranks={','.join(map(str, ranks))} names rank {ranks[-1]} but the "
                          f"job has {worker.size} worker(s): pass ranks below {worker.size}")
    if worker.rank == 0 and not done < first <= total:
        log.warning("--profile=%s: the run goes from step %d to %d, so nothing is traced",
                    cfg.profile, done + 1, total)
    if worker.rank not in ranks:
        return []
    return [Profiler(log_dir if worker.rank == 0 else f"{log_dir}/rank_{worker.rank}", first, last, done,
                     cfg.steps_per_execution)]


def _log_start(job: Job) -> None:
    cfg, worker, ft, train_data = job.cfg, job.worker, job.ft, job.train_data
    log.info("%d worker(s) via %s, %s, %s thread(s) each (inter-op %s)", worker.size, worker.env.name,
             worker.device, worker.threads or "TensorFlow's default", worker.inter_op)
    log.info("placement: %s", ", ".join(f"rank {r} on {p}" for r, p in enumerate(job.placement)))
    log.info("horovod: %s", " ".join(f"{k}={v}" for k, v in worker.horovod.items()))
    log.info("model %s: %d layers trainable (%s)", cfg.model, len(ft.unfrozen),
             ", ".join(ft.unfrozen[-6:]) + (" ..." if len(ft.unfrozen) > 6 else ""))
    moving = unfreezing.count_params(ft.model.weights) - ft.trainable_params - ft.frozen_params
    log.info("weights: %d trainable, %d frozen%s", ft.trainable_params, ft.frozen_params,
             f", {moving} moving statistics (averaged over the workers every epoch)" if moving else "")
    if isinstance(ft.loss, dict):
        log.info("objective per output: %s", "; ".join(
            f"{n}: {ft.loss[n]} (weight {(ft.loss_weights or {}).get(n, 1.0):g}), metrics "
            f"{', '.join(ft.metrics[n])}" for n in ft.loss))
    else:
        log.info("objective: %s, metrics %s%s", ft.loss, ", ".join(ft.metrics),
                 "" if cfg.loss else f" (for targets of shape {train_data.schema.describe_y()}; --loss to change)")
    log.info("data %s: %d records, %d steps/epoch of %d per worker (global batch %d%s%s)",
             cfg.data, job.records, job.steps, cfg.batch_size, cfg.batch_size * worker.size,
             f", {cfg.batch_size * worker.size * cfg.grad_accum} per update" if cfg.grad_accum > 1 else "",
             f", {cfg.steps_per_execution} steps per execution" if cfg.steps_per_execution > 1 else "")
    if job.resume_from:
        log.info("resuming from %s: %d epoch(s) done, %d to go%s", job.resume_from, job.epoch,
                 cfg.epochs - job.epoch,
                 f" (epoch {job.epoch + 1} from step {job.skip + 1} of {job.steps})" if job.skip else "")


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())

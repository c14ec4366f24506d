"""One worker's fine-tuning run: the Horovod recipe, start to finish.

Example (under `horovodrun -np 2`):
    metrics = run(TrainConfig.resolve(model="base_model.h5", data="shards/", output_dir="runs/a",
                                      num_classes=5, unfreeze="last:2"))
"""
from __future__ import annotations

import math
import time
from typing import Any, Optional

import keras
import tensorflow as tf

from distft import log
from distft.config import TrainConfig, default_output_dir
from distft.data.dataset import DataSet
from distft.errors import DistftError, Stopped, root_cause
from distft.launch.environment import launched_at
from distft.files import atomic_write
from distft.model import head as heads, lora, preprocessing, unfreeze as unfreezing
from distft.model.prepare import FineTuneModel, combined_checksum, layer_checksums, prepare
from distft.train import frozen_cache, methods, optim, seeds, sync_bn
from distft.train.callbacks.checkpointing import Checkpointing
from distft.train.callbacks.confusion import ConfusionMatrix
from distft.train.callbacks.ema import EMA
from distft.train.callbacks.epoch_metrics import EpochMetrics
from distft.train.callbacks.profiler import Profiler
from distft.train.callbacks.progress import Progress
from distft.train.callbacks.rank_health import RankHealth, StepClock
from distft.train.callbacks.resumed import ResumedRun
from distft.train.callbacks.statistics import LayerStatistics
from distft.train.callbacks.stopping import GracefulStop, StopRequested
from distft.train.callbacks.tensorboard import TensorBoardLogger
from distft.train.callbacks.timing import Timing
from distft.train.callbacks.unfreezing import StagedUnfreezing
from distft.train.callbacks.validation import Validation
from distft.train.callbacks.weights import WeightChanges
from distft.train.evaluation import evaluate_split
from distft.train.metrics import build_compiled, compiled
from distft.train.output import RunFolder
from distft.train.runtime import Worker
from distft.train.step import GradientAverager


def run(cfg: TrainConfig, worker: Optional[Worker] = None) -> dict[str, Any]:
    """Fine-tune as one worker of the job; returns the final metrics (same on every worker)."""
    started = time.time()
    worker = worker or Worker.start(cfg.threads)
    stop = GracefulStop(None, None, worker.size)
    stop.install()  # remember a signal that arrives while the run is being set up
    keras.utils.set_random_seed(cfg.seed)
    if not cfg.output_dir:  # launched without --output_dir: rank 0's choice for all
        cfg.output_dir = worker.agree(lambda: default_output_dir(cfg.model))
        if worker.rank == 0:
            log.info("run folder: %s (choose one with --output_dir)", cfg.output_dir)
    folder = RunFolder(cfg.output_dir, cfg.keep_checkpoints)
    resume_from = worker.agree(lambda: folder.check(cfg.resume, cfg.overwrite))

    train_data, val_data = worker.all_ok(lambda: _open_data(cfg))
    methods.use_xla(cfg.jit)
    ft = worker.all_ok(lambda: _prepare(cfg, train_data))
    worker.all_ok(lambda: [d.bind(ft.model, flag=f) for d, f in ((train_data, "data"), (val_data, "val_data")) if d])
    feed = preprocessing.choose(cfg.preprocess, ft.model, train_data.schema)
    cfg.preprocess = feed.preprocess  # config.yaml records what was fed, for evaluate and predict
    counts = train_data.count(worker.rank, worker.size, worker.gather)
    total = sum(counts.train)
    if total < worker.size:
        raise DistftError(f"--data has {total} training records for {worker.size} workers: "
                          "give more data than workers, or fewer workers")
    if cfg.val_split:
        val_data = train_data.held_out()
    elif val_data is not None:
        val_data.count(worker.rank, worker.size, worker.gather)
        val_data.use_classes(train_data.output_classes or train_data.classes, "--data")
    plan = worker.all_ok(lambda: methods.plan(ft, cfg))
    parts = worker.all_ok(lambda: frozen_cache.split_model(ft, plan, cfg)) if cfg.cache_frozen else None
    worker.all_ok(lambda: check_fit(ft, train_data, cfg.num_classes))
    steps = cfg.steps_per_epoch or train_data.steps_per_epoch(worker.size, cfg.batch_size)
    optimizer = methods.optimizer(cfg, optim.build(cfg, worker.size, steps), ft, worker.rank == 0)
    optimizer.build(plan.variables())  # every stage's weights: their state survives switches
    clock = StepClock() if cfg.rank_health else None
    averager = GradientAverager(worker.size, plan.variables(), cfg.grad_accum, cfg.compression, clock)
    ema = EMA(plan.variables(), cfg.ema) if cfg.ema else None
    checkpoint = tf.train.Checkpoint(model=ft.model, optimizer=optimizer, **(
        {"ema": ema.state} if ema else {}), **({"grads": averager.state} if cfg.grad_accum > 1 else {}))

    initial_epoch, skip = 0, 0  # skip: steps of initial_epoch trained before a mid-epoch stop
    if resume_from:
        def restore():
            try:
                folder.checkpoints.restore(checkpoint, resume_from)
            except Exception as e:  # a checkpoint from another model or options
                raise DistftError(f"cannot resume from {resume_from} ({type(e).__name__}): "
                                  "it does not match this model and options; pass --overwrite "
                                  "to start again") from e
            state = folder.checkpoints.latest()[1]
            return state["epoch"], state.get("step_in_epoch", 0)
        initial_epoch, skip = worker.agree(restore)
        if skip >= steps:  # stopped after an epoch's last step, before its end
            initial_epoch, skip = initial_epoch + 1, 0
    if initial_epoch >= cfg.epochs:
        raise DistftError(f"the checkpoint in {cfg.output_dir} is at epoch {initial_epoch} and "
                          f"--epochs={cfg.epochs}: raise --epochs to train further")
    done = initial_epoch * steps + skip  # steps trained before this run
    profiler = _profiler(cfg, worker, folder.file("tensorboard"), done,
                         cfg.epochs * steps) if cfg.profile else []
    plan.apply(plan.index_at(initial_epoch))  # before compile: fit restores compile's trainable set
    if cfg.sync_bn:
        sync_bn.synchronize(ft.model, worker.hvd)
    compile_for_workers(ft.model, optimizer, ft, averager)
    # All workers start from rank 0's weights, optimizer state and averages (restored or fresh).
    worker.broadcast_variables(ft.model.variables + list(optimizer.variables) +
                               list(averager.state.variables) + (list(ema.state.variables) if ema else []))
    seeds.per_worker(ft.model, cfg.seed, worker.rank)  # dropout masks differ between workers
    if ema and not resume_from:
        ema.reset()

    placement = worker.gather(worker.placement)
    if worker.rank == 0:
        folder.prepare(cfg.overwrite)
        cfg.save(folder.file("config.yaml"))
        _log_start(cfg, worker, ft, train_data, total, steps, resume_from, (initial_epoch, skip), placement)
        feed.report()
        methods.describe(cfg, plan)
        if train_data.classes:  # the names of the model's outputs, in order
            folder.write_json("classes.json", {"class_names": train_data.classes})
            log.info("classes: %s", ", ".join(train_data.classes))

    fit_model = ft.model
    if cfg.cache_frozen:
        fit_model, streams = frozen_cache.cached(
            parts, ft, train_data, cfg, worker,
            lambda rest: compile_for_workers(rest, optimizer, ft, averager), steps)
    else:
        def streams(first: int, skip: int = 0) -> tf.data.Dataset:
            return train_data.stream(worker.rank, worker.size, cfg.batch_size, ft.input_shape,
                                     training=True, seed=cfg.seed, shuffle_buffer=cfg.shuffle_buffer,
                                     steps=steps, epochs=(first, cfg.epochs), skip=skip,
                                     preprocess=cfg.preprocess, augment=cfg.augment or (),
                                     cache=cfg.cache)
    stream = streams(initial_epoch, skip)
    build_compiled(fit_model, stream.element_spec)
    val_stream = _val_stream(ft.model, val_data, cfg, worker)
    validate = _validator(ft.model, val_data, val_stream, worker)
    before = validate() if validate else {}
    if before:
        log.info("validation before fine-tuning: %s", _fmt(before))

    timing = Timing(cfg.batch_size * worker.size)
    statistics = LayerStatistics(ft.model, worker)
    stop.checkpoint = checkpoint
    stop.store = folder.checkpoints if worker.rank == 0 else None
    stop.before_save = statistics.average
    unfreezing = StagedUnfreezing(plan)
    callbacks: list[keras.callbacks.Callback] = [  # statistics before validation and checkpoints
        unfreezing, statistics, EpochMetrics(worker), timing, stop]
    if clock:  # first: its batch hooks bracket the step alone
        health = RankHealth(clock, worker, placement, cfg.slow_rank, cfg.slow_rank_epochs)
        callbacks.insert(0, health)
    confusion = ConfusionMatrix(ft.model, val_stream, ft.classes, worker) \
        if validate and ft.classes else None
    if validate:
        callbacks.append(Validation(validate))
    if confusion:
        callbacks.append(confusion)
    if ema:
        ema.validate = validate
        callbacks.append(ema)
    if worker.rank == 0:
        tb = TensorBoardLogger(
            folder.file("tensorboard"), timing, cfg.log_every, cfg.to_dict(),
            {"params/trainable": ft.trainable_params, "params/frozen": ft.frozen_params,
             "workers": worker.size}, initial_step=done, class_names=train_data.classes)
        tb.write_graph(ft.model)
        if before and not initial_epoch:
            tb.write_validation(before, 0)
        unfreezing.scalars = tb.write_epoch
        if clock:
            health.report = tb.write_ranks
        if confusion:
            confusion.report = tb.write_confusion
        if cfg.histograms:
            callbacks.append(WeightChanges(ft.model, tb.train_writer, cfg.histograms, initial_epoch))
        callbacks += [tb, Progress(cfg.epochs, steps, cfg.log_every, bar=not worker.env.is_launched),
                      Checkpointing(folder.checkpoints, checkpoint,
                                    lambda epoch: {"stage": plan.index_at(epoch), **stop.state})]
    if confusion and before and not initial_epoch:
        confusion.measure(0)
    callbacks += profiler
    run_callbacks = ResumedRun(callbacks, fit_model, cfg.epochs, steps, skip)
    try:
        history = _fit(fit_model, stream, streams, run_callbacks, initial_epoch, skip, steps, cfg.epochs)
    except StopRequested:  # mid-epoch, checkpoint written: the partial epoch logs nothing
        if worker.rank == 0:
            tb.on_train_end()
    except tf.errors.OpError as e:  # e.g. a shard that vanished or broke mid-run
        raise DistftError(f"training failed: {type(e).__name__}: {root_cause(e.message)}",
                          exit_code=1, local=True) from e
    if stop.requested:
        epoch, step = stop.where
        where = f"epoch {epoch + 1} step {step + 1}" if step else f"epoch {epoch + 1}"
        raise Stopped(f"{stop.signal_name} received: stopped at epoch {epoch + (step > 0)}"
                      f"{f' step {step}' if step else ''} with a checkpoint in "
                      f"{folder.checkpoints.folder}; run the same command with --resume to "
                      f"continue from {where}")

    steps_run = worker.gather([s for s, _ in timing.epochs])  # per rank, per epoch
    per_rank = worker.gather(layer_checksums(ft.model))
    checksums = [combined_checksum(layers) for layers in per_rank]
    differing = differing_layers(per_rank)
    last = {k: float(v[-1]) for k, v in history.history.items()}
    metrics = {
        "train": {k: v for k, v in last.items() if not k.startswith("val_") and
                  k not in ("samples_per_sec", "step_time_ms", "epoch_seconds")},
        "validation": {k[4:]: v for k, v in last.items() if k.startswith("val_")},
        "validation_before": before,
        "epochs": cfg.epochs, "initial_epoch": initial_epoch, "steps_per_epoch": steps,
        "workers": worker.size, "launcher": worker.env.name, "steps_run": steps_run,
        "samples_per_sec": timing.samples_per_sec,
        # From the launch (a launcher's workers) or this call (in-process) to the first step's end.
        "first_step_seconds": (timing.first_step_at - (launched_at() if worker.env.is_launched else started)
                               if timing.first_step_at else None),
        "first_step_at": timing.first_step_at,
        "params": {"trainable": ft.trainable_params, "frozen": ft.frozen_params},
        "weights_checksums": checksums, "seconds": time.time() - started,
        # Updates applied over the whole run: fewer than steps / --grad_accum where mixed_float16
        # skipped steps whose gradients overflowed.
        "optimizer_updates": int(optimizer.iterations.numpy()),
    }
    if isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer):
        metrics["loss_scale"] = float(optimizer.dynamic_scale.numpy())
    if cfg.unfreeze_schedule:
        metrics["stages"] = unfreezing.record
    if ema:
        metrics["ema_checksums"] = worker.gather(ema.checksum(ft.model))
    if cfg.lora:
        metrics["lora"] = lora.summary(ft.model)
    if worker.rank == 0:
        path = folder.save_model(_plain(ft.model))
        if ema:
            with ema.swapped():
                folder.save_model(_plain(ft.model, f"{ft.model.name}_ema"), "model_ema.keras")
        if cfg.save_adapter:
            atomic_write(folder.file("adapter.npz"), lambda tmp: lora.save_adapter(ft.model, tmp))
        folder.write_json("metrics.json", metrics)
        if not differing:
            log.info("weights identical on all %d workers (checksum %s)", worker.size, checksums[0])
        first = metrics["first_step_seconds"]
        log.info("done in %.0fs (first step %s after launch), %.0f samples/s: %s", metrics["seconds"],
                 f"{first:.1f}s" if first is not None else "-", metrics["samples_per_sec"],
                 _fmt({**metrics["train"], **{f"val_{k}": v for k, v in metrics["validation"].items()}}))
        log.info("model: %s", path)
        log.info("watch: tensorboard --logdir %s --host 127.0.0.1 --port 6006", folder.file("tensorboard"))
    if differing:  # after the save: a run's result is never lost to this check
        raise DistftError(f"workers ended with different weights in {', '.join(differing[:8])}"
                          f"{' ...' if len(differing) > 8 else ''}: model.keras and the checkpoints "
                          "hold rank 0's; this is a bug in distft, please report it", exit_code=1)
    return metrics


def _fit(model: keras.Model, stream: tf.data.Dataset, streams, callbacks: ResumedRun,
         initial_epoch: int, skip: int, steps: int, epochs: int):
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


def compile_for_workers(model: keras.Model, optimizer: keras.optimizers.Optimizer,
                        ft: FineTuneModel, averager: GradientAverager) -> None:
    """Compile `model` with distft's train step, which averages gradients over the workers.

    Not XLA as a whole (Keras 3's default on GPUs): Horovod's ops have no XLA kernel."""
    model.compile(optimizer=optimizer, loss=ft.loss, loss_weights=ft.loss_weights, jit_compile=False,
                  metrics=compiled(ft))
    model.train_step = averager.train_step(model)


def _plain(model: keras.Model, name: Optional[str] = None) -> keras.Model:
    """`model` as a plain functional model, for saving: no distft train step or compile state,
    LoRA factors merged."""
    return lora.merged(keras.Model(_single(model.inputs), _single(model.outputs), name=name or model.name))


def _single(tensors: list) -> Any:
    """The one tensor of a one-element list (so the saved model's `output` is a tensor)."""
    return tensors[0] if len(tensors) == 1 else tensors


def _open_data(cfg: TrainConfig) -> tuple[DataSet, Optional[DataSet]]:
    train = DataSet.open(cfg.data, cfg.label, cfg.val_split, cfg.x_key, cfg.y_key, named_csv=True)
    if cfg.val_data:
        return train, DataSet.open(cfg.val_data, cfg.label, 0.0, cfg.x_key, cfg.y_key, flag="val_data",
                                   named_csv=True)
    return train, None


def _prepare(cfg: TrainConfig, data: DataSet) -> FineTuneModel:
    return prepare(cfg.model, cfg.num_classes, cfg.unfreeze, cfg.head_dropout, cfg.train_bn,
                   cfg.weights, cfg.input_shape, cfg.loss, cfg.metrics, cfg.seed,
                   cfg.unsafe_deserialization, cfg.precision, data.schema.target_shape, cfg.head,
                   cfg.loss_weights, cfg.lora, cfg.lora_layers, cfg.lora_alpha)


def check_fit(ft: FineTuneModel, data: DataSet, num_classes: Optional[int] = None) -> None:
    """The data's records and targets must fit the model's input and output; one error line
    naming both shapes otherwise."""
    schema, shape = data.schema, ft.input_shape
    if schema.named:
        for name, out in zip(ft.model.output_names, ft.model.outputs):
            if name in schema.outputs:
                f = next(f for f in schema.fields if f.name == name)
                _check_targets(tuple(out.shape), heads.output_activation(ft.model, name), f.shape,
                               f.is_float, data.counts.ranges.get(name) if data.counts else None, list(f.classes),
                               num_classes, f"--data's '{name}'", f" --head={name}")
        return
    if schema.x_kind == "float" and math.prod(shape) != schema.x_size:
        raise DistftError(f"--data records have {schema.x_size} features but the model's input "
                          f"{shape} needs {math.prod(shape)}: use data made for this model")
    if schema.is_image and len(shape) != 3:
        raise DistftError(f"--data holds images but the model's input is {shape}: "
                          "use an image model (H,W,C input)")
    if schema.x_kind == "pixels" and {schema.x_shape[-1], shape[-1]} not in ({1, 3}, {shape[-1]}):
        raise DistftError(f"--data images have {schema.x_shape[-1]} channels but the model's input "
                          f"{shape} has {shape[-1]}: use images with 1 or 3 channels")
    counts = data.counts
    _check_targets(tuple(ft.model.output_shape), heads.output_activation(ft.model), schema.y_shape,
                   schema.y_float, (counts.y_min, counts.y_max) if counts else None, data.classes,
                   num_classes, "--data")


def _check_targets(out: tuple, act: str, y_shape: tuple, y_float: bool, y_range: Optional[tuple],
                   classes: list[str], num_classes: Optional[int], what: str, head_flag: str = "") -> None:
    """Targets of `y_shape` per record, spanning `y_range`, must fit an output of shape `out`
    with activation `act`; `what` names the targets in errors, `head_flag` follows each
    --num_classes hint (the output's --head)."""
    if len(out) != 2:
        return
    k = out[-1]
    width = y_shape[-1] if y_shape else 1
    found = (f"{what} targets have shape {'(N, ' + ', '.join(map(str, y_shape)) + ')' if y_shape else '(N,)'} "
             f"but the model's output is {out}")
    if width > 1 and width != k:
        raise DistftError(f"{found}: give targets of width {k}" + (
            f", or pass --num_classes={width}{head_flag} for a new head" if act == "softmax" else ""))
    if width == 1 and k > 1 and act != "softmax":
        raise DistftError(f"{found}: a {act} output of {k} values needs targets of shape (N, {k})")
    if y_range is None or act not in ("softmax", "sigmoid"):
        return
    lo, hi = y_range
    if width > 1 or act == "sigmoid":
        if lo < 0 or hi > 1:
            raise DistftError(f"{what} targets span [{lo:g}, {hi:g}] but the "
                              f"model's {act} output needs one-hot or 0/1 targets in [0, 1]")
        return
    if classes and len(classes) != k:
        names = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise DistftError(f"the model outputs {k} classes but the data has {len(classes)} "
                          f"({names}): pass --num_classes={len(classes)}" + (
                              "" if num_classes is None else " for the new head"))
    if y_float:
        raise DistftError(f"{what} labels are floats but the model is a classifier: "
                          "write integer class labels")
    if lo < 0 or hi >= k:
        raise DistftError(f"{what} labels span [{lo:.0f}, {hi:.0f}] but the "
                          f"model has {k} classes: labels must be in [0, {k}); "
                          f"set --num_classes{head_flag} to match the data")


def _val_stream(model: keras.Model, val_data: Optional[DataSet], cfg: TrainConfig,
                worker: Worker) -> Optional[tf.data.Dataset]:
    if val_data is None:
        return None
    return val_data.stream(worker.rank, worker.size, cfg.batch_size, tuple(model.input_shape[1:]),
                           training=False, preprocess=cfg.preprocess)


def _validator(model: keras.Model, val_data: Optional[DataSet], stream: Optional[tf.data.Dataset],
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
    return [Profiler(log_dir if worker.rank == 0 else f"{log_dir}/rank_{worker.rank}", first, last, done)]


def _log_start(cfg, worker, ft, train_data, total, steps, resume_from, position, placement) -> None:
    log.info("%d worker(s) via %s, %s, %d thread(s) each (inter-op %s)", worker.size, worker.env.name,
             worker.device, worker.threads, worker.inter_op)
    log.info("placement: %s", ", ".join(f"rank {r} on {p}" for r, p in enumerate(placement)))
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
    log.info("data %s: %d records, %d steps/epoch of %d per worker (global batch %d%s)",
             cfg.data, total, steps, cfg.batch_size, cfg.batch_size * worker.size,
             f", {cfg.batch_size * worker.size * cfg.grad_accum} per update" if cfg.grad_accum > 1 else "")
    initial_epoch, skip = position
    if resume_from:
        log.info("resuming from %s: %d epoch(s) done, %d to go%s", resume_from, initial_epoch,
                 cfg.epochs - initial_epoch,
                 f" (epoch {initial_epoch + 1} from step {skip + 1} of {steps})" if skip else "")


def _fmt(metrics: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())

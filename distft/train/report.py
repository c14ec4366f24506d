"""What a run tells and leaves: rank 0's start lines and run folder (`announce`), then the end
(`finish`): the workers' agreement checked, the model, metrics.json and the summary.

Example (under `horovodrun -np 2`):
    announce(setup, trainee, worker, state, placement)
    metrics = finish(setup, trainee, worker, state, history, cbs)
"""
from __future__ import annotations

import time
from typing import Any, Optional

import keras

from distft import log
from distft.errors import DistftError
from distft.files import atomic_write
from distft.launch.environment import launched_at
from distft.model import head as heads
from distft.model import lora, objective
from distft.model.prepare import combined_checksum, layer_checksums
from distft.train import methods
from distft.train.callbacks.agreed_stop import stop_line
from distft.train.metrics import objective as objective_for
from distft.train.run_callbacks import Callbacks, fmt
from distft.train.runtime import Worker
from distft.train.setup import Setup
from distft.train.state import RunState
from distft.train.trainee import Trainee, saved_model


def announce(setup: Setup, trainee: Trainee, worker: Worker, state: RunState, placement: list[str]) -> None:
    """Rank 0 prepares the run folder, writes config.yaml (the options as run: the
    `--preprocess` fed) and logs what the run does."""
    if worker.rank != 0:
        return
    cfg, folder = setup.cfg, setup.folder
    folder.prepare(cfg.overwrite)
    trainee.cfg.save(folder.file("config.yaml"))
    _log_start(setup, trainee, worker, state, placement)
    trainee.feed.report()
    methods.describe(cfg, trainee.plan, trainee.averager.jit)
    if trainee.train_data.classes:  # the names of the model's outputs, in order
        folder.write_json("classes.json", {"class_names": trainee.train_data.classes})
        log.info("classes: %s", ", ".join(trainee.train_data.classes))


def finish(setup: Setup, trainee: Trainee, worker: Worker, state: RunState, history, cbs: Callbacks,
           extra: Optional[dict] = None) -> dict[str, Any]:
    """Check that the workers agree, then rank 0 saves the model and metrics.json (with
    `extra`) and logs the summary; the metrics, the same on every worker."""
    cfg, ft, timing, position = setup.cfg, trainee.ft, cbs.timing, state.position
    steps_run = worker.gather([s for s, _ in timing.epochs])  # per rank, per epoch
    per_rank = worker.gather(layer_checksums(ft.model))
    checksums = [combined_checksum(layers) for layers in per_rank]
    differing = differing_layers(per_rank)
    last = {k: float(v[-1]) for k, v in history.history.items()}
    metrics = {
        "train": {k: v for k, v in last.items() if not k.startswith("val_") and
                  k not in ("samples_per_sec", "step_time_ms", "epoch_seconds")},
        "validation": {k[4:]: v for k, v in last.items() if k.startswith("val_")},
        "validation_before": cbs.before,
        "epochs": cfg.epochs, "initial_epoch": position.epoch, "steps_per_epoch": position.steps,
        "workers": worker.size, "launcher": worker.env.name, "steps_run": steps_run,
        "samples_per_sec": timing.samples_per_sec,
        # From the launch (a launcher's workers) or this call (in-process) to the first step's end.
        "first_step_seconds": (timing.first_step_at - (launched_at() if worker.env.is_launched else setup.started)
                               if timing.first_step_at else None),
        "first_step_at": timing.first_step_at,
        "params": {"trainable": ft.trainable_params, "frozen": ft.frozen_params},
        "weights_checksums": checksums, "seconds": time.time() - setup.started,
        # Updates applied over the whole run: fewer than steps / --grad_accum where mixed_float16
        # skipped steps whose gradients overflowed.
        "optimizer_updates": int(trainee.optimizer.iterations.numpy()),
    }
    if isinstance(trainee.optimizer, keras.mixed_precision.LossScaleOptimizer):
        metrics["loss_scale"] = float(trainee.optimizer.dynamic_scale.numpy())
    if cfg.unfreeze_schedule:
        metrics["stages"] = cbs.unfreezing.record
    if trainee.ema:
        metrics["ema_checksums"] = worker.gather(trainee.ema.checksum(ft.model))
    if cfg.lora:
        metrics["lora"] = lora.summary(ft.model)
    if cbs.agreed and cbs.agreed.stopped:
        metrics["early_stop"] = cbs.agreed.stopped
    if cbs.best and cbs.best.record:
        metrics["best"] = cbs.best.record
    metrics.update(extra or {})
    if worker.rank == 0:
        if "best" in metrics:  # after the workers' weights were compared: model.keras is the best epoch's
            cbs.best.restore()
        _save(setup, trainee, worker, metrics, not differing)
    if differing:  # after the save: a run's result is never lost to this check
        raise DistftError(f"workers ended with different weights in {', '.join(differing[:8])}"
                          f"{' ...' if len(differing) > 8 else ''}: model.keras and the checkpoints "
                          "hold rank 0's; this is a bug in distft, please report it", exit_code=1)
    return metrics


def differing_layers(per_rank: list[dict[str, str]]) -> list[str]:
    """The layers whose weights differ between workers, given each worker's layer checksums."""
    return [name for name in per_rank[0] if any(r.get(name) != per_rank[0][name] for r in per_rank[1:])]


def _save(setup: Setup, trainee: Trainee, worker: Worker, metrics: dict[str, Any], identical: bool) -> None:
    """Rank 0: the model (and EMA model, adapter), metrics.json and the summary lines."""
    cfg, ft, folder = setup.cfg, trainee.ft, setup.folder
    path = folder.save_model(_plain(saved_model(setup, trainee)))
    if trainee.ema:
        with trainee.ema.swapped():
            folder.save_model(_plain(saved_model(setup, trainee), f"{ft.model.name}_ema"), "model_ema.keras")
    if cfg.save_adapter:
        atomic_write(folder.file("adapter.npz"), lambda tmp: lora.save_adapter(ft.model, tmp))
    folder.write_json("metrics.json", metrics)
    if identical:
        log.info("weights identical on all %d workers (checksum %s)", worker.size,
                 metrics["weights_checksums"][0])
    first = metrics["first_step_seconds"]
    log.info("done in %.0fs (first step %s after launch), %.0f samples/s: %s", metrics["seconds"],
             f"{first:.1f}s" if first is not None else "-", metrics["samples_per_sec"],
             fmt({**metrics["train"], **{f"val_{k}": v for k, v in metrics["validation"].items()}}))
    if "early_stop" in metrics:
        log.info("%s", stop_line(metrics["early_stop"]))
    best = metrics.get("best")
    log.info("model: %s%s", path, f" (the weights of epoch {best['epoch']}, the best {best['monitor']}: "
             f"{best['value']:.4f})" if best else "")
    log.info("watch: tensorboard --logdir %s --host 127.0.0.1 --port 6006", folder.file("tensorboard"))


def _plain(model: keras.Model, name: Optional[str] = None) -> keras.Model:
    """`model` for saving: no distft train step or compile state, LoRA factors merged, of its
    own class if it rebuilds itself from its config (a Keras Hub task), see model/lora.py."""
    return lora.plain(model, name)


def _log_start(setup: Setup, trainee: Trainee, worker: Worker, state: RunState, placement: list[str]) -> None:
    cfg, ft, position = setup.cfg, trainee.ft, state.position
    log.info("%d worker(s) via %s, %s, %s thread(s) each (inter-op %s)", worker.size, worker.env.name,
             worker.device, worker.threads or "TensorFlow's default", worker.inter_op)
    log.info("placement: %s", ", ".join(f"rank {r} on {p}" for r, p in enumerate(placement)))
    log.info("horovod: %s", " ".join(f"{k}={v}" for k, v in worker.horovod.items()))
    log.info("model %s: %d layers trainable (%s)", cfg.model, len(ft.unfrozen),
             ", ".join(ft.unfrozen[-6:]) + (" ..." if len(ft.unfrozen) > 6 else ""))
    moving = ft.statistics_params
    log.info("weights: %d trainable, %d frozen%s", ft.trainable_params, ft.frozen_params,
             f", {moving} moving statistics (averaged over the workers every epoch)" if moving else "")
    if trainee.averager.tokens:
        _log_token_objective(ft, objective_for(ft, cfg, tokens=True)["weighted_metrics"])
    else:
        _log_objective(ft, setup.train_data.layout.describe_y())
    log.info("data %s: %d records, %d steps/epoch of %d per worker (global batch %d%s%s)",
             cfg.data, trainee.records, position.steps, cfg.batch_size, cfg.batch_size * worker.size,
             f", {cfg.batch_size * worker.size * cfg.grad_accum} per update" if cfg.grad_accum > 1 else "",
             f", {cfg.steps_per_execution} steps per execution" if cfg.steps_per_execution > 1 else "")
    if setup.resume_from:
        log.info("resuming from %s: %d epoch(s) done, %d to go (from %s)", setup.resume_from,
                 position.epoch, cfg.epochs - position.epoch, position.next_step())


def _log_token_objective(ft, metrics: list) -> None:
    """A causal LM's objective line: its loss, over the real tokens, and its per-token metrics."""
    where = f" from {objective.FROM_FILE}" if ft.origin.get("loss") == objective.FROM_FILE else ""
    log.info("objective: %s%s, the mean over every worker's real tokens (padding and prompts "
             "weigh 0); metrics per token: %s (--loss and --metrics to change)",
             objective.describe(ft.loss), where, ", ".join(objective.describe(m) for m in metrics))


def _log_objective(ft, targets: str) -> None:
    """The objective line: each part of the loss and metrics, and where it came from (the
    model file, or the head's defaults for `targets`, a shape)."""
    def told(part: str, output: Optional[str] = None) -> str:
        where = ft.origin.get(part, {})
        where = where.get(output, "") if isinstance(where, dict) else where
        return f" from {objective.FROM_FILE}" if where == objective.FROM_FILE else ""

    def listed(items: list) -> str:
        return ", ".join(objective.describe(m) for m in items) or "none"

    several = isinstance(ft.loss, dict)
    for name in (ft.loss if several else [None]):
        loss = ft.loss[name] if several else ft.loss
        act = heads.output_activation(ft.model, name)
        if objective.reads_logits(loss) and act != "linear":
            log.warning("the loss %s%s applies %s to logits, and the model's output%s is already "
                        "a %s: pass the loss without from_logits", objective.describe(loss),
                        told("loss", name), objective.reads_logits(loss),
                        f" {name}" if name else "", act)
    if several:
        weighted = ft.weighted_metrics if isinstance(ft.weighted_metrics, dict) else {}
        log.info("objective per output: %s", "; ".join(
            f"{n}: {objective.describe(ft.loss[n])}{told('loss', n)} (weight "
            f"{(ft.loss_weights or {}).get(n, 1.0):g}{told('loss_weights', n)}), metrics "
            f"{listed(ft.metrics[n])}{told('metrics', n)}" + (
                f", weighted metrics {listed(weighted[n])}{told('weighted_metrics', n)}"
                if weighted.get(n) else "") for n in ft.loss))
        return
    origins = {ft.origin.get(part, "") for part in ("loss", "metrics")}
    log.info("objective: %s%s, metrics %s%s%s%s", objective.describe(ft.loss), told("loss"),
             listed(ft.metrics), told("metrics"),
             f", weighted metrics {listed(ft.weighted_metrics)}{told('weighted_metrics')}"
             if ft.weighted_metrics else "",
             f" (for targets of shape {targets}; --loss to change)" if ft.origin.get("loss", "") == ""
             else " (--loss and --metrics to change)" if objective.FROM_FILE in origins else "")

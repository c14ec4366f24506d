"""The fine-tuning methods a run can add (see model/stages.py, model/precision.py,
train/layerwise.py, callbacks/unfreezing.py and callbacks/ema.py), set up from the config.

Example (inside trainer.run, after `prepare`):
    plan = worker.all_ok(lambda: methods.plan(ft, cfg))      # specs checked on every rank
    optimizer = methods.optimizer(cfg, optim.build(...), ft)  # loss scaling, --lr_mult
    ft.model.compile(optimizer=optimizer, ...)
    optimizer.build(plan.variables())
"""
from __future__ import annotations

import keras
import tensorflow as tf

from distft import log
from distft.config import TrainConfig
from distft.model import lora, stages, unfreeze as unfreezing
from distft.model.prepare import FineTuneModel
from distft.train.layerwise import scale_updates


def plan(ft: FineTuneModel, cfg: TrainConfig) -> stages.Plan:
    """The stages bound to the model; also checks --lr_mult's specs against it."""
    schedule = stages.parse_schedule(cfg.unfreeze_schedule) if cfg.unfreeze_schedule else None
    result = stages.Plan(ft, schedule, cfg.train_bn)
    if cfg.lr_mult:
        stages.lr_groups(ft, stages.parse_lr_mult(cfg.lr_mult), cfg.train_bn)
    return result


def optimizer(cfg: TrainConfig, opt: keras.optimizers.Optimizer, ft: FineTuneModel,
              announce: bool) -> keras.optimizers.Optimizer:
    """`opt` with Keras 3's loss scaling for mixed_float16 and --lr_mult's update scaling.

    The train step (train/step.py) averages the scaled gradients over the workers before the
    LossScaleOptimizer sees them, so every worker unscales the same values and skips (or
    applies) the same steps.
    """
    if cfg.precision == "mixed_float16":
        opt = keras.mixed_precision.LossScaleOptimizer(opt)
    if cfg.lr_mult:
        groups = stages.lr_groups(ft, stages.parse_lr_mult(cfg.lr_mult), cfg.train_bn)
        scale_updates(opt, {id(v): factor for _, factor, _, vs in groups for v in vs})
        if announce:
            for spec, factor, names, vs in groups:
                log.info("lr x%g for %s: %d layers, %d weights (%s)", factor, spec, len(names),
                         unfreezing.count_params(vs),
                         ", ".join(names[:6]) + (" ..." if len(names) > 6 else ""))
    return opt


def use_xla(jit: str, model: keras.Model, sync_bn: bool) -> bool:
    """Whether the step's compute is compiled with XLA (train/step.py): `on`, or `auto` when
    TensorFlow sees a GPU and every layer supports XLA (Keras 3's own `jit_compile="auto"`).
    Never with --sync_bn, whose allreduce in the forward pass has no XLA kernel."""
    if jit == "auto":
        return (not sync_bn and bool(tf.config.list_logical_devices("GPU"))
                and all(getattr(layer, "supports_jit", True) for layer in model._flatten_layers()))
    return jit == "on"


def describe(cfg: TrainConfig, the_plan: stages.Plan, xla: bool) -> None:
    """Rank 0's start-of-run lines about the methods in use (`xla`: use_xla's answer)."""
    if cfg.unfreeze_schedule:
        log.info("staged unfreezing: %s; now %s", ", ".join(
            f"epoch {s.epoch + 1}: {s.spec}" for s in the_plan.stages),
            the_plan.describe(the_plan.current))
    if cfg.precision != "float32" or xla:
        log.info("precision %s%s", cfg.precision,
                 f", XLA (--jit={cfg.jit}): forward, backward and update compiled" if xla else "")
    if cfg.lora:
        info = lora.summary(the_plan.ft.model)
        log.info("LoRA rank %d, alpha %g, on %d layers (%s): %d factor weights train, the layers' "
                 "own weights stay frozen; model.keras gets the factors merged%s", info["rank"],
                 info["alpha"], len(info["layers"]), ", ".join(info["layers"][:6]) +
                 (" ..." if len(info["layers"]) > 6 else ""), info["factor_params"],
                 ", adapter.npz the factors alone" if cfg.save_adapter else "")
    if cfg.quantize:
        quantized = [l.path for l in the_plan.ft.model._flatten_layers()
                     if getattr(l, "quantization_mode", None) == cfg.quantize]
        log.info("%s: %d frozen layers quantized (%s), in training only: model.keras holds the "
                 "model file's float weights (the factors merged)", cfg.quantize, len(quantized),
                 ", ".join(quantized[:4]) + (" ..." if len(quantized) > 4 else ""))
    if cfg.ema:
        log.info("EMA of the weights, decay %g: validated as val_ema_*, saved as model_ema.keras",
                 cfg.ema)

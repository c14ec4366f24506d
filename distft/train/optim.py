"""The optimizer: learning-rate scaling, warm-up and schedule. A plain Keras 3 optimizer: the
gradients it receives are already averaged over the workers (train/step.py).

Example:
    opt = build(cfg, workers=2, steps_per_epoch=100)   # Adam(WarmupSchedule(...))
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from distft.config import TrainConfig


@keras.saving.register_keras_serializable("distft")
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `start` to `peak` over `warmup` steps, then constant or cosine to 0;
    `offset` is added to the step (an elastic job that changed size keeps its place in the
    schedule, counted in its new steps).

    Example:
        lr = WarmupSchedule(start=1e-3, peak=2e-3, warmup=100, total=1000, cosine=True)
        lr(0), lr(100), lr(1000)    # 1e-3, 2e-3, 0.0
    """

    def __init__(self, start: float, peak: float, warmup: int, total: int, cosine: bool = False,
                 offset: float = 0.0):
        self.start, self.peak, self.warmup, self.total, self.cosine = start, peak, warmup, total, cosine
        self.offset = offset

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + self.offset
        warm = self.start + (self.peak - self.start) * step / max(1, self.warmup)
        rest = tf.constant(self.peak, tf.float32)
        if self.cosine:
            span = max(1, self.total - self.warmup)
            done = tf.clip_by_value((step - self.warmup) / span, 0.0, 1.0)
            rest = 0.5 * self.peak * (1.0 + tf.cos(math.pi * done))
        return tf.where(step < self.warmup, warm, rest)

    def get_config(self) -> dict:
        return {"start": self.start, "peak": self.peak, "warmup": self.warmup,
                "total": self.total, "cosine": self.cosine, "offset": self.offset}


def schedule(cfg: TrainConfig, workers: int, steps_per_epoch: int, offset: float = 0.0) -> WarmupSchedule:
    """The schedule over optimizer updates: one every `grad_accum` steps."""
    updates = steps_per_epoch / cfg.grad_accum
    peak = cfg.lr * (workers if cfg.scale_lr else 1)
    return WarmupSchedule(start=cfg.lr, peak=peak, warmup=int(cfg.warmup_epochs * updates),
                          total=int(cfg.epochs * updates), cosine=cfg.schedule == "cosine", offset=offset)


def offset(cfg: TrainConfig, steps_per_epoch: int, epochs_done: float, updates_done: int) -> float:
    """The schedule offset that puts update `updates_done` at `epochs_done` epochs of
    `steps_per_epoch` steps (0 when they agree)."""
    return epochs_done * steps_per_epoch / cfg.grad_accum - updates_done


def build(cfg: TrainConfig, workers: int, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    """The optimizer of `cfg.optimizer` with the scaled, scheduled learning rate."""
    lr = schedule(cfg, workers, steps_per_epoch)
    return {
        "adam": lambda: keras.optimizers.Adam(lr),
        "adamw": lambda: keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay),
        "sgd": lambda: keras.optimizers.SGD(lr, momentum=cfg.momentum),
        "rmsprop": lambda: keras.optimizers.RMSprop(lr),
    }[cfg.optimizer]()

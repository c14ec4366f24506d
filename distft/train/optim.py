"""The optimizer: learning-rate scaling, warm-up and schedule, wrapped by Horovod.

Example:
    opt = build(cfg, workers=2, steps_per_epoch=100)   # hvd.DistributedOptimizer(Adam(...))
"""
from __future__ import annotations

import math

import tensorflow as tf

from distft.config import TrainConfig


@tf.keras.saving.register_keras_serializable("distft")
class WarmupSchedule(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from `start` to `peak` over `warmup` steps, then constant or cosine to 0.

    Example:
        lr = WarmupSchedule(start=1e-3, peak=2e-3, warmup=100, total=1000, cosine=True)
        lr(0), lr(100), lr(1000)    # 1e-3, 2e-3, 0.0
    """

    def __init__(self, start: float, peak: float, warmup: int, total: int, cosine: bool = False):
        self.start, self.peak, self.warmup, self.total, self.cosine = start, peak, warmup, total, cosine

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.start + (self.peak - self.start) * step / max(1, self.warmup)
        rest = tf.constant(self.peak, tf.float32)
        if self.cosine:
            span = max(1, self.total - self.warmup)
            done = tf.clip_by_value((step - self.warmup) / span, 0.0, 1.0)
            rest = 0.5 * self.peak * (1.0 + tf.cos(math.pi * done))
        return tf.where(step < self.warmup, warm, rest)

    def get_config(self) -> dict:
        return {"start": self.start, "peak": self.peak, "warmup": self.warmup,
                "total": self.total, "cosine": self.cosine}


def schedule(cfg: TrainConfig, workers: int, steps_per_epoch: int) -> WarmupSchedule:
    peak = cfg.lr * (workers if cfg.scale_lr else 1)
    return WarmupSchedule(start=cfg.lr, peak=peak, warmup=int(cfg.warmup_epochs * steps_per_epoch),
                          total=cfg.epochs * steps_per_epoch, cosine=cfg.schedule == "cosine")


def build(cfg: TrainConfig, workers: int, steps_per_epoch: int):
    """A Horovod DistributedOptimizer: allreduce of trainable gradients, every grad_accum steps."""
    import horovod.tensorflow.keras as hvd

    _trace_horovod_as_is()
    lr = schedule(cfg, workers, steps_per_epoch)
    base = {
        "adam": lambda: tf.keras.optimizers.Adam(lr),
        "adamw": lambda: tf.keras.optimizers.AdamW(lr, weight_decay=cfg.weight_decay),
        "sgd": lambda: tf.keras.optimizers.SGD(lr, momentum=cfg.momentum),
        "rmsprop": lambda: tf.keras.optimizers.RMSprop(lr),
    }[cfg.optimizer]()
    compression = hvd.Compression.fp16 if cfg.compression == "fp16" else hvd.Compression.none
    return hvd.DistributedOptimizer(base, compression=compression,
                                    backward_passes_per_step=cfg.grad_accum,
                                    average_aggregated_gradients=True)


def _trace_horovod_as_is() -> None:
    """Keep autograph out of Horovod's gradient code, as TensorFlow keeps it out of its own.

    That code is plain graph code (it also serves TF1 graphs, which have no autograph), and
    converting it cost 3.8 s of MobileNetV2's 25 s to the first step on 2 workers here.
    """
    from tensorflow.python.autograph.core import config  # TF's own tests extend it the same way

    rule = config.DoNotConvert("horovod")
    if str(rule) not in map(str, config.CONVERSION_RULES):
        config.CONVERSION_RULES = (rule, *config.CONVERSION_RULES)

"""Rank 0's TensorBoard log: scalars per epoch and every `log_every` steps, hyper-parameters once.

Runs `train/` and `validation/` under the log folder hold the same tags (`epoch_loss`,
`epoch_accuracy`, ...), so TensorBoard draws train and validation on one chart. Per-epoch tags
start with `epoch_` (step = epoch), per-step ones with `batch_` (step = global step):
loss and metrics, learning rate, samples/s over all workers, step time.

Example:
    TensorBoardLogger("runs/a/tensorboard", timing, log_every=50, hparams=cfg.to_dict(),
                      info={"params/trainable": 1234, "workers": 2})
"""
from __future__ import annotations

import keras
import tensorflow as tf

from distft.train.callbacks.timing import Timing


class TensorBoardLogger(keras.callbacks.Callback):
    def __init__(self, log_dir: str, timing: Timing, log_every: int, hparams: dict,
                 info: dict[str, float], initial_step: int = 0):
        super().__init__()
        self.timing, self.log_every = timing, log_every
        self.hparams, self.info = hparams, info
        self.train_writer = tf.summary.create_file_writer(f"{log_dir}/train")
        self.val_writer = tf.summary.create_file_writer(f"{log_dir}/validation")
        self.step = initial_step

    def on_train_begin(self, logs=None):
        from tensorboard.plugins.hparams import api as hp

        with self.train_writer.as_default():
            hp.hparams({k: v if isinstance(v, (bool, int, float, str)) else str(v)
                        for k, v in self.hparams.items()})
            for tag, value in self.info.items():
                tf.summary.scalar(tag, value, step=self.step)
        self.train_writer.flush()

    def write_validation(self, metrics: dict[str, float], step: int) -> None:
        """Validation metrics measured outside an epoch (before training starts)."""
        with self.val_writer.as_default():
            for k, v in metrics.items():
                tf.summary.scalar(f"epoch_{k}", v, step=step)

    def write_epoch(self, scalars: dict[str, float], epoch: int) -> None:
        """Per-epoch scalars other callbacks report (as `epoch_<name>` in the train run)."""
        with self.train_writer.as_default():
            for k, v in scalars.items():
                tf.summary.scalar(f"epoch_{k}", v, step=epoch + 1)

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % self.log_every or not logs:
            return
        rate, ms = self.timing.window()
        with self.train_writer.as_default():
            for k, v in logs.items():
                tf.summary.scalar(f"batch_{k}", float(v), step=self.step)
            tf.summary.scalar("batch_learning_rate", self._lr(), step=self.step)
            tf.summary.scalar("batch_samples_per_sec", rate, step=self.step)
            tf.summary.scalar("batch_step_time_ms", ms, step=self.step)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        with self.train_writer.as_default():
            for k, v in logs.items():
                if not k.startswith("val_"):
                    tf.summary.scalar(f"epoch_{k}", float(v), step=epoch + 1)
            tf.summary.scalar("epoch_learning_rate", self._lr(), step=epoch + 1)
        self.write_validation({k[4:]: float(v) for k, v in logs.items() if k.startswith("val_")},
                              epoch + 1)
        self.train_writer.flush()
        self.val_writer.flush()

    def on_train_end(self, logs=None):
        self.train_writer.close()
        self.val_writer.close()

    def _lr(self) -> float:
        opt = self.model.optimizer
        lr = opt.learning_rate
        return float(lr(opt.iterations) if callable(lr) else lr)

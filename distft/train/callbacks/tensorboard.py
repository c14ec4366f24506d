"""Rank 0's TensorBoard log: scalars per epoch and every `log_every` steps, hyper-parameters,
the resolved config (Text tab) and the model's graph once; what other callbacks measure.

Runs `train/` and `validation/` under the log folder hold the same tags (`epoch_loss`,
`epoch_accuracy`, ...), so TensorBoard draws train and validation on one chart. Per-epoch tags
start with `epoch_` (step = epoch), per-step ones with `batch_` (step = global step):
loss and metrics, learning rate, samples/s over all workers, step time. With
`--steps_per_execution=N` they are written at the first execution end at or after each
multiple of `log_every`, under that step.

Per-rank health goes to one run per rank, `rank_<r>/`, with the same tags (`ranks/busy_ms`,
`ranks/allreduce_wait_ms`, `ranks/input_wait_ms`, `ranks/step_time_ms`, `ranks/input_share`),
so one chart overlays the ranks (also in the Custom Scalars tab); the train run gets
`epoch_rank_spread` (slowest busy rank over the median). Validation gets a `confusion_matrix`
image and `class_accuracy/<class>` scalars.

Example:
    TensorBoardLogger("runs/a/tensorboard", timing, log_every=50, hparams=cfg.to_dict(),
                      info={"params/trainable": 1234, "workers": 2}, class_names=["cat", "dog"])
"""
from __future__ import annotations

from typing import Optional

import keras
import numpy as np
import tensorflow as tf

from distft import log
from distft.train.callbacks import confusion, rank_health
from distft.train.callbacks.steps import StepCounter, crossed
from distft.train.callbacks.timing import Timing

RANK_TAGS = {"busy_ms": "busy (computing), ms per step",
             "allreduce_wait_ms": "gradient allreduce wait, ms per step",
             "input_wait_ms": "waiting for the next batch, ms per step",
             "step_time_ms": "step time, ms", "input_share": "input-bound share of the step",
             "over_median_ms": "straggling: busy ms per step over the median rank's",
             "over_own_best": "straggling: busy time over the rank's own best epoch"}


class TensorBoardLogger(StepCounter):
    def __init__(self, log_dir: str, timing: Timing, log_every: int, hparams: dict,
                 info: dict[str, float], initial_step: int = 0,
                 class_names: Optional[list[str]] = None):
        super().__init__()
        self.log_dir, self.timing, self.log_every = log_dir, timing, log_every
        self.hparams, self.info, self.class_names = hparams, info, class_names or []
        self.train_writer = tf.summary.create_file_writer(f"{log_dir}/train")
        self.val_writer = tf.summary.create_file_writer(f"{log_dir}/validation")
        self.rank_writers: list[tf.summary.SummaryWriter] = []
        self.step = initial_step

    def on_train_begin(self, logs=None):
        from tensorboard.plugins.hparams import api as hp

        with self.train_writer.as_default():
            hp.hparams({k: v if isinstance(v, (bool, int, float, str)) else str(v)
                        for k, v in self.hparams.items()})
            for tag, value in self.info.items():
                tf.summary.scalar(tag, value, step=self.step)
            tf.summary.text("config", _markdown(self.hparams), step=self.step)
        self.train_writer.flush()

    def write_graph(self, model: keras.Model) -> None:
        """The model's inference graph (Graphs tab)."""
        specs = [tf.TensorSpec(t.shape, t.dtype) for t in model.inputs]
        names = [t.name for t in model.inputs]  # by name: a Keras Hub model takes a dict
        try:
            graph = tf.function(lambda *x: model(dict(zip(names, x)) if len(x) > 1 else x[0],
                                                 training=False)).get_concrete_function(*specs).graph
        except Exception as e:  # a model that only runs on its own input structure: no graph view
            log.warning("TensorBoard: the model's graph is not written (%s: %s)", type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
            return
        with self.train_writer.as_default():
            tf.summary.graph(graph)

    def write_ranks(self, ranks: list[dict[str, float]], epoch: int) -> None:
        """Each rank's health figures (RankHealth's report) at the end of `epoch`."""
        if not self.rank_writers:
            self.rank_writers = [tf.summary.create_file_writer(f"{self.log_dir}/rank_{r}")
                                 for r in range(len(ranks))]
            self._write_layout()
        for writer, figures in zip(self.rank_writers, ranks):
            with writer.as_default():
                for name, value in figures.items():
                    tf.summary.scalar(f"ranks/{name}", value, step=epoch + 1)
            writer.flush()
        self.write_epoch({"rank_spread": rank_health.spread(ranks)}, epoch)

    def _write_layout(self) -> None:
        """A Custom Scalars chart per rank figure, every rank's line on it, and the spread."""
        from tensorboard.plugins.custom_scalar import layout_pb2, summary

        def chart(title: str, tag: str) -> layout_pb2.Chart:
            return layout_pb2.Chart(title=title, multiline=layout_pb2.MultilineChartContent(tag=[tag]))

        charts = [chart(title, rf"^ranks/{name}$") for name, title in RANK_TAGS.items()]
        charts.append(chart("slowest rank's busy time / median rank's", r"^epoch_rank_spread$"))
        with self.train_writer.as_default():
            tf.summary.experimental.write_raw_pb(summary.pb(layout_pb2.Layout(category=[
                layout_pb2.Category(title="ranks", chart=charts)])).SerializeToString(), step=0)

    def write_confusion(self, counts: np.ndarray, step: int) -> None:
        """A validation's confusion matrix (ConfusionMatrix's report) and per-class accuracy."""
        names = self.class_names if len(self.class_names) == len(counts) else \
            [str(i) for i in range(len(counts))]
        png = confusion.render(counts, names, f"validation, epoch {step}")
        with self.val_writer.as_default():
            tf.summary.image("confusion_matrix", tf.image.decode_png(png)[None], step=step)
            if len(counts) <= confusion.MAX_CLASS_SCALARS:
                for name, accuracy in zip(names, confusion.per_class_accuracy(counts)):
                    if accuracy is not None:
                        tf.summary.scalar(f"class_accuracy/{name}", accuracy, step=step)
        self.val_writer.flush()

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
        ran = self.ran(batch)
        self.step += ran
        if not crossed(self.step, ran, self.log_every) or not logs:
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
        for writer in [self.train_writer, self.val_writer, *self.rank_writers]:
            writer.close()

    def _lr(self) -> float:
        opt = self.model.optimizer
        lr = opt.learning_rate
        return float(lr(opt.iterations) if callable(lr) else lr)


def _markdown(values: dict) -> str:
    """Options as a two-column Markdown table."""
    rows = [f"| {k} | {'' if v is None else str(v).replace('|', chr(92) + '|')} |"
            for k, v in values.items()]
    return "\n".join(["| option | value |", "|---|---|", *rows])

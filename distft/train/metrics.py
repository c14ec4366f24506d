"""Keras metrics over all workers, exact: every metric's state (sums and counts) is summed
over the workers and the results are read from the sums, as one worker that saw every
worker's records would read them. Also: metric names made Keras metrics for a model's head.

Example:
    model.compile(loss=..., metrics=keras_metrics(["auc", "f1_score"], model, target_shape=()))
    model.compile(loss=ft.loss, loss_weights=ft.loss_weights, metrics=compiled(ft))  # any outputs
    model.compile(optimizer=opt, **objective(ft, cfg))     # the same under the run's options
    model.evaluate(my_share)
    summed_results(model.metrics, worker, "val")   # {"loss": ..., "auc": ..., "f1_score": ...}
"""
from __future__ import annotations

from typing import Any, Optional, Sequence, Union

import keras
import tensorflow as tf

from distft.config import TrainConfig
from distft.errors import DistftError
from distft.model import objective as model_objective
from distft.train.runtime import Worker

# Names Keras resolves for class-id targets itself (by the targets' and outputs' shapes).
_SPARSE_AWARE = ("accuracy", "acc", "crossentropy", "ce")


def keras_metrics(names: Sequence[Any], model: keras.Model, target_shape: tuple,
                  output: Optional[str] = None, loss: Any = None) -> list[Union[str, keras.metrics.Metric]]:
    """Keras metrics for `names` on `model` (on its output `output`, with several), whose
    targets have `target_shape` per record and whose loss is `loss`. A name may also be a Keras
    metric object or function (made with arguments, or rebuilt from the model file): each
    compile gets a fresh copy.

    Under a softmax head (or logits that `loss` reads through softmax) with class-id targets, a
    metric that compares rows (auc, precision, recall, f1_score, mae, ...: Keras 3 has no
    sparse variant of these) sees the ids one-hot. F1 and F-beta scores are averaged over the
    classes ("macro") so that each is one number; they threshold at 0.5 unless the head is a
    softmax (then the top class counts).
    """
    softmax = model_objective.activation(model, loss, output) == "softmax"
    width = model.outputs[list(model.output_names).index(output)].shape[-1] if output else \
        model.output_shape[-1]
    class_ids = softmax and not (target_shape and target_shape[-1] > 1)
    metrics: list[Union[str, keras.metrics.Metric]] = []
    for name in names:
        if not isinstance(name, str):
            metric = _fresh(name)
            sparse = type(metric).__name__.startswith("Sparse") or \
                getattr(getattr(metric, "_fn", None), "__name__", "").startswith("sparse_")
            metrics.append(_OneHot(metric, int(width)) if class_ids and not sparse else metric)
            continue
        if name.lower() in _SPARSE_AWARE or name.lower().startswith("sparse_"):
            metrics.append(name)
            continue
        try:
            metric = keras.metrics.get(name)
        except ValueError:
            raise DistftError(f"--metrics: {name} is not a Keras metric: use Keras names, e.g. "
                              "--metrics=accuracy,auc,precision,recall,f1_score") from None
        if not isinstance(metric, keras.metrics.Metric):  # a function, e.g. binary_crossentropy
            metric = keras.metrics.MeanMetricWrapper(metric)
        if isinstance(metric, keras.metrics.FBetaScore) and metric.average is None:
            metric = type(metric).from_config({**metric.get_config(), "average": "macro",
                                               "threshold": None if softmax else 0.5})
        metric.name = name  # as Keras names a metric given by name
        metrics.append(_OneHot(metric, int(width)) if class_ids else metric)
    return metrics


def _fresh(metric: Any) -> keras.metrics.Metric:
    """A new metric made as `metric` was (a function: its mean), with no state: the Keras way,
    serialized and deserialized."""
    if not isinstance(metric, keras.metrics.Metric):
        return keras.metrics.MeanMetricWrapper(metric, name=getattr(metric, "__name__", None))
    try:
        return keras.metrics.deserialize(keras.metrics.serialize(metric))
    except Exception:  # a class that cannot be rebuilt from its config: a copy of its state
        import copy

        return copy.deepcopy(metric)


def objective(ft, cfg: Optional[TrainConfig], tokens: bool = False) -> dict[str, Any]:
    """`compile()`'s loss, loss weights, metrics and weighted metrics for a model/prepare.py
    FineTuneModel trained with `cfg`'s options (`--label_smoothing` on every crossentropy
    loss; None: no options). `tokens` (a causal LM on text, see train/step.py): the loss sums
    over the weighted tokens, and the weighted metrics hold perplexity and token accuracy."""
    smoothing = cfg.label_smoothing if cfg else 0.0
    if isinstance(ft.loss, dict):
        widths = {name: t.shape[-1] for name, t in zip(ft.model.output_names, ft.model.outputs)}
        loss = {name: _smoothed(l, smoothing, widths[name]) for name, l in ft.loss.items()}
    else:
        loss = _smoothed(ft.loss, smoothing, ft.model.output_shape[-1])
    weighted, metrics = compiled(ft, weighted=True), compiled(ft)
    if tokens:  # every metric counts the real tokens only; the head's default (accuracy) goes
        origin = ft.origin.get("metrics", "")
        chosen = metrics if (any(origin.values()) if isinstance(origin, dict) else origin) else []
        loss, weighted, metrics = _summed(loss), _per_token(list(weighted) + list(chosen), loss), []
    return {"loss": loss, "loss_weights": ft.loss_weights, "metrics": metrics,
            "weighted_metrics": weighted if any(weighted.values() if isinstance(weighted, dict)
                                                else weighted) else None}


def _summed(loss: Any) -> keras.losses.Loss:
    """`loss` (a name, function or Loss object, with its arguments) summing over the batch."""
    if isinstance(loss, keras.losses.Loss):
        return type(loss).from_config({**loss.get_config(), "reduction": "sum"})
    fn = keras.losses.get(loss)
    if isinstance(fn, keras.losses.Loss):
        return _summed(fn)
    return keras.losses.LossFunctionWrapper(fn, reduction="sum", name=getattr(fn, "__name__", None))


def _per_token(weighted: list, loss: Any) -> list:
    """The weighted metrics of a causal LM: the model's own, and perplexity and token accuracy
    unless it has them."""
    names = {getattr(m, "name", m) for m in weighted}
    from_logits = bool(model_objective.options(loss).get("from_logits"))
    more = []
    if "perplexity" not in names:
        more.append(Perplexity(from_logits))
    if not names & {"accuracy", "sparse_categorical_accuracy"}:
        more.append(keras.metrics.SparseCategoricalAccuracy(name="accuracy"))
    return list(weighted) + more


class Perplexity(keras.metrics.Mean):
    """exp of the mean crossentropy per weighted token: the sums add up over workers exactly."""

    def __init__(self, from_logits: bool = True, name: str = "perplexity", **kwargs):
        super().__init__(name=name, **kwargs)
        self.from_logits = from_logits

    def update_state(self, y_true, y_pred, sample_weight=None):
        ce = keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=self.from_logits)
        return super().update_state(ce, sample_weight=sample_weight)

    def result(self):
        return tf.exp(super().result())

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


def _smoothed(loss: Any, smoothing: float, classes: int) -> Any:
    """`loss` against labels smoothed by `smoothing` (Keras's `label_smoothing`: one-hot rows
    become (1 - s) * row + s / classes); class ids are made such rows first, since Keras's
    sparse crossentropy has no smoothing. A loss object keeps its other arguments
    (from_logits)."""
    if not smoothing:
        return loss
    kind = model_objective.loss_kind(loss)
    config = model_objective.options(loss)
    if config.get("label_smoothing"):
        raise DistftError(f"--label_smoothing={smoothing} and the loss's own label_smoothing="
                          f"{config['label_smoothing']} both smooth the targets: pass one")
    if kind in ("categorical_crossentropy", "binary_crossentropy"):
        if isinstance(loss, str):
            return (keras.losses.CategoricalCrossentropy if kind.startswith("categorical")
                    else keras.losses.BinaryCrossentropy)(label_smoothing=smoothing)
        return type(loss).from_config({**config, "label_smoothing": smoothing})
    if kind == "sparse_categorical_crossentropy" and not config.get("ignore_class"):
        from_logits = bool(config.get("from_logits"))

        def smoothed_sparse_categorical_crossentropy(y_true, y_pred):
            ids = tf.cast(tf.reshape(y_true, tf.shape(y_pred)[:-1]), tf.int32)
            return keras.losses.categorical_crossentropy(tf.one_hot(ids, classes, dtype=y_pred.dtype),
                                                         y_pred, from_logits=from_logits,
                                                         label_smoothing=smoothing)
        return smoothed_sparse_categorical_crossentropy
    raise DistftError(f"--label_smoothing={smoothing} smooths crossentropy targets, and the loss is "
                      f"{model_objective.describe(loss)}: leave --label_smoothing out or pass a "
                      "crossentropy --loss")


def compiled(ft, weighted: bool = False) -> Union[list, dict]:
    """The compiled metrics (or `weighted` metrics) of a model/prepare.py FineTuneModel. With
    several outputs: by output, each also with its loss as a metric (`OUTPUT_loss`): Keras's
    own per-output loss counts every batch once, a short last batch as a full one, so it is
    not exact in evaluation."""
    chosen = ft.weighted_metrics if weighted else ft.metrics
    if not isinstance(ft.loss, dict):
        return keras_metrics(chosen, ft.model, ft.target_shape, loss=ft.loss)
    if weighted:
        return {name: keras_metrics(chosen.get(name, []), ft.model, ft.target_shape[name], name, ft.loss[name])
                for name in ft.loss}
    return {name: [*keras_metrics(names, ft.model, ft.target_shape[name], name, ft.loss[name]),
                   _loss_metric(ft.loss[name])] for name, names in chosen.items()}


def _loss_metric(name: Any) -> keras.metrics.Metric:
    """The mean of loss `name` (or loss object) over the records."""
    loss = keras.losses.get(name)
    return keras.metrics.MeanMetricWrapper(loss.call if isinstance(loss, keras.losses.Loss) else loss,
                                           name="loss")


class _OneHot(keras.metrics.Metric):
    """`metric` fed class-id targets as one-hot rows of `classes`."""

    def __init__(self, metric: keras.metrics.Metric, classes: int):
        super().__init__(name=metric.name, dtype=metric.dtype)
        self.metric = metric  # tracked: its variables are this metric's
        self.classes = classes

    def update_state(self, y_true, y_pred, sample_weight=None):
        ids = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))
        self.metric.update_state(keras.ops.one_hot(ids, self.classes, dtype=y_pred.dtype), y_pred,
                                 sample_weight)

    def result(self):
        return self.metric.result()

    def reset_state(self):
        self.metric.reset_state()


def build_compiled(model: keras.Model, element_spec) -> None:
    """Create the compiled metrics' variables for batches of `element_spec` now (Keras 3 defers
    that to the first step when no tf.distribute strategy is set): created inside the step,
    they make tf.function trace it twice (about 4 s of MobileNetV2's start-up on TF 2.15 here),
    and a worker with nothing to evaluate still needs them to join the sum of states."""
    def zeros(spec: tf.TensorSpec) -> tf.Tensor:
        return tf.zeros([1, *spec.shape[1:]], spec.dtype)

    model._symbolic_build(data_batch=tf.nest.map_structure(zeros, element_spec))


def summed_results(metrics: list[keras.metrics.Metric], worker: Worker,
                   name: str) -> dict[str, float]:
    """The results of `metrics` (e.g. `model.metrics`) with every state summed over all workers
    (one allreduce), the same on every worker. Every worker must call it with the same metrics,
    built; a worker that saw no records takes part with reset (zero) states."""
    states = [v.value for m in metrics for v in m.variables]
    return results_from_states(metrics, worker.allreduce(states, name))


def results_from_states(metrics: list[keras.metrics.Metric], states: list) -> dict[str, float]:
    """Assign `states` (one per variable of `metrics`, in order) and read the results, a
    metric that returns a dict (Keras' compiled metrics) giving one entry per name; of two
    entries of one name the first counts (compiled `OUTPUT_loss` before Keras's, see `compiled`)."""
    for variable, state in zip([v for m in metrics for v in m.variables], states, strict=True):
        variable.assign(state)
    results: dict = {}
    for metric in metrics:
        result = metric.result()
        for key, value in (result if isinstance(result, dict) else {metric.name: result}).items():
            results.setdefault(key, value)
    return {k: float(v) for k, v in results.items()}

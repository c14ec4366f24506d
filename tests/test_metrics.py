"""Metric names made Keras metrics for a head, and results read from states summed over ranks
(two evaluated models stand in for two ranks; their states are summed here, as the allreduce
sums them)."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from distft.errors import DistftError
from distft.train.metrics import keras_metrics, results_from_states


def model_with(units: int, activation: str) -> keras.Model:
    inputs = keras.Input((units,))
    return keras.Model(inputs, keras.layers.Activation(activation)(inputs))


def split_and_summed(names, activation, loss, target_shape, x, y, cut):
    """Results of a model whose outputs are `activation(x)`: over all records, on each 'rank'
    (records before and after `cut`) with its record count, and read from the two ranks'
    summed states."""
    def evaluated(part):
        model = model_with(x.shape[1], activation)
        model.compile(loss=loss, metrics=keras_metrics(names, model, target_shape))
        model.evaluate(x[part], y[part], batch_size=64, verbose=0)
        return model

    def results(model):
        return {k: float(v) for k, v in model.get_metrics_result().items()}

    ranks = [evaluated(slice(None, cut)), evaluated(slice(cut, None))]
    per_rank = [(n, results(m)) for n, m in zip((cut, len(y) - cut), ranks)]
    states = [a.value + b.value for a, b in
              zip(*([v for m in model.metrics for v in m.variables] for model in ranks))]
    return results(evaluated(slice(None))), per_rank, results_from_states(ranks[0].metrics, states)


def weighted_mean(per_rank):
    """The old way: each rank's result weighted by its record count."""
    total = sum(n for n, _ in per_rank)
    return {k: sum(n * r[k] for n, r in per_rank) / total for k in per_rank[0][1]}


def test_summed_states_are_exact_for_every_metric_where_averaged_results_are_not():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 5, 300)  # class ids under a 5-class softmax, as the demo's
    signal = np.where(np.arange(300) < 220, 3.0, 0.5)[:, None]  # the ranks' records differ
    logits = (rng.normal(size=(300, 5)) + signal * np.eye(5)[y]).astype(np.float32)
    names = ["accuracy", "auc", "precision", "recall", "f1_score", "mae"]
    whole, per_rank, summed = split_and_summed(names, "softmax", "sparse_categorical_crossentropy",
                                               (), logits, y, cut=220)
    assert set(summed) == {"loss", *names}
    assert summed == pytest.approx(whole, abs=1e-6)
    old = weighted_mean(per_rank)
    for name in ("auc", "precision", "f1_score"):  # not means: the old way misses
        assert abs(old[name] - whole[name]) > 1e-3, name
    # Means, for which the old way was exact (recall too: one positive per record, one-hot)
    for name in ("loss", "accuracy", "mae", "recall"):
        assert old[name] == pytest.approx(whole[name], abs=1e-6)


def test_summed_states_on_a_regression_head():
    rng = np.random.default_rng(1)
    y = (rng.normal(size=(200, 1)) + 3.0 * (np.arange(200) >= 50)[:, None]).astype(np.float32)
    p = (y + rng.normal(scale=0.5, size=(200, 1))).astype(np.float32)
    whole, per_rank, summed = split_and_summed(["mae", "r2_score"], "linear", "mse", (1,), p, y,
                                               cut=50)
    assert summed == pytest.approx(whole, abs=1e-5)
    assert abs(weighted_mean(per_rank)["r2_score"] - whole["r2_score"]) > 1e-2


def test_metric_names_for_class_ids_one_hot_rows_and_unknown_names():
    softmax = model_with(3, "softmax")
    ids = keras_metrics(["accuracy", "sparse_top_k_categorical_accuracy", "auc", "f1_score"], softmax, ())
    assert ids[:2] == ["accuracy", "sparse_top_k_categorical_accuracy"]  # Keras handles ids
    assert [type(m).__name__ for m in ids[2:]] == ["_OneHot", "_OneHot"]
    rows = keras_metrics(["auc", "f1_score"], softmax, (3,))
    assert [type(m).__name__ for m in rows] == ["AUC", "F1Score"]
    assert (rows[1].average, rows[1].threshold) == ("macro", None)  # one number; top class
    sigmoid_f1 = keras_metrics(["f1_score"], model_with(1, "sigmoid"), ())[0]
    assert (sigmoid_f1.average, sigmoid_f1.threshold) == ("macro", 0.5)
    assert keras_metrics(["mae"], softmax, (3,))[0].name == "mae"  # named as given, as Keras does
    with pytest.raises(DistftError, match="--metrics: aucc is not a Keras metric"):
        keras_metrics(["aucc"], softmax, ())

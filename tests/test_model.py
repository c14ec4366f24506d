"""Model surgery on real Keras models: load formats, head replacement, unfreeze specs."""
import numpy as np
import pytest
import tensorflow as tf

from distft.errors import DistftError
from distft.model.prepare import prepare
from distft.model.unfreeze import flatten, select

L = tf.keras.layers


def nested_model():
    inner = tf.keras.Sequential([L.Input((4,)), L.Dense(8, name="inner_a"),
                                 L.BatchNormalization(name="inner_bn"), L.Dense(8, name="inner_b")],
                                name="backbone")
    x = L.Input((4,), name="x")
    y = L.Dense(3, activation="softmax", name="out")(L.Dense(6, name="neck")(inner(x)))
    return tf.keras.Model(x, y)


@pytest.fixture
def saved(tmp_path):
    model = nested_model()
    paths = {"h5": str(tmp_path / "m.h5"), "keras": str(tmp_path / "m.keras"),
             "savedmodel": str(tmp_path / "sm")}
    model.save(paths["h5"])
    model.save(paths["keras"])
    model.save(paths["savedmodel"], save_format="tf")
    return model, paths


@pytest.mark.parametrize("kind", ["h5", "keras", "savedmodel"])
def test_every_format_loads_with_the_same_weights(saved, kind):
    model, paths = saved
    ft = prepare(paths[kind], unfreeze="all")
    for a, b in zip(model.get_weights(), ft.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_nested_models_are_flattened_and_bn_stays_frozen(saved):
    _, paths = saved
    ft = prepare(paths["keras"], unfreeze="all")
    names = [l.name for l in flatten(ft.model)]
    assert names == ["inner_a", "inner_bn", "inner_b", "neck", "out"]
    trainable = {l.name for l in flatten(ft.model) if l.trainable}
    assert "inner_bn" not in trainable and {"inner_a", "inner_b", "neck", "out"} <= trainable
    ft_bn = prepare(paths["keras"], unfreeze="all", train_bn=True)
    assert any(l.name == "inner_bn" and l.trainable for l in flatten(ft_bn.model))


def test_new_head_replaces_last_layer_and_is_not_counted_in_last_n(saved):
    _, paths = saved
    ft = prepare(paths["h5"], num_classes=5, unfreeze="last:1", head_dropout=0.3)
    assert ft.model.output_shape == (None, 5)
    names = [l.name for l in flatten(ft.model)]
    assert "out" not in names and names[-1] == "distft_head"
    assert ft.unfrozen == ["neck", "distft_head"]  # last:1 of the kept layers = neck
    assert (ft.loss, ft.metrics) == ("sparse_categorical_crossentropy", ["accuracy"])


def test_default_with_a_new_head_trains_only_the_head(saved):
    _, paths = saved
    ft = prepare(paths["h5"], num_classes=4)
    assert ft.unfrozen == ["distft_head"]
    assert ft.trainable_params == 6 * 4 + 4


@pytest.mark.parametrize("spec, expected", [
    ("none", set()), ("last:2", {"inner_b", "neck"}), ("from:inner_b", {"inner_b", "neck"}),
    ("re:^inner_", {"inner_a", "inner_b"}), ("re:^inner_a$,last:1", {"inner_a", "neck"}),
])
def test_unfreeze_specs(saved, spec, expected):
    _, paths = saved
    ft = prepare(paths["keras"], num_classes=2, unfreeze=spec)
    assert set(ft.unfrozen) - {"distft_head"} == expected


@pytest.mark.parametrize("spec, message", [
    ("from:inner_c", "no layer named 'inner_c'; close matches: inner_b, inner_a"),
    ("re:^block_", "no layer name matches '^block_'"),
    ("last:x", "N must be a positive integer"),
    ("top:3", "not understood"),
])
def test_bad_specs_name_the_problem(saved, spec, message):
    _, paths = saved
    with pytest.raises(DistftError, match=message.replace("(", r"\(").replace("^", r"\^")):
        prepare(paths["keras"], num_classes=2, unfreeze=spec)


def test_nothing_to_train_is_an_error(saved):
    _, paths = saved
    with pytest.raises(DistftError, match="leaves no weight to train"):
        prepare(paths["keras"], unfreeze="none")


def test_regression_output_defaults_to_mse(tmp_path):
    x = L.Input((3,))
    path = str(tmp_path / "reg.keras")
    tf.keras.Model(x, L.Dense(1, name="y")(L.Dense(4)(x))).save(path)
    assert prepare(path).loss == "mean_squared_error"


def test_bad_model_files(tmp_path):
    text = tmp_path / "model.h5"
    text.write_text("not a model")
    with pytest.raises(DistftError, match="neither a .keras"):
        prepare(str(text))
    with pytest.raises(DistftError, match="does not exist"):
        prepare(str(tmp_path / "missing.h5"))
    good = str(tmp_path / "good.h5")
    nested_model().save(good)
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(open(good, "rb").read()[:2000])
    with pytest.raises(DistftError, match="not a loadable Keras h5 model"):
        prepare(str(truncated))


def test_lambda_layers_need_unsafe_deserialization(tmp_path):
    x = L.Input((3,))
    path = str(tmp_path / "lambda.keras")
    tf.keras.Model(x, L.Dense(2, activation="softmax")(L.Lambda(lambda t: t * 2)(x))).save(path)
    with pytest.raises(DistftError, match="--unsafe_deserialization"):
        prepare(path)
    assert prepare(path, unsafe_deserialization=True).model.output_shape == (None, 2)


def test_applications_without_internet(tmp_path):
    ft = prepare("app:MobileNetV2", num_classes=3, weights="none", input_shape=(32, 32, 3),
                 unfreeze="from:block_16_expand")
    assert ft.model.output_shape == (None, 3)
    assert "block_15_project" not in ft.unfrozen and "Conv_1" in ft.unfrozen
    with pytest.raises(DistftError, match="without internet pass --weights=FILE"):
        prepare("app:MobileNetV2", num_classes=3, weights="imagenet", input_shape=(32, 32, 3))
    with pytest.raises(DistftError, match="did you mean app:MobileNetV2"):
        prepare("app:MobileNetV9", num_classes=3)

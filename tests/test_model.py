"""Model surgery on real Keras models: load formats (Keras 3's, and Keras 2's committed in
tests/data), head replacement, unfreeze specs."""
import json
import os

import numpy as np
import pytest
import keras
import tensorflow as tf

from distft.errors import DistftError
from distft.model.prepare import prepare
from distft.model.unfreeze import flatten, select

L = keras.layers


def nested_model():
    inner = keras.Sequential([L.Input((4,)), L.Dense(8, name="inner_a"),
                                 L.BatchNormalization(name="inner_bn"), L.Dense(8, name="inner_b")],
                                name="backbone")
    x = L.Input((4,), name="x")
    y = L.Dense(3, activation="softmax", name="out")(L.Dense(6, name="neck")(inner(x)))
    return keras.Model(x, y)


@pytest.fixture
def saved(tmp_path):
    model = nested_model()
    paths = {"h5": str(tmp_path / "m.h5"), "keras": str(tmp_path / "m.keras"),
             "savedmodel": str(tmp_path / "sm")}
    model.save(paths["h5"])
    model.save(paths["keras"])
    model.export(paths["savedmodel"], verbose=False)  # Keras 3's SavedModel
    return model, paths


@pytest.mark.parametrize("kind", ["h5", "keras"])
def test_keras3_files_load_with_the_same_weights(saved, kind):
    model, paths = saved
    ft = prepare(paths[kind], unfreeze="all")
    assert len(model.get_weights()) == len(ft.model.get_weights()) == 12  # BN has 4
    for a, b in zip(model.get_weights(), ft.model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_savedmodel_loads_as_one_layer_that_trains_whole(saved):
    model, paths = saved
    ft = prepare(paths["savedmodel"])
    x = np.random.default_rng(0).normal(size=(5, 4)).astype("float32")
    np.testing.assert_allclose(ft.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-5)
    assert [l.name for l in flatten(ft.model)] == ["saved_model"] and ft.trainable_params > 0
    with pytest.raises(DistftError, match="SavedModel, which Keras 3 loads as one opaque layer"):
        prepare(paths["savedmodel"], num_classes=3)


DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.parametrize("name", ["keras2_cnn.h5", "keras2_cnn.keras"])
def test_keras2_files_load_with_their_weights(name):
    """Written by tf.keras 2.15 (tests/data/make_keras2_models.py): a functional model with a
    nested Sequential, which Keras 3 alone cannot rebuild from either file."""
    with open(os.path.join(DATA, "keras2_cnn.json")) as f:
        sums = json.load(f)["weight_sums"]
    ft = prepare(os.path.join(DATA, name), num_classes=3, unfreeze="from:conv2")
    layers = {l.name: l for l in flatten(ft.model)}
    for layer, expected in sums.items():
        if layer != "classes":  # replaced by the new head
            got = sum(np.sum(w, dtype=np.float64) for w in layers[layer].get_weights())
            assert got == pytest.approx(expected, abs=1e-5), layer
    assert ft.unfrozen == ["conv2", "features", "distft_head"]
    assert "classes" not in layers and ft.model.output_shape == (None, 3)


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
    keras.Model(x, L.Dense(1, name="y")(L.Dense(4)(x))).save(path)
    assert prepare(path).loss == "mean_squared_error"


def test_bad_model_files(tmp_path):
    text = tmp_path / "model.h5"
    text.write_text("not a model")
    with pytest.raises(DistftError, match="neither a .keras"):
        prepare(str(text))
    with pytest.raises(DistftError, match="does not exist"):
        prepare(str(tmp_path / "missing.h5"))
    for kind, size in (("h5", 2000), ("keras", 3000)):  # a file cut short in a copy
        good, cut = tmp_path / f"good.{kind}", tmp_path / f"cut.{kind}"
        nested_model().save(str(good))
        cut.write_bytes(good.read_bytes()[:size])
        with pytest.raises(DistftError, match=f"is a damaged {kind} file.*copy or save it again"):
            prepare(str(cut))


def test_a_file_keras_cannot_rebuild_names_the_version_that_wrote_it(tmp_path):
    import zipfile

    path = str(tmp_path / "future.keras")
    with zipfile.ZipFile(os.path.join(DATA, "keras2_cnn.keras")) as src, \
            zipfile.ZipFile(path, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "metadata.json":
                data = json.dumps({"keras_version": "9.1.0"}).encode()
            dst.writestr(item, data)
    with pytest.raises(DistftError, match=r"written by Keras 9\.1\.0\) cannot be rebuilt by Keras 3") as e:
        prepare(path)
    assert "check the file" not in str(e.value)


def test_lambda_layers_need_unsafe_deserialization(tmp_path):
    x = L.Input((3,))
    path = str(tmp_path / "lambda.keras")
    keras.Model(x, L.Dense(2, activation="softmax")(L.Lambda(lambda t: t * 2)(x))).save(path)
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

"""The model's own objective (issue 30): a kept head trains with the loss, metrics and weighted
metrics its file was compiled with (from_logits included); a new head's loss follows its
softmax; --loss and --metrics take arguments (NAME:KEY=VALUE on the command line, {name: NAME,
KEY: VALUE} in YAML), and bad ones are one error line.

The unit tests load and prepare models in this process; the fine-tunes run on 2 workers in one
launch (the module's `tuned` fixture): a plain-Keras logits classifier compiled with
SparseCategoricalCrossentropy(from_logits=True), the same model uncompiled with the loss given
as an argument, and a tiny Keras Hub ImageClassifier (logits head), each keeping its head."""
import json
import os

import numpy as np
import pytest
import yaml

import keras

from distft.config import TrainConfig, evaluation_options
from distft.errors import DistftError
from distft.model import objective, specs
from distft.model.prepare import prepare
from distft.train.metrics import objective as compile_arguments

REQUIRED = dict(model="m.keras", data="d/*.tfrecord", output_dir="out")


# --- the text: flags and YAML ---------------------------------------------------------------

def test_items_with_arguments_parse_as_yaml_scalars():
    named = specs.parse("sparse_categorical_crossentropy:from_logits=true", "loss")
    assert (named.name, named.kwargs, named.output) == (
        "sparse_categorical_crossentropy", {"from_logits": True}, None)
    named = specs.parse("digit=categorical_focal_crossentropy:gamma=2:alpha=0.5:reduction=sum"
                        ":label_smoothing=null", "loss")
    assert named.output == "digit"
    assert named.kwargs == {"gamma": 2, "alpha": 0.5, "reduction": "sum", "label_smoothing": None}
    assert [type(v) for v in named.kwargs.values()] == [int, float, str, type(None)]
    # The text reads back as the same item
    assert specs.parse(named.text(), "loss") == named
    assert specs.parse("auc", "metrics") == specs.Named("auc")


def test_flags_and_yaml_mappings_give_the_same_options(tmp_path):
    flags = TrainConfig.resolve(**REQUIRED, loss="sparse_categorical_crossentropy:from_logits=true",
                                metrics="accuracy,sparse_top_k_categorical_accuracy:k=3")
    assert flags.loss == "sparse_categorical_crossentropy:from_logits=true"
    assert flags.metrics == ("accuracy", "sparse_top_k_categorical_accuracy:k=3")
    path = tmp_path / "c.yaml"
    path.write_text("loss: {name: sparse_categorical_crossentropy, from_logits: true}\n"
                    "metrics: [accuracy, {name: sparse_top_k_categorical_accuracy, k: 3}]\n")
    from_yaml = TrainConfig.resolve(str(path), **REQUIRED)
    assert (from_yaml.loss, from_yaml.metrics) == (flags.loss, flags.metrics)
    # The saved config.yaml holds the flags' text and reads back the same
    from_yaml.save(str(tmp_path / "saved.yaml"))
    assert TrainConfig.resolve(str(tmp_path / "saved.yaml")) == from_yaml


def test_yaml_mappings_by_output():
    cfg = TrainConfig.resolve(**REQUIRED, loss={"digit": {"name": "sparse_categorical_crossentropy",
                                                         "from_logits": True}, "size": "mae"},
                              metrics={"digit": ["accuracy", {"name": "auc", "from_logits": True}],
                                       "size": "mae"})
    assert cfg.loss == "digit=sparse_categorical_crossentropy:from_logits=true,size=mae"
    assert cfg.metrics == ("digit=accuracy", "digit=auc:from_logits=true", "size=mae")
    # evaluate's --metrics reads the same way
    assert evaluation_options(8, "auto", "accuracy,auc:from_logits=true", None)[2] == (
        "accuracy", "auc:from_logits=true")


@pytest.mark.parametrize("options, message", [
    ({"loss": "sparse_categorical_crossentropy:from_logits"},
     "--loss=sparse_categorical_crossentropy:from_logits: 'from_logits' is not an argument KEY=VALUE: "
     "write NAME:KEY=VALUE[:KEY=VALUE...] (colons between arguments, since commas separate items), "
     "e.g. --loss=sparse_categorical_crossentropy:from_logits=true"),
    # Commas separate items: an argument after a comma is not a name
    ({"loss": "categorical_crossentropy:from_logits=true,label_smoothing=0.1"},
     "--loss=label_smoothing=0.1: 'label_smoothing=0.1' is not a Keras name (or OUTPUT=NAME)"),
    ({"metrics": "sparse_top_k_categorical_accuracy:k=3:k=5"}, "argument k is given twice"),
    ({"metrics": "auc:num_thresholds="}, "'' is not one value"),
    ({"metrics": [{"name": "auc", "thresholds": [0.3, 0.5]}]}, "is not a Keras name with arguments"),
    ({"loss": "2fast"}, "'2fast' is not a Keras name"),
])
def test_bad_items_are_one_error_in_the_config_checks(options, message):
    with pytest.raises(DistftError) as e:
        TrainConfig.resolve(**REQUIRED, **options)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


# --- Keras objects from the items, and from the file -----------------------------------------

def logits_model(seed: int = 0, features: int = 64) -> keras.Model:
    keras.utils.set_random_seed(seed)
    x = keras.Input((features,), name="x")
    hidden = keras.layers.Dense(32, activation="relu", name="hidden")(x)
    return keras.Model(x, keras.layers.Dense(5, name="logits")(hidden), name="logits_classifier")


def compiled_as_keras_hub_does(model: keras.Model) -> keras.Model:
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=2)],
                  weighted_metrics=["accuracy"])
    return model


@pytest.fixture(scope="module")
def logits_files(tmp_path_factory):
    """A logits classifier saved compiled with from_logits, the same weights uncompiled, and a
    two-output model compiled with a loss per output and loss weights."""
    folder = tmp_path_factory.mktemp("logits")
    paths = {"compiled": str(folder / "compiled.keras"), "plain": str(folder / "plain.keras"),
             "two": str(folder / "two.keras")}
    model = compiled_as_keras_hub_does(logits_model())
    model.save(paths["compiled"])
    keras.Model(model.inputs, model.outputs, name=model.name).save(paths["plain"])
    x = keras.Input((4,))
    two = keras.Model(x, {"a": keras.layers.Dense(3, name="a")(x), "b": keras.layers.Dense(1, name="b")(x)})
    two.compile("adam", loss={"a": keras.losses.SparseCategoricalCrossentropy(from_logits=True), "b": "mse"},
                metrics={"a": ["accuracy"], "b": ["mae"]}, loss_weights={"a": 1.0, "b": 0.25})
    two.save(paths["two"])
    return paths


def test_a_kept_head_takes_the_files_objective(logits_files):
    ft = prepare(logits_files["compiled"], target_shape=())
    assert isinstance(ft.loss, keras.losses.SparseCategoricalCrossentropy)
    assert ft.loss.get_config()["from_logits"] is True
    assert objective.describe(ft.loss) == "SparseCategoricalCrossentropy(from_logits=True)"
    assert [objective.describe(m) for m in ft.metrics] == ["accuracy", "SparseTopKCategoricalAccuracy(k=2)"]
    assert ft.weighted_metrics == ["accuracy"]
    assert ft.origin == {"loss": objective.FROM_FILE, "metrics": objective.FROM_FILE,
                         "weighted_metrics": objective.FROM_FILE}
    # The logits are read through the loss's softmax: a classifier of 5 classes
    assert (ft.activation(), ft.classes) == ("softmax", 5)
    # compile() gets fresh metric objects each time, summed over the workers as any other
    arguments = compile_arguments(ft, None)
    assert arguments["weighted_metrics"] == ["accuracy"]
    top_k = arguments["metrics"][1]
    assert isinstance(top_k, keras.metrics.SparseTopKCategoricalAccuracy) and top_k.k == 2
    assert top_k is not ft.metrics[1] and top_k is not compile_arguments(ft, None)["metrics"][1]


def test_the_files_objective_trains_as_keras_compiled_it(logits_files):
    """The loss and metrics distft compiles give what the file's own compiled model gives."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 64)).astype(np.float32), rng.integers(0, 5, 64)
    ft = prepare(logits_files["compiled"], target_shape=())
    ft.model.compile(**compile_arguments(ft, None))
    ours = ft.model.evaluate(x, y, batch_size=64, verbose=0, return_dict=True)
    theirs = keras.models.load_model(logits_files["compiled"]).evaluate(x, y, batch_size=64, verbose=0,
                                                                       return_dict=True)
    assert set(ours) == {"loss", "accuracy", "sparse_top_k_categorical_accuracy", "weighted_accuracy"}
    assert ours == pytest.approx(theirs, abs=1e-6)
    # Read as probabilities (the old default), the same logits give another loss
    plain = prepare(logits_files["compiled"], target_shape=(), loss="sparse_categorical_crossentropy")
    plain.model.compile(loss=plain.loss)
    assert abs(plain.model.evaluate(x, y, verbose=0) - ours["loss"]) > 0.1


def test_a_new_head_takes_the_loss_of_its_softmax_not_the_files(logits_files):
    ft = prepare(logits_files["compiled"], num_classes=3, target_shape=())
    assert (ft.loss, ft.metrics, ft.weighted_metrics) == ("sparse_categorical_crossentropy", ["accuracy"], [])
    assert ft.origin == {"loss": "", "metrics": ""}


def test_a_file_without_compile_config_keeps_the_heads_defaults(logits_files):
    ft = prepare(logits_files["plain"], target_shape=(5,))
    assert (ft.loss, ft.metrics) == ("mean_squared_error", ["mean_absolute_error"])


def test_loss_and_metrics_with_arguments(logits_files):
    ft = prepare(logits_files["plain"], target_shape=(),
                 loss="sparse_categorical_crossentropy:from_logits=true:ignore_class=4",
                 metrics=("accuracy", "sparse_top_k_categorical_accuracy:k=3", "auc:from_logits=true"))
    assert objective.describe(ft.loss) == "SparseCategoricalCrossentropy(from_logits=True, ignore_class=4)"
    assert [objective.describe(m) for m in ft.metrics] == [
        "accuracy", "SparseTopKCategoricalAccuracy(k=3)", "AUC(from_logits=True)"]
    assert ft.origin == {"loss": "--loss", "metrics": "--metrics"}
    assert ft.activation() == "softmax"
    metrics = compile_arguments(ft, None)["metrics"]
    assert type(metrics[2]).__name__ == "_OneHot"  # AUC of class ids, one-hot, from logits
    # --label_smoothing keeps from_logits
    cfg = TrainConfig.resolve(**REQUIRED, label_smoothing=0.1)
    smoothed = compile_arguments(prepare(logits_files["plain"], target_shape=(),
                                         loss="categorical_crossentropy:from_logits=true"), cfg)["loss"]
    assert smoothed.get_config()["from_logits"] and smoothed.get_config()["label_smoothing"] == 0.1


@pytest.mark.parametrize("options, message", [
    ({"loss": "sparse_categorical_crossentropyy:from_logits=true"},
     "--loss=sparse_categorical_crossentropyy:from_logits=true: sparse_categorical_crossentropyy is "
     "not a Keras loss"),
    ({"loss": "sparse_categorical_crossentropy:from_logit=true"},
     "--loss=sparse_categorical_crossentropy:from_logit=true: SparseCategoricalCrossentropy takes "
     "no argument from_logit: its arguments are from_logits, ignore_class, reduction, axis, name, dtype"),
    ({"metrics": ("sparse_top_k_categorical_accuracy:kk=3",)}, "takes no argument kk"),
    ({"metrics": ("aucc:from_logits=true",)}, "aucc is not a Keras metric"),
    ({"metrics": ("accuracy:threshold=0",)}, "takes no arguments for it: name the kind"),
    ({"loss": "from_logits=true"}, "--loss: 'from_logits' is not an output of the model: name one of "
                                   "logits (e.g. --loss=logits=VALUE); arguments follow the name after colons"),
])
def test_unknown_names_and_arguments_name_the_fix(logits_files, options, message):
    with pytest.raises(DistftError) as e:
        prepare(logits_files["plain"], target_shape=(), **options)
    assert message in str(e.value)


def test_several_outputs_take_the_files_loss_per_output_and_its_weights(logits_files):
    ft = prepare(logits_files["two"], target_shape={"a": (), "b": (1,)})
    assert objective.describe(ft.loss["a"]) == "SparseCategoricalCrossentropy(from_logits=True)"
    assert ft.loss["b"] == "mse" and ft.metrics == {"a": ["accuracy"], "b": ["mae"]}
    assert ft.loss_weights == {"a": 1.0, "b": 0.25}
    # A new head on output a: its loss follows the softmax, b keeps the file's
    ft = prepare(logits_files["two"], num_classes=4, head="a", target_shape={"a": (), "b": (1,)},
                 metrics=("b=mae", "b=r2_score"))
    assert ft.loss == {"a": "sparse_categorical_crossentropy", "b": "mse"}
    assert ft.metrics == {"a": ["accuracy"], "b": ["mae", "r2_score"]}
    assert ft.origin["loss"] == {"a": "", "b": objective.FROM_FILE}
    ft = prepare(logits_files["two"], target_shape={"a": (), "b": (1,)},
                 loss="a=categorical_focal_crossentropy:from_logits=true:gamma=3")
    assert objective.describe(ft.loss["a"]) == "CategoricalFocalCrossentropy(from_logits=True, gamma=3)"


# --- fine-tunes on 2 workers, keeping the logits head -----------------------------------------

def tiny_keras_hub_classifier() -> keras.Model:
    """A Keras Hub ImageClassifier of a tiny ResNet (random weights, 16x16 RGB images), with
    Keras Hub's default head (logits) and compile() (from_logits)."""
    import keras_hub

    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
        stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block",
        use_pre_activation=False, image_shape=(16, 16, 3))
    classifier = keras_hub.models.ImageClassifier(backbone=backbone, num_classes=5)
    classifier.compile()
    return classifier


@pytest.fixture(scope="module")
def tuned(logits_files, tmp_path_factory):
    """Each fine-tune on 2 workers, in one launch: `tuned(name)` is its metrics and output."""
    from conftest import SharedLaunch
    from distft.demo import load_digits

    root = tmp_path_factory.mktemp("tuned")
    d = load_digits()
    order = np.random.default_rng(0).permutation(np.flatnonzero(d.target >= 5))
    images, y = d.images[order] / 16.0, d.target[order] - 5
    np.savez(root / "digits.npz", x=images.reshape(len(y), -1).astype(np.float32), y=y)
    big = np.repeat(np.repeat(images, 2, axis=1), 2, axis=2)  # 16x16, grey as RGB
    np.savez(root / "images.npz", x=np.round(np.repeat(big[..., None], 3, axis=-1) * 255).astype(np.uint8), y=y)
    hub = str(root / "hub.keras")
    tiny_keras_hub_classifier().save(hub)
    common = ["--epochs=4", "--batch_size=16", "--seed=1", "--lr=0.01", "--val_split=0.25"]
    runs = {"file_objective": [f"--model={logits_files['compiled']}", f"--data={root / 'digits.npz'}"],
            "loss_arguments": [f"--model={logits_files['plain']}", f"--data={root / 'digits.npz'}",
                               "--loss=sparse_categorical_crossentropy:from_logits=true",
                               "--metrics=accuracy,sparse_top_k_categorical_accuracy:k=2"],
            "keras_hub": [f"--model={hub}", f"--data={root / 'images.npz'}", "--lr=0.003"]}
    launch = SharedLaunch(str(root), [{"name": name, "argv": ["train", *argv, *common,
                                                               f"--output_dir={root / name}"]}
                                      for name, argv in runs.items()])

    def get(name):
        out = launch.output(name)
        with open(root / name / "metrics.json") as f:
            metrics = json.load(f)
        assert len(set(metrics["weights_checksums"])) == 1  # the workers' weights agree
        return metrics, out, str(root / name)

    return get


def objective_line(out: str) -> str:
    return next(line for line in out.splitlines() if "objective:" in line)


@pytest.mark.multiworker
def test_a_logits_classifier_keeps_its_head_and_its_files_objective(tuned):
    metrics, out, _ = tuned("file_objective")
    assert ("objective: SparseCategoricalCrossentropy(from_logits=True) from the model file, metrics "
            "accuracy, SparseTopKCategoricalAccuracy(k=2) from the model file, weighted metrics accuracy "
            "from the model file (--loss and --metrics to change)") in objective_line(out)
    before, after = metrics["validation_before"], metrics["validation"]
    print(f"validation accuracy {before['accuracy']:.3f} -> {after['accuracy']:.3f}, loss "
          f"{before['loss']:.3f} -> {after['loss']:.3f}")
    assert before["accuracy"] < 0.4 and after["accuracy"] > 0.8, (before, after)
    assert after["sparse_top_k_categorical_accuracy"] >= after["accuracy"]
    assert after["weighted_accuracy"] == pytest.approx(after["accuracy"])  # no sample weights


@pytest.mark.multiworker
def test_the_loss_given_with_from_logits_trains_as_the_files_own(tuned):
    """The same weights, uncompiled, with --loss=...:from_logits=true: the same run, to the
    last weight."""
    from test_multiworker import weights_by_layer

    metrics, out, folder = tuned("loss_arguments")
    assert "objective: SparseCategoricalCrossentropy(from_logits=True), metrics accuracy, " \
           "SparseTopKCategoricalAccuracy(k=2)" in objective_line(out)
    _, _, own = tuned("file_objective")
    given, filed = (weights_by_layer(os.path.join(f, "model.keras")) for f in (folder, own))
    for layer in filed:
        for a, b in zip(given[layer], filed[layer]):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert metrics["validation"]["accuracy"] > 0.8


@pytest.mark.multiworker
def test_a_keras_hub_image_classifier_keeps_its_logits_head(tuned):
    metrics, out, folder = tuned("keras_hub")
    assert "objective: SparseCategoricalCrossentropy(from_logits=True) from the model file, metrics " \
           "sparse_categorical_accuracy from the model file" in objective_line(out)
    before, after = metrics["validation_before"], metrics["validation"]
    print(f"validation accuracy {before['sparse_categorical_accuracy']:.3f} -> "
          f"{after['sparse_categorical_accuracy']:.3f}")
    assert after["sparse_categorical_accuracy"] > before["sparse_categorical_accuracy"] + 0.3, (before, after)
    assert os.path.exists(os.path.join(folder, "model.keras"))


def test_a_file_objective_keras_cannot_rebuild_names_the_fix(tmp_path):
    """A loss of the user's that no --import registers: one line with the fix; --loss (and
    --metrics) replace it, and a look at the layers (inspect) does not need it."""
    @keras.saving.register_keras_serializable(package="mine")
    def my_loss(y_true, y_pred):
        return keras.ops.mean(keras.ops.square(y_pred))

    model = logits_model()
    model.compile("adam", loss=my_loss)
    path = str(tmp_path / "mine.keras")
    model.save(path)
    del keras.saving.get_custom_objects()["mine>my_loss"]
    with pytest.raises(DistftError, match="--model was compiled with loss that Keras .* cannot rebuild "
                                          r"here \(.*\): pass --import=MODULE for the module that "
                                          "registers them, or --loss=... to replace them"):
        prepare(path, target_shape=())
    ft = prepare(path, target_shape=(), loss="sparse_categorical_crossentropy:from_logits=true")
    assert ft.origin["loss"] == "--loss"
    assert prepare(path, target_shape=(), file_objective=False).loss == "mean_squared_error"

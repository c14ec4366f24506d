"""--preprocess=auto: models with their own preprocessing get pixels in [0, 255], others [0, 1];
an explicit value wins (with a warning); evaluate and predict feed what training fed."""
import json
import os
import re
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import distft, horovodrun, run
from distft.data.dataset import Source, load
from distft.data.formats import ImageFolderLayout, NpzLayout
from distft.model import loading
from distft.model.prepare import prepare
from distft.model.preprocessing import choose, detect, trained_with

L = keras.layers
IMAGES = ImageFolderLayout()
SMALL = (32, 32, 3)


def cnn(*first: L.Layer, name: str = "cnn") -> keras.Model:
    return keras.Sequential([L.Input(SMALL), *first, L.Conv2D(4, 3, name="conv"),
                             L.GlobalAveragePooling2D(), L.Dense(2, activation="softmax")], name=name)


def normalization(values: np.ndarray) -> L.Normalization:
    layer = L.Normalization(name="norm")
    layer.adapt(values)
    return layer


def nested_application() -> keras.Model:
    """The transfer-learning tutorial's shape: augmentation, then an application as one layer."""
    inputs = L.Input(SMALL)
    augment = keras.Sequential([L.RandomFlip(), L.RandomRotation(0.1)], name="augment")
    base = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=SMALL)
    return keras.Model(inputs, L.Dense(2)(L.GlobalAveragePooling2D()(base(augment(inputs)))))


def image_and_metadata() -> keras.Model:
    """Normalization on the metadata input only (the first layer Keras lists, as its branch is
    the deeper one): the images need no [0, 255]."""
    image, meta = L.Input(SMALL, name="image"), L.Input((3,), name="meta")
    meta_x = L.Dense(4)(normalization(np.full((4, 3), 100.0))(meta))
    image_x = L.GlobalAveragePooling2D()(L.Conv2D(4, 3)(image))
    model = keras.Model([meta, image], L.Dense(2)(L.Concatenate()([meta_x, image_x])))
    assert isinstance(model.layers[2], L.Normalization)
    return model


def app(name: str) -> keras.Model:
    return getattr(keras.applications, name)(include_top=False, weights=None, input_shape=SMALL)


CASES = {  # model -> (what detection says, or None; pixels in [0, 255]?)
    "rescaling-first Sequential, after RandomFlip and Resizing": (
        lambda: cnn(L.RandomFlip(), L.Resizing(32, 32), L.Rescaling(1 / 255, name="rescaling")),
        "Rescaling(0.00392) (layer rescaling)", True),
    "rescaling to [-1, 1] after a nested augmentation model": (
        lambda: cnn(keras.Sequential([L.RandomFlip()]), L.Rescaling(1 / 127.5, offset=-1, name="r")),
        "Rescaling(0.00784, offset -1) (layer r)", True),
    "rescaling made for [0, 1] inputs": (
        lambda: cnn(L.Rescaling(2.0, offset=-1, name="r")), "Rescaling(2, offset -1) (layer r)", False),
    "normalization adapted on [0, 255]": (lambda: cnn(normalization(np.full((2, *SMALL), 120.0))),
                                          "Normalization(mean 120,120,120) (layer norm)", True),
    "normalization adapted on [0, 1]": (lambda: cnn(normalization(np.full((2, *SMALL), 0.5))),
                                        "Normalization(mean 0.5,0.5,0.5) (layer norm)", False),
    "MobileNetV3Small": (lambda: app("MobileNetV3Small"), "Rescaling(0.00784, offset -1) (layer rescaling",
                         True),
    "MobileNetV3Small inside a model": (nested_application, "Rescaling(0.00784, offset -1)", True),
    "EfficientNetB0": (lambda: app("EfficientNetB0"), "Rescaling(0.00392) (layer rescaling", True),
    "ConvNeXtTiny": (lambda: app("ConvNeXtTiny"),
                     "Normalization(mean 123.7,116.3,103.5) (layer convnext_tiny_prestem_normalization)", True),
    "MobileNetV2": (lambda: app("MobileNetV2"), None, False),
    "plain CNN": (lambda: cnn(), None, False),
    "image and metadata": (image_and_metadata, None, False),
}


@pytest.mark.parametrize("case", CASES)
def test_detection(case):
    build, described, pixels = CASES[case]
    model = build()
    found = detect(model)
    if described is None:
        assert found is None
    else:
        assert described in found.layer and found.pixels == pixels
    assert choose("auto", model, IMAGES).preprocess == ("none" if pixels else "scale")


def test_app_models_loaded_by_distft_and_what_auto_feeds(tmp_path):
    """app:NAME as distft builds it, and the pixels that reach the model from a PNG folder."""
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    png = tf.io.encode_png(np.full((8, 8, 3), 200, np.uint8)).numpy()
    (tmp_path / "imgs" / "a" / "0.png").write_bytes(png)
    ds = load(Source.open(str(tmp_path / "imgs"))).train
    fed = {}
    for name in ("MobileNetV3Small", "MobileNetV2"):
        model = loading.load(f"app:{name}", "none", SMALL)
        feed = choose("auto", model, ds.layout)
        x, _ = next(iter(ds.stream(0, 1, 1, SMALL, training=False, preprocess=feed.preprocess)))
        fed[name] = (float(np.max(x)), feed.note)
    top, note = fed["MobileNetV3Small"]
    assert top == 200.0 and re.fullmatch(r"model starts with Rescaling\(0.00784, offset -1\) \(layer "
                                         r"rescaling(_\d+)?\) -> feeding pixels in \[0, 255\]", note)
    assert fed["MobileNetV2"] == (pytest.approx(200 / 255), "no Rescaling or Normalization at the "
                                                            "model's start -> feeding pixels in [0, 1]")


def test_explicit_values_win_and_features_are_unaffected(tmp_path):
    rescaling = cnn(L.Rescaling(1 / 255, name="rescaling"))
    scale = choose("scale", rescaling, IMAGES)
    assert scale.preprocess == "scale" and scale.note == "--preprocess=scale -> feeding pixels in [0, 1]"
    assert scale.warning == ("--preprocess=scale feeds pixels in [0, 1], but model starts with "
                             "Rescaling(0.00392) (layer rescaling): the model expects pixels in [0, 255]; "
                             "leave --preprocess out (auto) to feed that")
    assert choose("none", cnn(), IMAGES).warning is None  # nothing detected: nothing to contradict
    family = choose("mobilenet_v2", rescaling, IMAGES)
    assert family.preprocess == "mobilenet_v2" and "mobilenet_v2.preprocess_input" in family.warning
    for layout in (NpzLayout("float", (4,)), NpzLayout("pixels", (8, 8, 1), pixel_scale=0)):
        assert choose("auto", rescaling, layout) == choose("scale", rescaling, layout)  # as before
        assert choose("auto", rescaling, layout).note is None
    # A run folder's config.yaml records what training fed; evaluate and predict feed the same.
    (tmp_path / "config.yaml").write_text("model: base.keras\npreprocess: scale\n")
    assert trained_with(str(tmp_path / "model.keras")) == "scale"
    as_trained = choose("auto", rescaling, IMAGES, trained="scale")
    assert as_trained.preprocess == "scale" and "used --preprocess=scale" in as_trained.note
    assert "used --preprocess=scale" in choose("none", rescaling, IMAGES, trained="scale").warning
    (tmp_path / "config.yaml").write_text("lr: 0.1\n")  # another tool's file
    assert trained_with(str(tmp_path / "model.keras")) is None
    assert trained_with("app:MobileNetV2") is None


def write_digits(folder, images, labels) -> None:
    from rescaling_model import pixels

    for i, (img, label) in enumerate(zip(pixels(images), labels)):
        os.makedirs(os.path.join(folder, str(label)), exist_ok=True)
        with open(os.path.join(folder, str(label), f"{i}.png"), "wb") as f:
            f.write(tf.io.encode_png(img).numpy())


def fine_tuned_accuracy(folder, preprocess: str) -> float:
    """Validation accuracy of the head fine-tuned as the 2-worker run does, fed by `preprocess`."""
    train, val = (load(Source.open(str(folder / part))).train for part in ("train", "val"))
    ft = prepare(str(folder / "base.keras"), num_classes=5, seed=42)
    ft.model.compile(optimizer=keras.optimizers.Adam(0.02), loss=ft.loss, metrics=ft.metrics)
    stream = train.stream(0, 1, 64, SMALL, training=True, preprocess=preprocess, epochs=(0, 5))
    ft.model.fit(stream, epochs=5, steps_per_epoch=train.steps_per_epoch(1, 64), shuffle=False,
                 verbose=0)
    val_stream = val.stream(0, 1, 64, SMALL, training=False, preprocess=preprocess)
    return ft.model.evaluate(val_stream, verbose=0, return_dict=True)["accuracy"]


@pytest.mark.multiworker
def test_rescaling_first_cnn_fine_tunes_from_an_image_folder(tmp_path):
    """The issue's case: stock Keras writes a Rescaling(1/255)-first CNN pretrained on digits 0-4
    in [0, 255]; fine-tuned on PNGs of digits 5-9 on 2 workers, auto feeds [0, 255] and learns,
    where [0, 1] (--preprocess=scale, the old default) stays near chance. Evaluate feeds as trained."""
    from distft.demo import load_digits

    script = os.path.join(os.path.dirname(__file__), "rescaling_model.py")
    written = run([sys.executable, script, str(tmp_path / "base.keras")], timeout=180)
    assert written.code == 0, written.out[-3000:]
    d = load_digits()
    high = np.random.default_rng(0).permutation(np.flatnonzero(d.target >= 5))
    write_digits(tmp_path / "train", d.images[high[:700]], d.target[high[:700]])
    write_digits(tmp_path / "val", d.images[high[700:]], d.target[high[700:]])
    args = ["train", "--model=base.keras", "--data=train", "--val_data=val", "--num_classes=5",
            "--epochs=5", "--lr=0.01", "--rank_health=false"]

    auto = horovodrun([*args, "--output_dir=auto"], cwd=tmp_path, timeout=240)
    assert auto.code == 0, auto.out[-3000:]
    lines = [l for l in auto.lines if "preprocess:" in l]
    assert len(lines) == 1 and lines[0].endswith(
        "preprocess: model starts with Rescaling(0.00392) (layer rescaling) -> feeding pixels in [0, 255]")
    with open(tmp_path / "auto" / "metrics.json") as f:
        accuracy = json.load(f)["validation"]["accuracy"]
    assert accuracy > 0.6  # chance: 0.2
    assert "preprocess: none" in (tmp_path / "auto" / "config.yaml").read_text()

    # The same fine-tuning in-process (one worker, same global batch and rate), fed [0, 255] as
    # auto does and [0, 1] as --preprocess=scale (the old default) does.
    fed = {p: fine_tuned_accuracy(tmp_path, p) for p in ("none", "scale")}
    assert fed["none"] > 0.6 and fed["scale"] < fed["none"] - 0.3, fed

    evaluated = distft(["evaluate", "--model=auto/model.keras", "--data=val", "--output=e.json"],
                       cwd=tmp_path)
    assert evaluated.code == 0, evaluated.out[-3000:]
    assert "the run that wrote the model used --preprocess=none (config.yaml beside it) -> " \
           "feeding pixels in [0, 255]" in evaluated.out
    with open(tmp_path / "e.json") as f:
        assert json.load(f)["accuracy"] == pytest.approx(accuracy, abs=1e-6)

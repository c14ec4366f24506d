"""A Keras Hub image classifier saved with its ImageClassifierPreprocessor, written by stock
keras_hub (tests/hub_image_model.py: a tiny ResNet, 16x16 inputs, scale 1/255), fine-tuned on 2
workers from a folder of 24x24 PNGs, with its head kept or a new one: its own preprocessor
resizes and scales the raw pixels on each worker, in training, evaluate and predict alike, and
the saved model.keras is still that task, which predicts as stock keras_hub does with that
preprocessor. One launch holds every run (the `hub` fixture)."""
import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import run

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hub_image_model.py")
OWN = ("preprocess: the model's ResNetImageClassifierPreprocessor (resize to 16x16, scale 0.003922), "
       "applied to the raw pixels in [0, 255] on each worker")
ACCURACY = "sparse_categorical_accuracy"  # Keras Hub's compile()


def write_pngs(folder, images: np.ndarray, labels: np.ndarray) -> None:
    """8x8 digits in [0, 16] as 24x24 RGB PNGs in class subfolders (sorted as distft reads them)."""
    for i, (img, label) in enumerate(zip(images, labels)):
        big = np.repeat(np.repeat(img * (255 / 16), 3, axis=0), 3, axis=1)
        os.makedirs(folder / str(label), exist_ok=True)
        (folder / str(label) / f"{i:04d}.png").write_bytes(
            tf.io.encode_png(np.repeat(big[..., None], 3, axis=-1).round().astype(np.uint8)).numpy())


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """Train (kept head), evaluate, predict, train and predict with a new head, and a refused
    --preprocess in two 2-worker launches, then stock keras_hub's predictions of both fine-tuned
    models: `hub(name)` is a run's (exit code, output), `hub("stock")` stock keras_hub's."""
    from conftest import SharedLaunch
    from distft.demo import load_digits

    root = tmp_path_factory.mktemp("hub_image")
    written = run([sys.executable, SCRIPT, "write", str(root / "hub.keras")], timeout=180)
    assert written.code == 0, written.out[-3000:]
    d = load_digits()
    high = np.random.default_rng(0).permutation(np.flatnonzero(d.target >= 5))[:400]
    write_pngs(root / "train", d.images[high[:300]], d.target[high[:300]])
    write_pngs(root / "val", d.images[high[300:]], d.target[high[300:]])
    train = ["train", "--model=hub.keras", "--data=train", "--val_data=val", "--epochs=4",
             "--batch_size=8", "--lr=0.003", "--seed=1", "--rank_health=false"]
    runs = {"train": [*train, "--output_dir=run"],
            "evaluate": ["evaluate", "--model=run/model.keras", "--data=val", "--output=evaluated.json"],
            "predict": ["predict", "--model=run/model.keras", "--data=val", "--output=predicted.npy"],
            "new_head": [*train, "--num_classes=5", "--unfreeze=all", "--output_dir=new"],
            "new_head_predict": ["predict", "--model=new/model.keras", "--data=val", "--output=new.npy"],
            "explicit": [*train, "--preprocess=scale", "--output_dir=refused"]}
    launch = SharedLaunch(str(root), [{"name": n, "argv": argv, "cwd": str(root),
                                       "launch": int(n.startswith("new"))}  # two launches, side by side
                                      for n, argv in runs.items()])
    stock = run([sys.executable, SCRIPT, "predict", str(root / "val"), str(root / "run" / "model.keras"),
                 str(root / "stock.npy"), str(root / "new" / "model.keras"), str(root / "stock_new.npy")],
                timeout=180)
    print(f"launch {launch.seconds:.0f}s: {launch.status}")

    def get(name):
        if name.startswith("stock"):
            assert stock.code == 0, stock.out[-3000:]
            return np.load(root / f"{name}.npy")
        return launch.ended(name)

    get.root = root
    return get


@pytest.mark.multiworker
def test_an_image_classifier_fine_tunes_through_its_own_preprocessor(hub):
    """24x24 PNGs reach the 16x16 model through its own preprocessor (named in the start log,
    once) and it learns: validation accuracy from chance to well above it, the workers agree."""
    code, out = hub("train")
    assert code == 0, out[-3000:]
    assert [line for line in out.splitlines() if "preprocess:" in line][0].endswith(OWN)
    assert sum("preprocess:" in line for line in out.splitlines()) == 1
    with open(hub.root / "run" / "metrics.json") as f:
        metrics = json.load(f)
    before, after = metrics["validation_before"][ACCURACY], metrics["validation"][ACCURACY]
    print(f"validation accuracy {before:.3f} -> {after:.3f}")
    assert before < 0.35 and after > 0.7, (before, after)  # chance: 0.2 (measured: 0.200 -> 0.850)
    assert len(set(metrics["weights_checksums"])) == 1
    assert "preprocess: auto" in (hub.root / "run" / "config.yaml").read_text()


@pytest.mark.multiworker
def test_evaluate_feeds_the_images_as_training_did(hub):
    code, out = hub("evaluate")
    assert code == 0, out[-3000:]
    assert OWN in out
    with open(hub.root / "run" / "metrics.json") as f:
        trained = json.load(f)["validation"][ACCURACY]
    with open(hub.root / "evaluated.json") as f:
        assert json.load(f)[ACCURACY] == pytest.approx(trained, abs=1e-6)


@pytest.mark.multiworker
def test_predict_agrees_with_stock_keras_hub_on_the_raw_images(hub):
    """distft's predictions (2 workers, file order) are what stock keras_hub's `predict` gives on
    the raw 24x24 images with the saved preprocessor, and their accuracy is the run's."""
    code, out = hub("predict")
    assert code == 0, out[-3000:]
    assert OWN in out
    predicted, stock = np.load(hub.root / "predicted.npy"), hub("stock")
    assert predicted.shape == stock.shape == (100, 5)
    np.testing.assert_allclose(predicted, stock, rtol=1e-5, atol=1e-5)
    labels = np.array([int(c) - 5 for c in sorted(os.listdir(hub.root / "val"))
                       for _ in os.listdir(hub.root / "val" / c)])
    with open(hub.root / "run" / "metrics.json") as f:
        trained = json.load(f)["validation"][ACCURACY]
    assert np.mean(predicted.argmax(axis=1) == labels) == pytest.approx(trained, abs=1e-6)


@pytest.mark.multiworker
def test_a_new_head_keeps_the_task_and_its_preprocessor(hub):
    """--num_classes on the task: the same ImageClassifier with a softmax head, still fed by (and
    saved with) its own preprocessor, so stock keras_hub predicts what distft predicts."""
    for name in ("new_head", "new_head_predict"):
        code, out = hub(name)
        assert code == 0, out[-3000:]
        assert OWN in out
    with open(hub.root / "new" / "metrics.json") as f:
        metrics = json.load(f)
    before, after = metrics["validation_before"]["accuracy"], metrics["validation"]["accuracy"]
    print(f"new head: validation accuracy {before:.3f} -> {after:.3f}")
    assert before < 0.35 and after > 0.7, (before, after)
    predicted = np.load(hub.root / "new.npy")
    np.testing.assert_allclose(predicted.sum(axis=1), 1.0, rtol=1e-5)  # softmax
    np.testing.assert_allclose(predicted, hub("stock_new"), rtol=1e-5, atol=1e-5)


@pytest.mark.multiworker
def test_an_explicit_preprocess_is_refused_with_the_models_own(hub):
    code, out = hub("explicit")
    assert code != 0
    errors = [line for line in out.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].endswith(
        "--preprocess=scale: the model's ResNetImageClassifierPreprocessor (resize to 16x16, scale "
        "0.003922) resizes and scales the images, and distft feeds them to it: leave --preprocess out"), out[-2000:]


# --- in one process, no launch -------------------------------------------------------------------

def test_pixel_arrays_of_another_size_reach_the_model_as_its_preprocessor_makes_them(tmp_path):
    """Grey 24x24 uint8 arrays in an .npz: each worker's stream holds what the model's own
    preprocessor makes of the RGB pixels (16x16, times 1/255, minus 0.5: not what any
    --preprocess makes), and the feed says so."""
    from hub_image_model import classifier

    from distft.data.dataset import Source, load
    from distft.model.preprocessing import choose

    model = classifier()
    model.preprocessor.image_converter.offset = -0.5
    grey = np.random.default_rng(0).integers(0, 256, (6, 24, 24), np.uint8)
    np.savez(tmp_path / "grey.npz", x=grey, y=np.arange(6) % 5)
    data = load(Source.open(str(tmp_path / "grey.npz")), model).train
    assert choose("auto", model, data.layout).note.startswith(
        "the model's ResNetImageClassifierPreprocessor (resize to 16x16, scale 0.003922, offset -0.5)")
    x, _ = next(iter(data.stream(0, 1, 6, (16, 16, 3), training=False, preprocess="auto")))
    expected = model.preprocessor(np.repeat(grey[..., None], 3, axis=-1).astype(np.float32))
    np.testing.assert_allclose(x.numpy(), keras.ops.convert_to_numpy(expected), rtol=1e-6, atol=1e-6)
    assert x.shape == (6, 16, 16, 3) and float(np.min(x)) < 0


def test_a_preprocessor_of_another_size_than_the_input_is_one_error_line(tmp_path):
    from hub_image_model import classifier

    from distft.data.dataset import Source, load
    from distft.errors import DistftError

    model = classifier()
    model.preprocessor.image_converter.image_size = (20, 20)
    np.savez(tmp_path / "rgb.npz", x=np.zeros((4, 24, 24, 3), np.uint8), y=np.arange(4))
    layout = load(Source.open(str(tmp_path / "rgb.npz")), model).train.layout
    with pytest.raises(DistftError, match=r"makes images of 20x20 but the model's input is \(16, 16, 3\)"):
        layout.check_input((16, 16, 3))

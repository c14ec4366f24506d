"""Models with several inputs and outputs (issue 20, item 2): an image + metadata model with a
digit head and a size head, written by stock Keras in a process that does not import distft
(tests/data/make_two_heads.py), its data as .npz arrays and as `distft shard` TFRecords named
as the model's inputs and outputs; one 2-worker fine-tuning, then evaluate on 2 workers and
predict. The logic (binding names, per-output options, errors) is checked in-process. A small
two-input, two-output model on CSV columns (NAME, NAME_0..NAME_{k-1}): binding in-process, and
one short 2-worker run. Both 2-worker fine-tunes run one after another in one launch (`trained`)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import SharedLaunch, distft

MAKER = os.path.join(os.path.dirname(__file__), "data", "make_two_heads.py")


@pytest.fixture(scope="module")
def two_heads(tmp_path_factory):
    """two_heads.keras (inputs image, meta; outputs digit, size), train.npz and val.npz."""
    folder = tmp_path_factory.mktemp("two_heads")
    subprocess.run([sys.executable, "-c", "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
                    "assert 'distft' not in sys.modules", MAKER, str(folder)], check=True)
    return folder


def test_named_arrays_bind_to_the_inputs_and_outputs(two_heads, tmp_path):
    import keras

    from distft.data.dataset import Source, load
    from distft.errors import DistftError

    model = keras.models.load_model(two_heads / "two_heads.keras")
    ds, held = load(Source.open(str(two_heads / "val.npz"), holdout=0.25), model)
    assert ds.layout.outputs == ("digit", "size") and [p.image for p in ds.layout.inputs] == [True, False]
    assert ds.counts.ranges["digit"] == (0.0, 4.0)
    x, y = next(iter(ds.stream(0, 1, 8, (), training=True)))
    assert x["image"].shape == (8, 8, 8, 1) and x["meta"].shape == (8, 3)
    assert float(np.max(x["image"])) <= 1.0  # pixels scaled as --preprocess=scale does
    assert y["digit"].dtype.name == "int64" and y["size"].shape == (8,)
    assert sum(held.part_counts()) + sum(ds.part_counts()) == 180 and sum(held.part_counts()) > 30
    # predict needs the inputs only
    z = dict(np.load(two_heads / "val.npz"))
    np.savez(tmp_path / "inputs.npz", image=z["image"], meta=z["meta"])
    only = Source.open(str(tmp_path / "inputs.npz"))
    with pytest.raises(DistftError, match=r"has no array 'digit', 'size' \(it has image, meta\); the "
                                          "model's inputs are image, meta and its outputs digit, size"):
        load(only, model)
    assert load(only, model, targets=False).train.layout.outputs == ()


def test_per_output_options(two_heads):
    from distft.errors import DistftError
    from distft.model.prepare import prepare

    path = str(two_heads / "two_heads.keras")
    ft = prepare(path, loss="size=mean_absolute_error", metrics=("digit=accuracy", "digit=auc", "mse"),
                 loss_weights="size=0.5", target_shape={"digit": (), "size": ()})
    assert ft.loss == {"digit": "sparse_categorical_crossentropy", "size": "mean_absolute_error"}
    assert ft.metrics == {"digit": ["accuracy", "auc", "mse"], "size": ["mse"]}
    assert ft.loss_weights == {"digit": 1.0, "size": 0.5}
    for kwargs, message in (
            ({"num_classes": 3}, "has outputs digit, size: pass --head=OUTPUT"),
            ({"num_classes": 3, "head": "label"}, "--head=label is not an output of the model: pass one of digit, size"),
            ({"loss": "label=mse"}, "--loss: 'label' is not an output of the model"),
            ({"loss_weights": "size=half"}, "--loss_weights=size=half: 'half' is not a number")):
        with pytest.raises(DistftError, match=message):
            prepare(path, **kwargs)
    ft = prepare(path, num_classes=3, head="digit")  # the new head keeps the output's name
    assert list(ft.model.output_names) == ["digit", "size"] and ft.model.output_shape[0] == (None, 3)
    assert ft.unfrozen == ["digit"]


@pytest.fixture(scope="module")
def trained(two_heads, two_columns, tmp_path_factory):
    """Both 2-worker fine-tunes (horovodrun, Gloo), one after another in one launch: the image +
    metadata model on `distft shard` TFRecords (folder `two_heads`: shards/, run/) and the CSV
    columns model (`two_columns`: run/). `trained(name)`: the folder and the run's output."""
    root = tmp_path_factory.mktemp("trained")
    shards, heads_run, columns_run = root / "two_heads" / "shards", root / "two_heads" / "run", root / "two_columns" / "run"
    r = distft(["shard", f"--input={two_heads / 'train.npz'}", f"--output_dir={shards}", "--num_shards=4"])
    assert r.code == 0, r.out[-2000:]
    launch = SharedLaunch(str(root), [
        {"name": "two_heads",
         "argv": ["train", f"--model={two_heads / 'two_heads.keras'}", f"--data={shards}",
                  f"--val_data={two_heads / 'val.npz'}", "--num_classes=5", "--head=digit",
                  "--loss_weights=digit=1,size=0.5", "--unfreeze=all", "--epochs=3", "--lr=3e-3",
                  "--augment=flip", f"--output_dir={heads_run}"]},
        {"name": "two_columns",
         "argv": ["train", f"--model={two_columns / 'cols.keras'}", f"--data={two_columns / 'train.csv'}",
                  f"--val_data={two_columns / 'val.csv'}", "--epochs=2", "--batch_size=16", "--lr=1e-2",
                  f"--output_dir={columns_run}"]}])

    def get(name):
        return root / name, launch.output(name)

    return get


@pytest.mark.multiworker
def test_two_inputs_two_outputs_on_2_workers(two_heads, trained, tmp_path):
    """Shards written by `distft shard`, validation on the .npz, a new digit head, the size loss
    weighed by 0.5, images augmented; then evaluate (2 workers) and predict."""
    folder, log = trained("two_heads")  # ended with exit code 0
    run = folder / "run"
    metrics = json.load(open(run / "metrics.json"))
    assert len(metrics["weights_checksums"]) == 2 and len(set(metrics["weights_checksums"])) == 1
    assert metrics["steps_run"][0] == metrics["steps_run"][1]  # each worker its share, equal steps
    keys = {"loss", "digit_loss", "digit_accuracy", "size_loss", "size_mean_absolute_error"}
    for part in ("train", "validation", "validation_before"):
        got = metrics[part]
        assert set(got) == keys, (part, got)
        assert got["loss"] == pytest.approx(got["digit_loss"] + 0.5 * got["size_loss"], rel=1e-4)
    assert metrics["validation"]["digit_loss"] < metrics["validation_before"]["digit_loss"]
    # digit's head is new (its default loss); size keeps its head and the file's loss
    assert "objective per output: digit: sparse_categorical_crossentropy (weight 1), metrics accuracy; " \
           "size: mse from the model file (weight 0.5), metrics mean_absolute_error" in log

    out = tmp_path / "eval.json"
    r = distft(["evaluate", f"--model={run / 'model.keras'}", f"--data={two_heads / 'val.npz'}",
                "--np=2", "--batch_size=7", f"--output={out}"])
    assert r.code == 0, r.out[-3000:]
    evaluated = json.load(open(out))
    for key in keys - {"loss"}:  # the run's last validation, exact over workers and batch sizes
        assert evaluated[key] == pytest.approx(metrics["validation"][key], rel=1e-4, abs=1e-6), key
    assert evaluated["loss"] == pytest.approx(evaluated["digit_loss"] + evaluated["size_loss"], rel=1e-4)

    r = distft(["predict", f"--model={run / 'model.keras'}", f"--data={two_heads / 'val.npz'}",
                f"--output={tmp_path / 'pred.npz'}"])
    assert r.code == 0, r.out[-3000:]
    pred = np.load(tmp_path / "pred.npz")
    assert sorted(pred) == ["digit", "size"]
    assert pred["digit"].shape == (180, 5) and pred["size"].shape == (180, 1)
    val = np.load(two_heads / "val.npz")
    accuracy = float(np.mean(pred["digit"].argmax(1) == val["digit"]))
    assert accuracy == pytest.approx(metrics["validation"]["digit_accuracy"], abs=1e-6)

    import keras

    base = keras.models.load_model(two_heads / "two_heads.keras")
    tuned = keras.models.load_model(run / "model.keras")
    assert not np.allclose(base.get_layer("conv").get_weights()[0], tuned.get_layer("conv").get_weights()[0])


TWO_COLUMNS = """
import sys, keras
keras.utils.set_random_seed(0)
a, b = keras.Input((3,), name="a"), keras.Input((1,), name="b")
h = keras.layers.Dense(8, activation="relu", name="h")(keras.layers.Concatenate()([a, b]))
keras.Model([a, b], [keras.layers.Dense(3, activation="softmax", name="kind")(h),
                     keras.layers.Dense(1, name="score")(h)]).save(sys.argv[1])
assert "distft" not in sys.modules
"""


def _table(path, n: int, seed: int, names=("cat", "dog", "eel")) -> None:
    """CSV columns note (ignored), a_0..a_2, b (inputs), kind (class names), score (a value)."""
    rng = np.random.default_rng(seed)
    rows = ["note,a_0,a_1,a_2,b,kind,score"]
    for i in range(n):
        x = rng.normal(size=4)
        rows.append(f"n{i},{x[0]:.3f},{x[1]:.3f},{x[2]:.3f},{x[3]:.3f},{names[int(np.argmax(x[:3])) % len(names)]},"
                    f"{2 * x[3]:.3f}")
    path.write_text("\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def two_columns(tmp_path_factory):
    """cols.keras (inputs a (3,), b (1,); outputs kind (softmax 3), score), train.csv, val.csv."""
    folder = tmp_path_factory.mktemp("two_columns")
    subprocess.run([sys.executable, "-c", TWO_COLUMNS, str(folder / "cols.keras")], check=True)
    _table(folder / "train.csv", 400, 0)
    _table(folder / "val.csv", 60, 1, names=("dog", "eel"))  # no cat: numbered as the training data
    return folder


def test_csv_columns_bind_to_the_inputs_and_outputs(two_columns, two_heads, tmp_path):
    import keras

    from distft.data.dataset import Source, load
    from distft.errors import DistftError

    model = keras.models.load_model(two_columns / "cols.keras")
    ds = load(Source.open(str(two_columns / "train.csv"), holdout=0.25, named_csv=True), model).train  # no 'label' column
    assert ds.layout.outputs == ("kind", "score") and ds.output_classes == {"kind": ("cat", "dog", "eel")}
    assert ds.counts.ranges["kind"] == (0.0, 2.0)
    x, y = next(iter(ds.stream(0, 1, 400, (), training=False)))
    table = np.genfromtxt(two_columns / "train.csv", delimiter=",", names=True, dtype=None, encoding=None)
    train = table[[(i * 7919) % 10000 >= 2500 for i in range(400)]]  # the holdout's tags
    assert np.allclose(x["a"], np.stack([train["a_0"], train["a_1"], train["a_2"]], 1))
    assert x["b"].shape == (len(train), 1) and np.allclose(y["score"], train["score"])
    assert list(y["kind"].numpy()) == [["cat", "dog", "eel"].index(k) for k in train["kind"]]

    val = Source.open(str(two_columns / "val.csv"), named_csv=True)
    assert load(val, model).train.output_classes == {"kind": ("dog", "eel")}
    val = load(Source.open(str(two_columns / "train.csv"), named_csv=True), model, val=val).val
    _, y = next(iter(val.stream(0, 1, 60, (), training=False)))
    assert set(y["kind"].numpy()) == {1, 2}  # dog and eel keep the training data's ids

    inputs = tmp_path / "inputs.csv"  # predict: the inputs alone
    inputs.write_text("b,a_0,a_1,a_2\n1,2,3,4\n")
    only = load(Source.open(str(inputs), named_csv=True), model, targets=False).train
    x, y = next(iter(only.stream(0, 1, 1, (), training=False)))
    assert x["a"].numpy().tolist() == [[2, 3, 4]] and x["b"].numpy().tolist() == [[1]] and y == {}
    for header, message in (
            ("a_1,a_2,b,kind,score", r"has no columns 'a_0' .. 'a_2' for the model's input 'a' \(3 values a "
                                     r"record\): name the columns 'a_0' .. 'a_2'"),
            ("a_0,a_1,b,kind,score", r"has no columns 'a_0' .. 'a_2' for the model's input 'a' \(3 values a "
                                     r"record\) \(it has columns 'a_0' .. 'a_1'\)"),
            ("a_0,a_1,a_2,b,kind", r"has no column 'score' for the model's output 'score'")):
        bad = tmp_path / "bad.csv"
        bad.write_text(header + "\n" + ",".join(["1"] * len(header.split(","))) + "\n")
        with pytest.raises(DistftError, match=message):
            load(Source.open(str(bad), named_csv=True), model)
    with pytest.raises(DistftError, match=r"the model's input 'image' takes images \(8, 8, 1\), which CSV "
                                          "columns do not hold: write .npz arrays"):
        load(Source.open(str(two_columns / "train.csv"), named_csv=True),
             keras.models.load_model(two_heads / "two_heads.keras"))
    one = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])  # one input: the one-input error
    with pytest.raises(DistftError, match="train.csv: no label column 'label' .*: pass --label"):
        load(Source.open(str(two_columns / "train.csv"), named_csv=True), one)
    with pytest.raises(DistftError, match="no label column 'label'"):  # without named_csv: at once
        Source.open(str(two_columns / "train.csv"))


@pytest.mark.multiworker
def test_csv_columns_on_2_workers(trained):
    """CSV without a label column, validated on CSV with class names numbered as the training
    data's; each output's loss in metrics.json, the same weights on both ranks."""
    folder, _ = trained("two_columns")  # ended with exit code 0
    run = folder / "run"
    metrics = json.load(open(run / "metrics.json"))
    assert len(metrics["weights_checksums"]) == 2 and len(set(metrics["weights_checksums"])) == 1
    for part in ("train", "validation", "validation_before"):
        assert {"kind_loss", "kind_accuracy", "score_loss"} <= set(metrics[part]), metrics[part]
    assert metrics["validation"]["score_loss"] < metrics["validation_before"]["score_loss"]

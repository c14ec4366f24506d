"""The data layouts users bring, each in a real file, fine-tuned on 2 real workers: targets of
any shape, image arrays, class names, image folders, other tools' TFRecords; and the one-line
errors for data that does not fit. The fine-tunes run one after another in one 2-worker launch
(the module's `trained` fixture, tests/cli_runner.py), each test asserting on its own runs."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import SharedLaunch, distft

pytestmark = pytest.mark.multiworker
NAMES = ["five", "six", "seven", "eight", "nine"]  # digits 5-9; sorted: eight five nine seven six


@pytest.fixture(scope="module")
def digits():
    """The demo's digits 5-9 (the demo's fine-tuning task): uint8 8x8 images, labels 0-4."""
    from distft.demo import load_digits

    d = load_digits()
    keep = d.target >= 5
    rng = np.random.default_rng(0)
    order = rng.permutation(np.flatnonzero(keep))
    x = np.round(d.images[order] * 255 / 16).astype(np.uint8)[..., None]
    return x, d.target[order] - 5


def train_argv(args, out):
    """`distft train` with the layouts' defaults (3 epochs, batch 16, seed 1, lr 0.005)."""
    defaults = ["--epochs=3", "--batch_size=16", "--seed=1", "--lr=0.005"]
    given = {a.split("=")[0] for a in args}
    return ["train", *args, f"--output_dir={out}", *(d for d in defaults if d.split("=")[0] not in given)]


# The data of each fine-tune below, written into its own folder: (name, writer). A writer
# takes (folder, demo_data, digits) and returns the run's `distft train` arguments.
LAYOUTS = []


def layout(name):
    def register(writer):
        LAYOUTS.append((name, writer))
        return writer
    return register


@pytest.fixture(scope="module")
def trained(demo_data, digits, tmp_path_factory):
    """Every fine-tune of this module on 2 workers, in two launches; `trained(name)` is the run's
    folder, metrics and output (the workers' weights agree)."""
    import pathlib

    root = pathlib.Path(tmp_path_factory.mktemp("layouts"))
    runs = []
    for name, writer in LAYOUTS:
        folder = root / name
        folder.mkdir()
        runs.append({"name": name, "launch": len(runs) % 2,  # two launches, side by side
                     "argv": train_argv(writer(folder, demo_data, digits), folder / "run")})
    launch = SharedLaunch(str(root), runs)

    def get(name):
        out = launch.output(name)
        folder = root / name
        metrics = json.load(open(folder / "run" / "metrics.json"))
        assert len(set(metrics["weights_checksums"])) == 1  # the workers' weights agree
        return folder, metrics, out

    return get


def improved(metrics, key="loss"):
    before, after = metrics["validation_before"][key], metrics["validation"][key]
    assert after < before, (before, after)
    return before, after


def objective_line(out):
    return next(l for l in out.splitlines() if "objective:" in l)


def test_regression_npz_with_2d_targets_then_evaluate(tmp_path):
    """The issue's acceptance: a 2-input, 1-output regression net in .h5, y of shape (N, 1),
    no --output_dir; the default loss is MSE; evaluate shows a lower loss than the base."""
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1200, 2)).astype(np.float32)
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.layers.Input((2,)), keras.layers.Dense(16, activation="tanh"),
                             keras.layers.Dense(1)])
    base.compile("adam", "mse")
    base.fit(x, x[:, :1] + x[:, 1:], epochs=20, verbose=0)  # pretrained on y = x0 + x1
    base.save(tmp_path / "base_model.h5")
    y = (x[:, :1] - 0.5 * x[:, 1:] + 0.05 * rng.normal(size=(1200, 1))).astype(np.float32)
    np.savez(tmp_path / "xy.npz", x=x[:1000], y=y[:1000])
    np.savez(tmp_path / "held_out.npz", x=x[1000:], y=y[1000:])
    result = distft(["train", "--np=2", "--model=base_model.h5", "--data=xy.npz", "--val_split=0.2",
                     "--epochs=8", "--lr=0.01"], cwd=str(tmp_path), timeout=400)
    assert result.code == 0, result.out[-3000:]
    assert "objective: mean_squared_error, metrics mean_absolute_error" in result.out
    [run] = glob.glob(str(tmp_path / "runs" / "base_model-*"))
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    improved(metrics)
    losses = {}
    for model in ("base_model.h5", os.path.join(run, "model.keras")):
        r = distft(["evaluate", f"--model={model}", "--data=held_out.npz"], cwd=str(tmp_path))
        assert r.code == 0, r.out[-2000:]
        line = next(l for l in r.lines if "held_out.npz (200 records): loss" in l)
        losses[model] = float(line.split("loss ")[1].split()[0])
    base_loss, tuned_loss = losses.values()
    assert tuned_loss < 0.5 * base_loss, losses


@layout("ids")
def class_ids(folder, demo_data, digits):
    x, y = digits
    np.savez(folder / "ids.npz", x=x, y=y)
    return [f"--model={demo_data['model']}", f"--data={folder / 'ids.npz'}", "--val_split=0.25",
            "--num_classes=5"]


@layout("onehot")
def one_hot_rows(folder, demo_data, digits):
    x, y = digits
    with tf.io.TFRecordWriter(str(folder / "onehot.tfrecord")) as w:
        for img, label in zip(x, y):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=img.ravel() / 255.0)),
                "y": tf.train.Feature(float_list=tf.train.FloatList(value=np.eye(5)[label])),
            })).SerializeToString())
    return [f"--model={demo_data['model']}", f"--data={folder / 'onehot.tfrecord'}", "--val_split=0.25",
            "--num_classes=5"]


def test_one_hot_and_class_ids_reach_the_same_accuracy(trained):
    """Class ids (N,) in an .npz; the same as one-hot rows, a fixed-length float list `y` in a
    TFRecord."""
    accuracy = {}
    for name, loss in (("ids", "sparse_categorical_crossentropy"), ("onehot", "categorical_crossentropy")):
        _, metrics, out = trained(name)
        assert f"objective: {loss}, metrics accuracy" in objective_line(out)
        improved(metrics)
        accuracy[name] = metrics["validation"]["accuracy"]
    assert accuracy["ids"] > 0.6 and abs(accuracy["ids"] - accuracy["onehot"]) < 0.05, accuracy


@layout("uint8_images")
def uint8_images(folder, demo_data, digits):
    x, y = digits
    big = np.repeat(np.repeat(x[..., 0], 2, axis=1), 2, axis=2)  # (N, 16, 16): grey, no channel axis
    np.savez(folder / "img.npz", x=big, y=y)
    return [f"--model={demo_data['model']}", f"--data={folder / 'img.npz'}", "--val_split=0.25",
            "--num_classes=5", "--augment=crop"]


def test_uint8_image_array_is_scaled_resized_and_augmented(trained):
    """(N, 16, 16) uint8 images for a model of (8, 8, 1) inputs in [0, 1]."""
    _, metrics, _ = trained("uint8_images")
    improved(metrics)
    assert metrics["train"]["loss"] < 2.0 and metrics["validation"]["accuracy"] > 0.6, metrics


@layout("multi_label")
def multi_label(folder, demo_data, digits):
    import keras

    rng = np.random.default_rng(1)
    x = rng.normal(size=(800, 6)).astype(np.float32)
    y = (x[:, :3] + 0.3 * x[:, 3:] > 0).astype(np.float32)  # 3 labels, any number of them on
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.layers.Input((6,)), keras.layers.Dense(16, activation="relu"),
                             keras.layers.Dense(3, activation="sigmoid")])
    base.save(folder / "tagger.keras")
    np.savez(folder / "tags.npz", x=x, y=y)
    return [f"--model={folder / 'tagger.keras'}", f"--data={folder / 'tags.npz'}", "--val_split=0.25",
            "--lr=0.01"]


def test_multi_label_targets_under_a_sigmoid_head(trained):
    _, metrics, out = trained("multi_label")
    assert "objective: binary_crossentropy, metrics binary_accuracy" in objective_line(out)
    improved(metrics)
    assert metrics["validation"]["binary_accuracy"] > 0.8, metrics


@layout("csv_regression")
def csv_regression(folder, demo_data, digits):
    import keras

    rng = np.random.default_rng(2)
    x = rng.normal(size=(800, 4))
    y = x @ rng.normal(size=(4, 3))
    keras.utils.set_random_seed(0)
    base = keras.Sequential([keras.layers.Input((4,)), keras.layers.Dense(3)])
    base.save(folder / "reg.keras")
    rows = ["f0,a,f1,b,f2,c,f3"] + [",".join(f"{v:.5f}" for v in (r[0], t[0], r[1], t[1], r[2], t[2], r[3]))
                                    for r, t in zip(x, y)]
    (folder / "d.csv").write_text("\n".join(rows) + "\n")
    return [f"--model={folder / 'reg.keras'}", f"--data={folder / 'd.csv'}", "--label=a,b,c",
            "--val_split=0.25", "--lr=0.02"]


def test_multi_target_regression_from_csv_columns(trained):
    _, metrics, out = trained("csv_regression")
    assert "objective: mean_squared_error" in objective_line(out)
    before, after = improved(metrics)
    assert after < 0.3 * before


@layout("csv_class_names")
def csv_class_names(folder, demo_data, digits):
    x, y = digits
    rows = [",".join([f"p{i}" for i in range(64)] + ["digit"])]
    rows += [",".join([f"{v / 255:.4f}" for v in xi.ravel()] + [NAMES[yi]]) for xi, yi in zip(x, y)]
    (folder / "d.csv").write_text("\n".join(rows) + "\n")
    (folder / "few.csv").write_text("\n".join(rows[:41]) + "\n")
    return [f"--model={demo_data['model']}", f"--data={folder / 'd.csv'}", "--label=digit",
            "--val_split=0.25", "--num_classes=5"]


def test_csv_class_names_and_predictions_named(trained, digits, tmp_path):
    x, y = digits
    folder, metrics, log = trained("csv_class_names")
    out = folder / "run"
    assert json.load(open(out / "classes.json"))["class_names"] == sorted(NAMES)
    improved(metrics)
    assert metrics["validation"]["accuracy"] > 0.6
    r = distft(["predict", f"--model={out / 'model.keras'}", f"--data={folder / 'few.csv'}",
                "--label=digit", f"--output={tmp_path / 'p.csv'}"])
    assert r.code == 0, r.out[-2000:]
    table = (tmp_path / "p.csv").read_text().splitlines()
    assert table[0] == "class," + ",".join(sorted(NAMES)) and len(table) == 41
    right = sum(line.split(",")[0] == NAMES[yi] for line, yi in zip(table[1:], y[:40]))
    assert right >= 24, table[:5]


@layout("image_folder")
def image_folder(folder, demo_data, digits):
    x, y = digits
    for i, (img, label) in enumerate(zip(x[:600], y[:600])):
        classes = folder / "images" / NAMES[label]
        classes.mkdir(parents=True, exist_ok=True)
        (classes / f"{i}.png").write_bytes(tf.io.encode_png(img).numpy())
    return [f"--model={demo_data['model']}", f"--data={folder / 'images'}", "--val_split=0.25",
            "--num_classes=5", "--augment=flip"]


def test_image_folder_trains_directly(trained):
    folder, metrics, log = trained("image_folder")
    out = folder / "run"
    assert "classes: eight, five, nine, seven, six" in log
    assert json.load(open(out / "classes.json"))["class_names"] == sorted(NAMES)
    assert metrics["steps_run"] == [[metrics["steps_per_epoch"]] * 3] * 2
    improved(metrics)


def write_other_tool_tfrecords(x, y, path, label_offset=1):
    """The classic ImageNet layout: PNG under image/encoded, 1-based image/class/label."""
    with tf.io.TFRecordWriter(str(path)) as w:
        for img, label in zip(x, y):
            f = tf.train.Feature
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image/encoded": f(bytes_list=tf.train.BytesList(value=[tf.io.encode_png(img).numpy()])),
                "image/format": f(bytes_list=tf.train.BytesList(value=[b"png"])),
                "image/class/label": f(int64_list=tf.train.Int64List(value=[int(label) + label_offset])),
            })).SerializeToString())


@layout("other_tools_tfrecords")
def other_tools_tfrecords(folder, demo_data, digits):
    x, y = digits
    write_other_tool_tfrecords(x, y, folder / "other.tfrecord", label_offset=0)
    return [f"--model={demo_data['model']}", f"--data={folder / 'other.tfrecord'}",
            "--x_key=image/encoded", "--y_key=image/class/label", "--val_split=0.25", "--num_classes=5"]


def test_other_tools_tfrecords_with_keys(trained):
    _, metrics, _ = trained("other_tools_tfrecords")
    improved(metrics)
    assert metrics["validation"]["accuracy"] > 0.6


# --- data that does not fit: one line, naming what and how to fix it (one process) ------------

def one_error(result, expected):
    assert result.code == 2, result.out[-3000:]
    errors = [l for l in result.lines if "distft: error:" in l]
    assert len(errors) == 1 and expected in errors[0], result.out[-3000:]
    assert "Traceback" not in result.out
    return errors[0]


def test_target_width_that_does_not_fit_the_output(demo_data, digits, tmp_path):
    x, y = digits
    np.savez(tmp_path / "d.npz", x=x, y=np.eye(5, dtype=np.float32)[y])
    r = distft(["train", f"--model={demo_data['model']}", f"--data={tmp_path / 'd.npz'}",
                "--num_classes=4", f"--output_dir={tmp_path / 'run'}"])
    one_error(r, "--data targets have shape (N, 5) but the model's output is (None, 4): give "
                 "targets of width 4, or pass --num_classes=5 for a new head")
    assert not (tmp_path / "run").exists()


def test_label_column_mixing_numbers_and_names(demo_data, tmp_path):
    rows = ["a,b,label"] + [f"{i},{i},{'two' if i % 2 else 'seven'}" for i in range(300)]
    rows[200] = "1,2,3"  # past the rows the schema is learnt from
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    r = distft(["train", f"--model={demo_data['model']}", f"--data={tmp_path / 'd.csv'}",
                f"--output_dir={tmp_path / 'run'}"])
    one_error(r, "d.csv:201: label column 'label' mixes numbers ('3') and class names: use one "
                 "kind in the whole column")


def test_missing_tfrecord_keys_list_the_file_keys(demo_data, digits, tmp_path):
    x, y = digits
    write_other_tool_tfrecords(x[:20], y[:20], tmp_path / "other.tfrecord")
    r = distft(["train", f"--model={demo_data['model']}", f"--data={tmp_path / 'other.tfrecord'}",
                f"--output_dir={tmp_path / 'run'}"])
    line = one_error(r, "records have no feature 'x' or 'y'; they have image/class/label "
                        "(int64_list[1]), image/encoded (bytes_list[1]), image/format (bytes_list[1])")
    assert line.endswith("pass --x_key=image/encoded --y_key=image/class/label")


def test_npz_content_that_does_not_fit_is_not_called_corrupt(demo_data, digits, tmp_path):
    x, y = digits
    np.savez(tmp_path / "a.npz", x=x[:100], y=y[:100])
    np.savez(tmp_path / "b.npz", x=x[100:200], y=np.eye(5)[y[100:200]])
    r = distft(["train", f"--model={demo_data['model']}", f"--data={tmp_path}/*.npz",
                "--num_classes=5", f"--output_dir={tmp_path / 'run'}"])
    line = one_error(r, "b.npz: array 'y' has rows of shape (5,) and type float64 but")
    assert "damaged" not in line and "corrupt" not in line
    (tmp_path / "b.npz").write_bytes((tmp_path / "a.npz").read_bytes()[:3000])  # really truncated
    r = distft(["train", f"--model={demo_data['model']}", f"--data={tmp_path}/*.npz",
                "--num_classes=5", f"--output_dir={tmp_path / 'run'}"])
    one_error(r, "b.npz: damaged npz file")

"""Real multi-worker fine-tuning: horovodrun over Gloo and MPI, and distft --np. The fine-tunes
on data of their own run one after another in one 2-worker launch (`trained`)."""
import json
import os

import numpy as np
import pytest
import keras
import tensorflow as tf

from conftest import ACCEPTANCE, DISTFT, SharedLaunch, Started, horovodrun, horovodrun_command
from distft.demo import write_tfrecords

pytestmark = pytest.mark.multiworker


def metrics_of(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f)


def check_fine_tuned(folder, run_dir, result):
    """Both ranks end equal; frozen layers bit-identical to the base; trainable ones changed."""
    assert result.code == 0, result.out[-3000:]
    m = metrics_of(run_dir)
    assert m["workers"] == 2 and len(m["weights_checksums"]) == 2
    assert len(set(m["weights_checksums"])) == 1
    assert "weights identical on all 2 workers" in result.out
    base = keras.models.load_model(os.path.join(folder, "base_model.keras"), compile=False)
    tuned = keras.models.load_model(os.path.join(run_dir, "model.keras"), compile=False)
    for name in ("conv1", "bn1"):  # frozen: before the last two weighted layers
        for a, b in zip(base.get_layer(name).get_weights(), tuned.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)
    for name in ("conv2", "features"):  # last:2 of the kept layers
        changed = [not np.array_equal(a, b) for a, b in
                   zip(base.get_layer(name).get_weights(), tuned.get_layer(name).get_weights())]
        assert all(changed), name
    assert tuned.get_layer("distft_head").output.shape == (None, 5)
    assert "classes" not in [l.name for l in tuned.layers]
    assert m["epochs"] == 3 and m["train"]["accuracy"] > 0.5
    return m


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_acceptance_command_under_horovodrun(demo_data, acceptance, controller):
    run = acceptance("horovodrun", controller)  # shared (test_performance_defaults.py)
    m = check_fine_tuned(demo_data["folder"], run.run_dir, run.result)
    assert m["launcher"] == ("horovodrun" if controller == "gloo" else "mpirun")


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_acceptance_command_with_np(demo_data, acceptance, controller):
    run = acceptance("np", controller)  # shared (test_performance_defaults.py)
    result = run.result
    check_fine_tuned(demo_data["folder"], run.run_dir, result)
    assert "<stdout>" not in result.out  # the launcher's prefixes are stripped
    assert result.out.count("distft 2 worker(s)") == 1  # one log, from rank 0


def uneven_shards(demo_data, folder, sizes):
    from distft.demo import load_digits

    d = load_digits()
    keep = d.target >= 5
    x, y = (d.images[keep] / 16.0).astype(np.float32), d.target[keep] - 5
    os.makedirs(folder, exist_ok=True)
    start = 0
    for i, n in enumerate(sizes):
        write_tfrecords(x[start:start + n], y[start:start + n], os.path.join(folder, f"part-{i}-{{}}.tfrecord"), 1)
        start += n
    return folder


UNEVEN = {"5-uneven-files": [400, 200, 80, 30, 6], "1-file": [120]}
# One validation record: rank 1 has none, and joins the summed metric states with zeros.
X_VAL, Y_VAL = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 8, 8, 1), np.array([3])


def uneven_run(demo_data, folder, sizes):
    data = uneven_shards(demo_data, os.path.join(folder, "data"), sizes)
    val = write_tfrecords(X_VAL, Y_VAL, os.path.join(folder, "val-{}.tfrecord"), 1)[0]
    return ["train", f"--model={demo_data['model']}", f"--data={data}", "--num_classes=5",
            "--epochs=2", "--batch_size=16", f"--val_data={val}", f"--output_dir={folder}/run"]


def mobilenet_run(folder):
    """The Keras 3 acceptance case: MobileNetV2 as one nested layer, a new 10-class head."""
    keras.utils.set_random_seed(0)
    backbone = keras.applications.MobileNetV2(input_shape=(32, 32, 3), alpha=0.35,
                                              include_top=False, weights=None, pooling="avg")
    images = keras.Input((32, 32, 3), name="images")
    model = keras.Model(images, keras.layers.Dense(4, activation="softmax", name="classes")(
        backbone(images)), name="mnv2_classifier")
    path = os.path.join(folder, "mnv2.keras")
    model.save(path)
    rng = np.random.default_rng(0)
    write_tfrecords(rng.random((128, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, 128),
                    os.path.join(folder, "img-{}.tfrecord"), 4)
    return ["train", f"--model={path}", f"--data={folder}/img-*.tfrecord",
            "--unfreeze=from:block_15_expand", "--num_classes=10", "--epochs=1",
            "--batch_size=16", f"--output_dir={folder}/run"]


@pytest.fixture(scope="module")
def trained(demo_data, tmp_path_factory):
    """The fine-tunes below on 2 workers (horovodrun, Gloo), in two launches side by side:
    `trained(name)` is the run's folder (its data beside `run`) and output."""
    root = str(tmp_path_factory.mktemp("trained"))
    runs = []
    for name, sizes in UNEVEN.items():
        os.makedirs(os.path.join(root, name))
        runs.append({"name": name, "argv": uneven_run(demo_data, os.path.join(root, name), sizes)})
    os.makedirs(os.path.join(root, "mobilenet"))
    runs.append({"name": "mobilenet", "launch": 1, "argv": mobilenet_run(os.path.join(root, "mobilenet"))})
    launch = SharedLaunch(root, runs)

    def get(name):
        return os.path.join(root, name), launch.output(name)

    return get


@pytest.mark.parametrize("sizes", UNEVEN)
def test_uneven_shards_equal_steps_no_hang(trained, sizes):
    folder, _ = trained(sizes)  # ended with exit code 0
    run_dir = os.path.join(folder, "run")
    x_val, y_val = X_VAL, Y_VAL
    m = metrics_of(run_dir)
    tuned = keras.models.load_model(os.path.join(run_dir, "model.keras"), compile=False)
    tuned.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert m["validation"] == pytest.approx(tuned.evaluate(x_val, y_val, verbose=0, return_dict=True),
                                            abs=1e-5)
    total = sum(UNEVEN[sizes])
    assert m["steps_per_epoch"] == total // 32  # the partial global batch is dropped
    # Each rank ran exactly steps_per_epoch steps in every epoch (counted by the ranks themselves).
    assert m["steps_run"] == [[m["steps_per_epoch"]] * 2] * 2


def test_resume_continues_at_the_right_epoch(demo_data, tmp_path):
    folder = demo_data["folder"]
    run_dir = str(tmp_path / "run")
    args = ["train", "--model=base_model.keras", "--data=shards/train-*.tfrecord", "--num_classes=5",
            "--unfreeze=last:2", f"--output_dir={run_dir}", "--keep_checkpoints=0"]
    first = horovodrun([*args, "--epochs=2"], cwd=folder)
    assert first.code == 0, first.out[-3000:]
    os.remove(os.path.join(run_dir, "metrics.json"))  # as if stopped after epoch 2 of 4
    os.remove(os.path.join(run_dir, "model.keras"))
    refused = horovodrun([*args, "--epochs=4"], cwd=folder, timeout=120)
    assert refused.code != 0 and "pass --resume to continue it" in refused.out
    second = horovodrun([*args, "--epochs=4", "--resume"], cwd=folder)
    assert second.code == 0, second.out[-3000:]
    assert "resuming from" in second.out and "2 epoch(s) done, 2 to go" in second.out
    assert "epoch 3/4" in second.out and "epoch 1/4" not in second.out
    m = metrics_of(run_dir)
    assert (m["initial_epoch"], m["epochs"]) == (2, 4)
    ckpts = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    assert ckpts == ["epoch-0001", "epoch-0002", "epoch-0003", "epoch-0004"]
    # The optimizer state came back: the step counter continued from epoch 2's.
    reader = tf.train.load_checkpoint(os.path.join(run_dir, "checkpoints", "epoch-0004", "ckpt"))
    iters = [k for k in reader.get_variable_to_shape_map() if k.startswith("optimizer/_iterations")]
    assert reader.get_tensor(iters[0]) == 4 * m["steps_per_epoch"]


def test_finished_run_is_not_overwritten(demo_data, acceptance):
    folder = demo_data["folder"]
    finished = acceptance("horovodrun")  # the acceptance run (shared): the same command again
    assert finished.result.code == 0, finished.result.out[-3000:]
    run_dir = finished.run_dir
    args = [*ACCEPTANCE, f"--output_dir={run_dir}"]
    before = open(os.path.join(run_dir, "metrics.json")).read()
    again = horovodrun(args, cwd=folder, timeout=120)
    assert again.code != 0
    errors = [l for l in again.lines if "error:" in l]
    assert len(errors) == 1 and "holds a finished run: pass --overwrite" in errors[0]
    assert not [l for l in again.lines if "]<std" in l and "Traceback" in l]  # none from a worker
    assert open(os.path.join(run_dir, "metrics.json")).read() == before


def test_evaluate_and_predict_split_across_workers(demo_data, tmp_path):
    folder = demo_data["folder"]
    model = demo_data["model"]
    val = demo_data["val_data"]
    # Evaluate on 3 of the 4 shards: 2 workers read 2 files and 1 (uneven shares).
    data = os.path.join(folder, "shards", "train-0[0-2].tfrecord")
    names = ["accuracy", "auc", "precision", "recall", "f1_score", "mae"]
    started = [  # side by side
        Started([DISTFT, "predict", f"--model={model}", f"--data={val}", f"--output={tmp_path}/one.npy"]),
        Started(horovodrun_command(["predict", f"--model={model}", f"--data={demo_data['data']}",
                                    f"--output={tmp_path}/two.npy"])),
        *(Started([DISTFT, "evaluate", f"--model={model}", f"--data={data}", f"--metrics={','.join(names)}",
                   f"--np={n}", f"--output={tmp_path}/eval{n}.json"]) for n in (1, 2))]
    single, double, *evaluated = (s.result() for s in started)
    assert single.code == 0, single.out[-2000:]
    assert double.code == 0, double.out[-2000:]
    ref = keras.models.load_model(model, compile=False)
    import glob

    records = tf.data.TFRecordDataset(sorted(glob.glob(demo_data["data"])))
    spec = {"x": tf.io.FixedLenFeature([64], tf.float32)}
    xs = np.stack([tf.io.parse_single_example(r, spec)["x"].numpy().reshape(8, 8, 1) for r in records])
    np.testing.assert_allclose(np.load(f"{tmp_path}/two.npy"), ref.predict(xs, verbose=0), atol=1e-5)
    assert np.load(f"{tmp_path}/one.npy").shape == (demo_data["val_records"], 5)

    figures = {}
    for n, result in zip((1, 2), evaluated):
        assert result.code == 0, result.out[-2000:]
        assert result.out.count("records): loss") == 1  # one log line, from rank 0
        with open(f"{tmp_path}/eval{n}.json") as f:
            figures[n] = json.load(f)
    assert set(figures[1]) == {"loss", *names}
    tolerance = 1e-5
    assert figures[2] == pytest.approx(figures[1], abs=tolerance)  # exact over both shares
    # Each rank's results weighted by its record count (the old way), computed here from the
    # two shares, miss the 1-worker figures by more than the tolerance where the metric is not
    # a mean.
    old = weighted_per_rank(model, data, names)
    for name in ("auc", "precision", "f1_score"):
        assert abs(old[name] - figures[1][name]) > tolerance, name
    assert old["loss"] == pytest.approx(figures[1]["loss"], abs=tolerance)


def weighted_per_rank(model_path, data, names):
    """Each of 2 workers' results on its own share, averaged weighted by record counts."""
    from distft.data.dataset import Source, load
    from distft.train.metrics import keras_metrics

    ds = load(Source.open(data)).train
    parts = []
    for rank in (0, 1):
        model = keras.models.load_model(model_path, compile=False)
        model.compile(loss="sparse_categorical_crossentropy", metrics=keras_metrics(names, model, ()))
        stream = ds.stream(rank, 2, 256, (8, 8, 1), training=False)
        parts.append((ds.share(rank, 2).records, model.evaluate(stream, verbose=0, return_dict=True)))
    assert parts[0][0] != parts[1][0]  # uneven shares
    total = sum(n for n, _ in parts)
    return {k: sum(n * r[k] for n, r in parts) / total for k in parts[0][1]}


def weights_by_layer(path: str) -> dict:
    from distft.model.unfreeze import flatten

    model = keras.models.load_model(path, compile=False)
    return {l.name: l.get_weights() for l in flatten(model) if l.weights}


def test_keras3_file_with_a_nested_mobilenet_backbone(trained):
    """The Keras 3 acceptance case: MobileNetV2 as one nested layer, unfrozen from
    block_15_expand inside it, a new 10-class head, 2 workers under horovodrun --gloo."""
    from distft.model.unfreeze import flatten

    folder, _ = trained("mobilenet")  # ended with exit code 0
    path, out = os.path.join(folder, "mnv2.keras"), os.path.join(folder, "run")
    [backbone] = [l for l in keras.models.load_model(path, compile=False).layers if isinstance(l, keras.Model)]
    rng = np.random.default_rng(1)
    m = metrics_of(out)
    assert len(m["weights_checksums"]) == 2 and len(set(m["weights_checksums"])) == 1
    before, after = weights_by_layer(path), weights_by_layer(os.path.join(out, "model.keras"))
    names = [l.name for l in flatten(backbone) if l.weights]
    first = names.index("block_15_expand")
    for name in names[:first] + [n for n in names[first:] if n.endswith("_BN")]:  # frozen
        for a, b in zip(before[name], after[name]):
            np.testing.assert_array_equal(a, b, err_msg=name)
    assert not np.array_equal(before["block_16_project"][0], after["block_16_project"][0])
    tuned = keras.models.load_model(os.path.join(out, "model.keras"))
    probabilities = tuned.predict(rng.random((3, 32, 32, 3), dtype=np.float32), verbose=0)
    assert probabilities.shape == (3, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)

"""distft shard: balanced shards from every source, a truthful manifest, safe interruption,
and training from a manifest."""
import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf

import distft
from distft.data.dataset import Source, load
from distft.data.manifest import Manifest, sha256
from distft.data.text_options import TextOptions
from distft.data.writer import open_source
from distft.demo import write_tfrecords
from distft.errors import DistftError
from conftest import DISTFT, Job, distft as run_distft


def records_of(folder):
    """Every record of the shards in `folder`, as parsed tf.train.Example feature dicts."""
    m = Manifest.load(str(folder))
    out = []
    for path in m.paths():
        for r in tf.data.TFRecordDataset(path, m.compression):
            feats = tf.train.Example.FromString(r.numpy()).features.feature
            out.append({k: (list(v.float_list.value) or list(v.int64_list.value)
                            or list(v.bytes_list.value)) for k, v in feats.items()})
    return m, out


def check_manifest(m, n):
    counts = m.counts()
    assert sum(counts) == n and max(counts) - min(counts) <= 1
    for shard, path in zip(m.shards, m.paths()):
        assert shard["sha256"] == sha256(path) and shard["bytes"] == os.path.getsize(path)
        assert sum(1 for _ in tf.data.TFRecordDataset(path, m.compression)) == shard["records"]


@pytest.fixture
def image_folder(tmp_path):
    rng = np.random.default_rng(0)
    pixels = {}
    for c, n in (("cat", 9), ("dog", 7), ("eel", 4)):
        os.makedirs(tmp_path / "imgs" / c)
        for i in range(n):
            img = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            data = tf.io.encode_png(img).numpy()
            (tmp_path / "imgs" / c / f"{i}.png").write_bytes(data)
            pixels[data] = (c, img)
    return tmp_path / "imgs", pixels


def test_image_folder_round_trip(image_folder, tmp_path):
    folder, pixels = image_folder
    distft.shard(str(folder), str(tmp_path / "out"), num_shards=3, seed=1, workers=2)
    m, recs = records_of(tmp_path / "out")
    check_manifest(m, 20)
    assert m.class_names == ["cat", "dog", "eel"]
    assert set(m.schema["features"]) == {"image", "y"} and m.schema["y_max"] == 2
    assert sorted(r["image"][0] for r in recs) == sorted(pixels)  # every image once
    for r in recs:
        name, img = pixels[r["image"][0]]
        assert m.class_names[r["y"][0]] == name
    # Through the training stream: decoded pixels are exactly the PNG's (same size: no resize).
    ds = load(Source.open(str(tmp_path / "out"))).train
    got = [(x, y) for xb, yb in ds.stream(0, 1, 5, (10, 12, 3), training=False)
           for x, y in zip(xb.numpy(), yb.numpy())]
    assert len(got) == 20
    want = sorted((name, img.tobytes()) for name, img in pixels.values())
    assert sorted((m.class_names[y], np.round(x * 255).astype(np.uint8).tobytes())
                  for x, y in got) == want


@pytest.mark.parametrize("source", ["npz", "csv", "tfrecord", "tfrecord-gzip"])
def test_balanced_shards_from_each_source(tmp_path, source):
    rng = np.random.default_rng(0)
    x, y = rng.random((103, 2, 3), dtype=np.float32), rng.integers(0, 4, 103)
    if source == "npz":
        np.savez(tmp_path / "d.npz", x=x, y=y)
        src = tmp_path / "d.npz"
    elif source == "csv":
        rows = [",".join(map(str, [*xi.ravel(), yi])) for xi, yi in zip(x, y)]
        (tmp_path / "d.csv").write_text("a,b,c,d,e,f,label\n" + "\n".join(rows) + "\n")
        src = tmp_path / "d.csv"
    else:
        write_tfrecords(x, y, str(tmp_path / "in-{}.tfrecord"), 2)
        src = tmp_path / "in-*.tfrecord"
    distft.shard(str(src), str(tmp_path / "out"), num_shards=4, seed=3,
                 compression="GZIP" if source.endswith("gzip") else "", workers=2)
    m, recs = records_of(tmp_path / "out")
    check_manifest(m, 103)
    assert m.schema["features"]["x"] == {"dtype": "float32", "shape": [6]}
    assert (m.schema["y_min"], m.schema["y_max"]) == (y.min(), y.max())
    got = sorted((tuple(np.float32(r["x"])), r["y"][0]) for r in recs)
    assert got == sorted((tuple(xi.ravel()), yi) for xi, yi in zip(x, y))
    # A second run with another seed sends records to other shards.
    distft.shard(str(src), str(tmp_path / "out2"), num_shards=4, seed=4, overwrite=True)
    assert records_of(tmp_path / "out2")[1] != recs


def test_existing_output_is_refused_without_overwrite(image_folder, tmp_path):
    folder, _ = image_folder
    out = str(tmp_path / "out")
    distft.shard(str(folder), out, num_shards=2)
    r = run_distft(["shard", f"--input={folder}", f"--output_dir={out}", "--num_shards=3"])
    assert r.code == 2 and r.lines == [f"distft: error: --output_dir={out} already holds shards "
                                       "and manifest.json: pass --overwrite to replace them, or "
                                       "choose another folder"]
    r = run_distft(["shard", f"--input={folder}", f"--output_dir={out}", "--num_shards=3",
                    "--overwrite"])
    assert r.code == 0, r.out
    assert len(Manifest.load(out).shards) == 3 and len(os.listdir(out)) == 4


def test_source_failing_midway_leaves_no_manifest(tmp_path):
    rows = [f"{i},{i % 3}" for i in range(3000)]
    rows[2500] = "oops,1"  # past the rows the schema is inferred from
    (tmp_path / "d.csv").write_text("a,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "out"
    r = run_distft(["shard", f"--input={tmp_path / 'd.csv'}", f"--output_dir={out}",
                    "--num_shards=2"])
    assert r.code == 2 and r.lines[-1].endswith("d.csv:2502: column 'a' is not numeric ('oops'): feature "
                                                 "columns must be numbers; if it is the label, pass --label=a")
    assert not (out / "manifest.json").exists() and os.listdir(out) == []
    (tmp_path / "d.csv").write_text("a,label\n" + "\n".join(rows[:2500]) + "\n")
    r = run_distft(["shard", f"--input={tmp_path / 'd.csv'}", f"--output_dir={out}",
                    "--num_shards=2"])
    assert r.code == 0, r.out
    check_manifest(Manifest.load(str(out)), 2500)


def test_killed_shard_run_leaves_no_manifest_and_a_rerun_works(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.random((60000, 32), dtype=np.float32),
             y=rng.integers(0, 10, 60000))
    out = tmp_path / "out"
    args = ["shard", f"--input={tmp_path / 'd.npz'}", f"--output_dir={out}", "--num_shards=4",
            "--workers=2"]
    job = Job([DISTFT, *args], str(tmp_path / "log"))
    job.wait_for("records (10%)")
    os.kill(job.proc.pid, signal.SIGKILL)  # the parent only: its writers notice and stop
    job.wait(60)
    for _ in range(100):
        if not any(f.startswith(".shard-") for f in os.listdir(out)):
            break
        import time
        time.sleep(0.2)
    assert not (out / "manifest.json").exists()
    assert not any(f.startswith("shard-") for f in os.listdir(out))
    r = run_distft(args + ["--overwrite"], timeout=400)
    assert r.code == 0, r.out
    check_manifest(Manifest.load(str(out)), 60000)


def test_manifest_counts_without_reading_and_size_check(tmp_path):
    x, y = np.random.default_rng(0).random((40, 6), dtype=np.float32), np.arange(40) % 5
    np.savez(tmp_path / "d.npz", x=x, y=y)
    distft.shard(str(tmp_path / "d.npz"), str(tmp_path / "out"), num_shards=3)
    m = Manifest.load(str(tmp_path / "out"))
    for path in m.paths():  # same sizes, unreadable contents: counting must not read them
        with open(path, "r+b") as f:
            f.write(b"\0" * os.path.getsize(path))
    for pattern in ("out", "out/shard-*.tfrecord"):
        ds = load(Source.open(str(tmp_path / pattern))).train
        assert list(ds.counts.train) == m.counts() and (ds.counts.y_min, ds.counts.y_max) == (0, 4)
    held = load(Source.open(str(tmp_path / "out"), holdout=0.25)).train
    counts = held.counts
    assert sum(counts.train) + sum(counts.held_out) == 40 and 0 < sum(counts.held_out) < 40
    with open(m.paths()[1], "ab") as f:
        f.write(b"x")
    with pytest.raises(DistftError, match="has .* bytes but manifest.json says"):
        Source.open(str(tmp_path / "out"))


def test_schema_mismatch_with_the_model_is_one_line(demo_data, tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 6), np.float32), y=np.arange(20) % 5)
    distft.shard(str(tmp_path / "d.npz"), str(tmp_path / "out"), num_shards=2)
    r = run_distft(["train", f"--model={demo_data['model']}", f"--data={tmp_path / 'out'}",
                    f"--output_dir={tmp_path / 'run'}", "--num_classes=5", "--epochs=1"])
    assert r.code == 2
    assert r.lines == ["distft: error: --data records have 6 features but the model's input "
                       "(8, 8, 1) needs 64: use data made for this model"]


@pytest.mark.multiworker
def test_uneven_manifest_same_steps_on_every_worker(demo_data, tmp_path):
    out = tmp_path / "shards"
    distft.shard(demo_data["data"], str(out), num_shards=3, seed=5)  # 2 workers: 2 files vs 1
    r = run_distft(["train", f"--model={demo_data['model']}", f"--data={out}",
                    f"--output_dir={tmp_path / 'run'}", "--num_classes=5", "--unfreeze=last:2",
                    "--epochs=3", "--batch_size=16", "--np=2"], timeout=400)
    assert r.code == 0, r.out
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    steps = metrics["steps_per_epoch"]
    assert steps == demo_data["train_records"] // 32
    assert metrics["steps_run"] == [[steps] * 3, [steps] * 3]


def test_verify_finds_a_changed_shard(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((30, 4), np.float32), y=np.arange(30) % 3)
    out = str(tmp_path / "out")
    distft.shard(str(tmp_path / "d.npz"), out, num_shards=2)
    r = run_distft(["shard", f"--output_dir={out}", "--verify"])
    assert r.code == 0 and "2 shards, 30 records: sizes and sha256 match" in r.out
    path = Manifest.load(out).paths()[1]
    data = bytearray(open(path, "rb").read())
    data[-5] ^= 1  # same size, other bytes
    open(path, "wb").write(bytes(data))
    r = run_distft(["shard", f"--output_dir={out}", "--verify"])
    assert r.code == 2 and r.lines == [f"distft: error: {path}: sha256 differs from manifest.json: "
                                       "the shard is corrupt; rewrite with distft shard --overwrite"]


def test_image_arrays_stay_images_and_class_names_stay_names(tmp_path):
    """uint8 image arrays are sharded as raw pixels and read back identical; a CSV of class
    names is sharded as ids with the names in the manifest."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (30, 6, 5, 3), dtype=np.uint8)
    y = np.eye(3, dtype=np.float32)[rng.integers(0, 3, 30)]  # one-hot rows
    np.savez(tmp_path / "img.npz", x=x, y=y)
    distft.shard(str(tmp_path / "img.npz"), str(tmp_path / "a"), num_shards=2)
    ds = load(Source.open(str(tmp_path / "a"))).train
    assert (ds.layout.x_kind, ds.layout.x_shape, ds.layout.x_dtype, ds.layout.y_shape) == \
        ("pixels", (6, 5, 3), "uint8", (3,))
    got = [(xb.numpy(), yb.numpy()) for xb, yb in ds.stream(0, 1, 50, (6, 5, 3), training=False,
                                                              preprocess="none")]
    assert sorted(map(bytes, np.round(got[0][0]).astype(np.uint8))) == sorted(map(bytes, x))
    assert sorted(map(tuple, got[0][1])) == sorted(map(tuple, y))

    names = ["two", "seven", "one"]
    rows = ["a,b,label"] + [f"{i},{-i},{names[i % 3]}" for i in range(30)]
    (tmp_path / "d.csv").write_text("\n".join(rows) + "\n")
    m = distft.shard(str(tmp_path / "d.csv"), str(tmp_path / "b"), num_shards=3)
    assert Manifest.load(str(tmp_path / "b")).class_names == ["one", "seven", "two"]
    _, records = records_of(tmp_path / "b")
    assert {(int(r["x"][0]) % 3, r["y"][0]) for r in records} == {(0, 2), (1, 1), (2, 0)}
    assert m.endswith("manifest.json")


def test_token_ids_need_a_model_and_text(tmp_path):
    """`--sequence_length` is for token ids (`--model`), and `--model` tokenizes text only: one
    error each, before any work (the token-id shards themselves: tests/test_language_model.py)."""
    (tmp_path / "t.jsonl").write_text('{"text": "a b"}\n')
    with pytest.raises(DistftError, match="--sequence_length is for token ids"):
        distft.shard(str(tmp_path / "t.jsonl"), str(tmp_path / "a"), num_shards=1,
                     text=TextOptions(sequence_length=8))
    np.savez(tmp_path / "xy.npz", x=np.zeros((4, 2), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(DistftError, match="--model tokenizes text and --input holds no text"):
        open_source(str(tmp_path / "xy.npz"), "label", 0, preprocessor=object())

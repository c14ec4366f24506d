"""Reading real files of every format: records, counts, holdout split, per-epoch streams,
image preprocessing, augmentation and caching, and clear errors."""
import os

import numpy as np
import pytest
import tensorflow as tf

from distft.data.dataset import Ready, Source, load
from distft.demo import write_tfrecords
from distft.errors import DistftError


def arrays(n=50, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 2, 3), dtype=np.float32), rng.integers(0, 4, n)


def all_records(ds: Ready, size=1, **kw):
    out = []
    for rank in range(size):
        for x, y in ds.stream(rank, size, batch_size=7, input_shape=(2, 3), training=False, **kw):
            out += list(zip(x.numpy().reshape(len(y), -1).tolist(), y.numpy().tolist()))
    return sorted(out)


def expected(x, y):
    return sorted(zip(x.reshape(len(y), -1).tolist(), y.tolist()))


@pytest.fixture
def three_formats(tmp_path):
    x, y = arrays()
    write_tfrecords(x, y, str(tmp_path / "tf-{}.tfrecord"), 3)
    np.savez(tmp_path / "a.npz", x=x[:20], y=y[:20])
    np.savez(tmp_path / "b.npz", x=x[20:], y=y[20:])
    header = ",".join([f"f{i}" for i in range(6)] + ["label"])
    rows = [",".join(map(str, list(xi.ravel()) + [yi])) for xi, yi in zip(x, y)]
    (tmp_path / "d.csv").write_text(header + "\n" + "\n".join(rows) + "\n")
    return tmp_path, x, y


@pytest.mark.parametrize("pattern", ["tf-*.tfrecord", "*.npz", "d.csv"])
@pytest.mark.parametrize("size", [1, 2, 3])
def test_every_record_once_over_all_workers(three_formats, pattern, size):
    folder, x, y = three_formats
    ds = load(Source.open(str(folder / pattern))).train
    counts = ds.counts
    assert sum(counts.train) == 50 and (counts.y_min, counts.y_max) == (y.min(), y.max())
    got = all_records(ds, size)
    assert len(got) == 50
    np.testing.assert_allclose(np.array([g[0] for g in got]), np.array([e[0] for e in expected(x, y)]),
                               rtol=1e-6)


def test_holdout_is_deterministic_disjoint_and_about_the_fraction(tmp_path):
    x, y = arrays(2000)
    write_tfrecords(x, y, str(tmp_path / "p-{}.tfrecord"), 2)
    train, val = load(Source.open(str(tmp_path), holdout=0.2))
    counts = train.counts
    assert sum(counts.train) + sum(counts.held_out) == 2000
    assert abs(sum(counts.held_out) - 400) <= 2
    a, b = all_records(train), all_records(val)
    assert len(a) == sum(counts.train) and len(b) == sum(counts.held_out)
    assert not set(map(str, a)) & set(map(str, b))
    assert all_records(load(Source.open(str(tmp_path), holdout=0.2)).val) == b


def test_training_stream_repeats_and_batches_are_full(tmp_path):
    x, y = arrays(10)
    write_tfrecords(x, y, str(tmp_path / "p-{}.tfrecord"), 1)
    ds = load(Source.open(str(tmp_path))).train
    batches = list(ds.stream(0, 1, 4, (2, 3), training=True).take(5))
    assert all(b[0].shape == (4, 2, 3) for b in batches)


def test_no_matching_files(tmp_path):
    with pytest.raises(DistftError, match="matches no data file"):
        Source.open(str(tmp_path / "*.tfrecord"))


def test_corrupt_tfrecord_names_the_file(tmp_path):
    x, y = arrays(30)
    write_tfrecords(x, y, str(tmp_path / "p-{}.tfrecord"), 2)
    path = tmp_path / "p-1.tfrecord"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    source = Source.open(str(tmp_path))
    with pytest.raises(DistftError, match="p-1.tfrecord: damaged tfrecord file"):
        load(source)


def test_csv_with_non_numeric_column(tmp_path):
    (tmp_path / "d.csv").write_text("a,b,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(DistftError, match=r"d.csv:3: column 'b' is not numeric \('oops'\)"):
        Source.open(str(tmp_path / "d.csv"))
    (tmp_path / "e.csv").write_text("a,b,target\n1,2,0\n")
    with pytest.raises(DistftError, match="no label column 'label'.*--label=COLUMN"):
        Source.open(str(tmp_path / "e.csv"))


def test_images_are_decoded_and_resized(tmp_path):
    img = np.zeros((10, 12, 3), np.uint8)
    img[..., 0] = 255
    png = tf.io.encode_png(img).numpy()
    with tf.io.TFRecordWriter(str(tmp_path / "img.tfrecord")) as w:
        for label in range(3):
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))})).SerializeToString())
    source = Source.open(str(tmp_path))
    assert source.layout.x_kind == "image"
    ds = load(source).train
    x, y = next(iter(ds.stream(0, 1, 3, (8, 8, 3), training=False)))
    assert x.shape == (3, 8, 8, 3) and y.numpy().tolist() == [0, 1, 2]
    np.testing.assert_allclose(x.numpy()[..., 0], 1.0)
    np.testing.assert_allclose(x.numpy()[..., 1], 0.0)


def image_records(tmp_path, n=12, shards=3):
    """n PNG images 10x12x3 with labels 0..n-1, in TFRecord shards; their pixel arrays."""
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (n, 10, 12, 3), dtype=np.uint8)
    for s in range(shards):
        with tf.io.TFRecordWriter(str(tmp_path / f"img-{s}.tfrecord")) as w:
            for i in range(s, n, shards):
                w.write(tf.train.Example(features=tf.train.Features(feature={
                    "image": tf.train.Feature(bytes_list=tf.train.BytesList(
                        value=[tf.io.encode_png(imgs[i]).numpy()])),
                    "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[i]))})).SerializeToString())
    ds = load(Source.open(str(tmp_path))).train
    return ds, imgs


def test_training_stream_gives_exact_steps_per_epoch_from_that_epochs_files(tmp_path):
    x, y = arrays(30)
    write_tfrecords(x, np.arange(30), str(tmp_path / "p-{}.tfrecord"), 5)  # file = y % 5
    ds = load(Source.open(str(tmp_path))).train
    from distft.data.sharding import assign

    stream = ds.stream(1, 2, batch_size=4, input_shape=(2, 3), training=True, seed=3, steps=5,
                       epochs=(2, 5), shuffle_buffer=4)
    batches = [b[1].numpy() for b in stream]
    assert len(batches) == 15 and all(len(b) == 4 for b in batches)  # epochs 2, 3, 4
    for e in range(3):
        files = {int(v) % 5 for b in batches[5 * e:5 * e + 5] for v in b}
        assert files == set(assign(list(ds.counts.train), 1, 2, epoch=2 + e, seed=3).files)


def labels_by_step(ds, rank, size, batch_size, **kw):
    stream = ds.stream(rank, size, batch_size, (2, 3), training=True, **kw)
    return [y.numpy() for _, y in stream.take(100)]  # a stream that does not end fails, not hangs


@pytest.mark.parametrize("files, size", [(1, 2), (3, 4)], ids=["1-file-2-workers", "3-files-4-workers"])
def test_n_workers_see_at_each_step_the_records_one_worker_sees_on_the_n_times_larger_batch(
        tmp_path, files, size):
    x, _ = arrays(101)  # 101 records: no global batch here divides them
    write_tfrecords(x, np.arange(101), str(tmp_path / "p-{}.tfrecord"), files)
    ds = load(Source.open(str(tmp_path))).train
    steps = 101 // (size * 4)
    one = labels_by_step(ds, 0, 1, size * 4, shuffle_buffer=0, epochs=(0, 3))
    ranks = [labels_by_step(ds, r, size, 4, shuffle_buffer=0, epochs=(0, 3)) for r in range(size)]
    assert len(one) == 3 * steps and all(len(r) == 3 * steps for r in ranks)
    for k in range(3 * steps):
        assert sorted(np.concatenate([r[k] for r in ranks]).tolist()) == sorted(one[k].tolist())
    epoch = np.concatenate(one[:steps])
    assert len(set(epoch.tolist())) == steps * size * 4  # no record twice: the remainder is dropped
    for e in (1, 2):  # and every epoch starts again from the beginning
        np.testing.assert_array_equal(np.concatenate(one[e * steps:(e + 1) * steps]), epoch)


@pytest.mark.parametrize("files, cache", [(5, None), (1, None), (5, "memory")],
                         ids=["files", "split-by-record", "cached"])
def test_resumed_stream_continues_where_an_uninterrupted_one_is(tmp_path, files, cache):
    x, _ = arrays(60)
    write_tfrecords(x, np.arange(60), str(tmp_path / "p-{}.tfrecord"), files)
    ds = load(Source.open(str(tmp_path))).train
    kw = dict(seed=3, shuffle_buffer=8, cache=cache)
    steps = 60 // 8
    full = labels_by_step(ds, 1, 2, 4, epochs=(0, 5), **kw)
    resumed = labels_by_step(ds, 1, 2, 4, epochs=(2, 5), skip=3, **kw)
    assert len(full) == 5 * steps
    np.testing.assert_array_equal(np.array(resumed), np.array(full[2 * steps + 3:]))
    by_epoch = [np.concatenate(full[e * steps:(e + 1) * steps]) for e in range(5)]
    assert all(not np.array_equal(by_epoch[e], by_epoch[e + 1]) for e in range(4))  # shuffled anew


@pytest.mark.parametrize("files, cache", [(5, None), (1, None), (5, "memory")],
                         ids=["files", "split-by-record", "cached"])
def test_one_pipeline_over_the_epochs_reads_what_epochs_built_one_by_one_read(tmp_path, monkeypatch,
                                                                              files, cache):
    """The epochs as one flat_map over their numbers (built once, whatever their number) give
    the records, order and shuffles of each epoch built on its own in Python and concatenated."""
    from distft.data import dataset

    x, _ = arrays(60)
    write_tfrecords(x, np.arange(60), str(tmp_path / "p-{}.tfrecord"), files)
    ds = load(Source.open(str(tmp_path))).train
    kw = dict(seed=3, shuffle_buffer=8, cache=cache, epochs=(1, 6))
    one_pipeline = labels_by_step(ds, 1, 2, 4, **kw)
    monkeypatch.setattr(dataset, "_global_seed_is_zero", lambda: True)  # the Python-built epochs
    np.testing.assert_array_equal(np.array(labels_by_step(ds, 1, 2, 4, **kw)), np.array(one_pipeline))
    assert len(one_pipeline) == 5 * (60 // 8)


def test_shuffled_epochs_build_under_a_global_seed_of_zero(tmp_path):
    """tf.random.set_seed(0) (keras.utils.set_random_seed(0), --seed=0) made TensorFlow's
    get_seed compare a traced per-epoch shuffle seed in Python, and the stream failed to build."""
    from tensorflow.python.eager import context

    x, _ = arrays(60)
    write_tfrecords(x, np.arange(60), str(tmp_path / "p-{}.tfrecord"), 3)
    ds = load(Source.open(str(tmp_path))).train
    before = context.global_seed()
    tf.random.set_seed(0)
    try:
        epochs = labels_by_step(ds, 0, 1, 4, epochs=(0, 2), seed=0, shuffle_buffer=8)
    finally:
        tf.random.set_seed(before)
    assert len(epochs) == 2 * 15 and sorted(np.concatenate(epochs[:15]).tolist()) == list(range(60))


@pytest.mark.parametrize("cache", [None, "memory"])
def test_resumed_augmented_stream_draws_the_same_augmentations(tmp_path, cache):
    ds, _ = image_records(tmp_path)

    def batches(**kw):
        stream = ds.stream(1, 2, 2, (10, 12, 3), training=True, seed=1, shuffle_buffer=4,
                           augment=("flip", "crop", "rotate", "color"), cache=cache, **kw)
        return [(x.numpy(), y.numpy()) for x, y in stream]

    full, resumed = batches(epochs=(0, 3)), batches(epochs=(1, 3), skip=1)
    assert len(full) == 3 * 3 and len(resumed) == 5  # 12 // (2 * 2) steps an epoch
    for (x, y), (want_x, want_y) in zip(resumed, full[4:]):
        np.testing.assert_array_equal(y, want_y)
        np.testing.assert_array_equal(x, want_x)


def test_image_preprocess_augment_and_cache(tmp_path):
    ds, imgs = image_records(tmp_path)

    def first(**kw):
        stream = ds.stream(0, 1, 12, (10, 12, 3), seed=0, shuffle_buffer=0, **kw)
        x, y = next(iter(stream))
        return x.numpy()[np.argsort(y.numpy())]

    plain = first(training=False)
    np.testing.assert_allclose(plain * 255, imgs, atol=1e-3)
    mobilenet = first(training=False, preprocess="mobilenet_v2")
    np.testing.assert_allclose(mobilenet, plain * 2 - 1, atol=1e-5)
    augmented = first(training=True, augment=("flip", "crop", "rotate", "color"), epochs=(0, 1))
    assert augmented.shape == plain.shape and 0 <= augmented.min() and augmented.max() <= 1
    assert not np.allclose(augmented, plain, atol=0.05)
    np.testing.assert_array_equal(
        augmented, first(training=True, augment=("flip", "crop", "rotate", "color"), epochs=(0, 1)))
    cached = first(training=True, cache="memory")
    np.testing.assert_allclose(cached, plain, atol=1e-6)
    on_disk = ds.stream(0, 1, 12, (10, 12, 3), training=True, shuffle_buffer=0,
                        cache=str(tmp_path / "cache"))
    for x, y in on_disk.take(2):  # the second pass reads the cache file the first one wrote
        np.testing.assert_allclose(x.numpy()[np.argsort(y.numpy())], plain, atol=1e-6)
    assert os.listdir(tmp_path / "cache")


def test_augment_on_float_records_is_refused(tmp_path):
    x, y = arrays(10)
    write_tfrecords(x, y, str(tmp_path / "p-{}.tfrecord"), 1)
    ds = load(Source.open(str(tmp_path))).train
    with pytest.raises(DistftError, match="--augment and --preprocess apply to image data"):
        ds.stream(0, 1, 4, (2, 3), training=True, augment=("flip",))


def first_batch(source, input_shape, **kw):
    ds = load(source).train
    x, y = next(iter(ds.stream(0, 1, 100, input_shape, training=False, **kw)))
    return x.numpy(), y.numpy()


def test_image_arrays_are_scaled_and_resized(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (8, 4, 4), dtype=np.uint8)  # (N, H, W) uint8: grey images
    np.savez(tmp_path / "u8.npz", x=grey, y=np.arange(8))
    x, _ = first_batch(Source.open(str(tmp_path / "u8.npz")), (8, 8, 3))
    assert x.shape == (8, 8, 8, 3) and 0 <= x.min() and x.max() <= 1
    np.testing.assert_allclose(x[:, ::2, ::2, 0].mean(), grey.mean() / 255, rtol=0.05)
    unit = rng.random((8, 4, 4, 1), dtype=np.float32)  # float in [0, 1]: the same as x / 255
    np.savez(tmp_path / "f.npz", x=unit, y=np.arange(8))
    x, _ = first_batch(Source.open(str(tmp_path / "f.npz")), (4, 4, 1))
    np.testing.assert_allclose(x, unit, rtol=1e-5)
    np.savez(tmp_path / "n.npz", x=unit - 0.5, y=np.arange(8))  # normalised: not pixels
    source = Source.open(str(tmp_path / "n.npz"))
    with pytest.raises(DistftError, match="pass --preprocess=none"):
        first_batch(source, (4, 4, 1))
    x, _ = first_batch(source, (4, 4, 1), preprocess="none")
    np.testing.assert_allclose(x, unit - 0.5, rtol=1e-5)


def test_targets_keep_their_shape_in_every_format(tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    y = np.stack([x[:, 0] * 2, x[:, 1] + 0.5], axis=1)
    np.savez(tmp_path / "r.npz", x=x, y=y[:, :1])
    _, got = first_batch(Source.open(str(tmp_path / "r.npz")), (4,))
    np.testing.assert_allclose(np.sort(got, axis=0), y[:, :1])
    rows = ["f0,t0,f1,t1,f2,f3"] + [f"{a},{t[0]},{b},{t[1]},{c},{d}" for (a, b, c, d), t in zip(x, y)]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    source = Source.open(str(tmp_path / "m.csv"), label="t0,t1")
    assert source.layout.y_shape == (2,) and source.layout.y_float
    feats, got = first_batch(source, (4,))
    np.testing.assert_allclose(feats, x)
    np.testing.assert_allclose(got, y)


def test_csv_class_names_are_sorted_into_ids(tmp_path):
    names = ["two", "seven", "seven", "one", "two"]
    (tmp_path / "d.csv").write_text("a,label\n" + "\n".join(f"{i},{n}" for i, n in enumerate(names)) + "\n")
    ds = load(Source.open(str(tmp_path / "d.csv"))).train
    feats, y = next(iter(ds.stream(0, 1, 100, (1,), training=False)))
    feats, y = feats.numpy(), y.numpy()
    assert ds.classes == ("one", "seven", "two")
    assert [ds.classes[i] for i in y] == [names[int(f)] for f in feats[:, 0]]


def test_image_folder_is_a_data_set(tmp_path):
    for name, n in (("b", 3), ("a", 5)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(n):
            img = np.full((6, 6, 1), 40 * (name == "b"), np.uint8)
            (tmp_path / "imgs" / name / f"{i}.png").write_bytes(tf.io.encode_png(img).numpy())
    ds = load(Source.open(str(tmp_path / "imgs"), holdout=0.25)).train
    counts = ds.counts
    assert ds.classes == ("a", "b") and sum(counts.train) + sum(counts.held_out) == 8
    assert 0 < sum(counts.held_out) < 8
    x, y = first_batch(Source.open(str(tmp_path / "imgs")), (3, 3, 1))
    assert sorted(y.tolist()) == [0] * 5 + [1] * 3
    np.testing.assert_allclose(x.reshape(8, -1).max(axis=1), np.where(y == 1, 40 / 255, 0), atol=1e-6)


def test_tfrecord_that_does_not_fit_is_not_called_damaged(tmp_path):
    x, y = arrays(20)
    write_tfrecords(x, y, str(tmp_path / "a-{}.tfrecord"), 1)
    with tf.io.TFRecordWriter(str(tmp_path / "b.tfrecord")) as w:
        for xi in x:
            w.write(tf.train.Example(features=tf.train.Features(feature={
                "x": tf.train.Feature(float_list=tf.train.FloatList(value=xi.ravel())),
                "y": tf.train.Feature(float_list=tf.train.FloatList(value=[0.0, 1.0])),
            })).SerializeToString())
    source = Source.open(str(tmp_path / "*.tfrecord"))
    with pytest.raises(DistftError, match=r"b.tfrecord: record 0 feature 'y' is float_list, "
                                          "expected int64_list") as e:
        load(source)
    assert "damaged" not in str(e.value)


def test_compressed_npz_reads_the_same_records(tmp_path):
    x, y = arrays(60)
    np.savez(tmp_path / "plain.npz", x=x, y=y)
    np.savez_compressed(tmp_path / "packed.npz", x=x, y=y)
    plain, packed = Source.open(str(tmp_path / "plain.npz")), Source.open(str(tmp_path / "packed.npz"))
    assert plain.located is not None and packed.located is None  # TensorFlow reads / numpy reads
    for source in (plain, packed):
        assert all_records(load(source).train, 2) == expected(x, y)


@pytest.mark.parametrize("size", [1, 2, 3])
def test_by_record_streams_merge_back_into_the_files_order(tmp_path, size):
    x, _ = arrays(12)
    np.savez(tmp_path / "a.npz", x=x[:5], y=np.arange(5))
    np.savez(tmp_path / "b.npz", x=x[5:], y=np.arange(5, 12))
    ds = load(Source.open(str(tmp_path))).train
    merged = np.empty(12, np.int64)
    for rank in range(size):  # as predict merges them
        merged[rank::size] = [v for _, y in ds.stream(rank, size, 4, (2, 3), training=False, by_record=True)
                              for v in y.numpy()]
    np.testing.assert_array_equal(merged, np.arange(12))

"""Checkpoints: atomic, the newest complete one is found, old ones pruned."""
import os

import numpy as np
import tensorflow as tf

from distft.train.checkpoint import CheckpointStore


def make(value: float):
    v = tf.Variable(value)
    return v, tf.train.Checkpoint(v=v)


def test_latest_skips_unfinished_and_partial_saves(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"), keep=0)
    v, ckpt = make(1.0)
    store.save(ckpt, {"epoch": 1})
    v.assign(2.0)
    store.save(ckpt, {"epoch": 2})
    # A save killed half-way leaves a temporary folder, never a folder with the final name;
    # a final-named folder without state.json (copied by hand, say) is not complete either.
    os.makedirs(tmp_path / "ck" / ".tmp-epoch-0003-999")
    (tmp_path / "ck" / ".tmp-epoch-0003-999" / "ckpt.index").write_bytes(b"partial")
    os.makedirs(tmp_path / "ck" / "epoch-0004")
    path, state = store.latest()
    assert state == {"epoch": 2} and path.endswith("epoch-0002")
    restored, rckpt = make(0.0)
    store.restore(rckpt, path)
    assert float(restored.numpy()) == 2.0


def test_keep_bounds_disk_use_and_cleans_temporaries(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"), keep=2)
    _, ckpt = make(1.0)
    os.makedirs(tmp_path / "ck" / ".tmp-epoch-0001-1")
    for epoch in range(1, 6):
        store.save(ckpt, {"epoch": epoch})
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch-0004", "epoch-0005"]


def test_saving_the_same_epoch_again_replaces_it_whole(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"), keep=3)
    v, ckpt = make(1.0)
    store.save(ckpt, {"epoch": 3})
    v.assign(5.0)
    store.save(ckpt, {"epoch": 3, "step_in_epoch": 10})
    path, state = store.latest()
    assert state["step_in_epoch"] == 10
    restored, rckpt = make(0.0)
    store.restore(rckpt, path)
    np.testing.assert_equal(restored.numpy(), 5.0)
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch-0003"]

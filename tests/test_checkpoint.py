"""Checkpoints: atomic, the newest complete one is found, old ones pruned."""
import os

import numpy as np
import tensorflow as tf

from distft.train.checkpoint import CheckpointStore
from distft.train.state import Position, RunState


def make(value: float):
    v = tf.Variable(value)
    return v, tf.train.Checkpoint(v=v)


def test_latest_skips_unfinished_and_partial_saves(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"), keep=0)
    v, ckpt = make(1.0)
    store.save(ckpt, RunState(epoch=1))
    v.assign(2.0)
    store.save(ckpt, RunState(epoch=2))
    # A save killed half-way leaves a temporary folder, never a folder with the final name;
    # a final-named folder without state.json (copied by hand, say) is not complete either.
    os.makedirs(tmp_path / "ck" / ".tmp-epoch-0003-999")
    (tmp_path / "ck" / ".tmp-epoch-0003-999" / "ckpt.index").write_bytes(b"partial")
    os.makedirs(tmp_path / "ck" / "epoch-0004")
    path, state = store.latest()
    assert state == RunState(epoch=2) and path.endswith("epoch-0002")
    restored, rckpt = make(0.0)
    store.restore(rckpt, path)
    assert float(restored.numpy()) == 2.0


def test_keep_bounds_disk_use_and_cleans_temporaries(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"), keep=2)
    _, ckpt = make(1.0)
    os.makedirs(tmp_path / "ck" / ".tmp-epoch-0001-1")
    for epoch in range(1, 6):
        store.save(ckpt, RunState(epoch=epoch))
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch-0004", "epoch-0005"]


def test_saving_the_same_epoch_again_replaces_it_whole(tmp_path):
    store = CheckpointStore(str(tmp_path / "ck"), keep=3)
    v, ckpt = make(1.0)
    store.save(ckpt, RunState(epoch=3))
    v.assign(5.0)
    store.save(ckpt, RunState(epoch=3, step_in_epoch=10))
    path, state = store.latest()
    assert state.step_in_epoch == 10
    restored, rckpt = make(0.0)
    store.restore(rckpt, path)
    np.testing.assert_equal(restored.numpy(), 5.0)
    assert sorted(os.listdir(tmp_path / "ck")) == ["epoch-0003"]


def test_a_checkpoint_written_before_runstate_resumes_on_another_number_of_workers(demo_data, tmp_path):
    """tests/data/v1-run: a version-1 state.json (no version key) from 2 workers, stopped at epoch 3
    step 120 of 179 (tests/data/make_tiny.py says how it was made). One worker at the same
    per-worker batch has 358 steps an epoch, so it goes on from step 241, with the checkpoint's
    optimizer state: its update count continues from the 2 * 179 + 120 updates before the stop."""
    import json
    import shutil
    import subprocess
    import sys

    from conftest import distft

    here = os.path.dirname(__file__)
    run_dir = tmp_path / "run"
    shutil.copytree(os.path.join(here, "data", "v1-run"), run_dir)
    model = str(tmp_path / "tiny.keras")
    subprocess.run([sys.executable, os.path.join(here, "data", "make_tiny.py"), model], check=True)
    _, state = CheckpointStore(str(run_dir / "checkpoints")).latest()
    assert state == RunState(epoch=2, step_in_epoch=120, steps_per_epoch=179, stopped_by="SIGTERM")
    result = distft(["train", f"--model={model}", f"--data={demo_data['data']}", "--num_classes=5",
                     "--unfreeze=all", "--batch_size=2", "--epochs=3", f"--output_dir={run_dir}",
                     "--resume"], timeout=240)
    assert result.code == 0, result.out[-3000:]
    assert "1 to go (from epoch 3 step 241 of 358)" in result.out, result.out[-3000:]
    metrics = json.load(open(run_dir / "metrics.json"))
    assert (metrics["initial_epoch"], metrics["steps_per_epoch"]) == (2, 358)
    assert metrics["optimizer_updates"] == 2 * 179 + 120 + (358 - 240)


def test_runstate_round_trips_reads_version_1_and_refuses_a_newer_version():
    import pytest

    state = RunState(epoch=3, step_in_epoch=40, steps_per_epoch=100, stopped_by="SIGTERM",
                     logs={"loss": 0.5}, before={"accuracy": 0.2}, steps_run=340, announced=True,
                     size=4, lr_offset=1.5, resets=2)
    assert state.to_json()["version"] == RunState.VERSION
    assert RunState.from_json(state.to_json()) == state
    # Version 1's keys, as a checkpoint at an epoch's end wrote them (no steps per epoch).
    old = RunState.from_json({"epoch": 2, "logs": {"loss": 0.3}, "stage": 1})
    assert old == RunState(epoch=2, stage=1, logs={"loss": 0.3})
    assert old.position.rescaled(50) == Position(2, 0, 50)
    with pytest.raises(ValueError, match="newer"):
        RunState.from_json({"version": RunState.VERSION + 1, "epoch": 1})


def test_a_position_keeps_its_place_in_the_epoch_on_another_number_of_workers():
    where = Position(epoch=2, skip=40, steps=100)
    assert where.rescaled(50) == Position(2, 20, 50)  # twice the workers
    assert where.rescaled(200) == Position(2, 80, 200)
    assert where.done == 240
    assert Position(1, 100, 100).rescaled(50) == Position(2, 0, 50)  # stopped after its last step
    assert (where.next_step(), where.stopped_at()) == ("epoch 3 step 41 of 100", "epoch 3 step 40")
    assert (Position(2, 0, 100).next_step(), Position(2, 0, 100).stopped_at()) == ("epoch 3", "epoch 2")

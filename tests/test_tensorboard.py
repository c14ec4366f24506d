"""Rank 0's TensorBoard log, read from the event files and from a real tensorboard server."""
import glob
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import horovodrun

pytestmark = pytest.mark.multiworker


@pytest.fixture(scope="module")
def run_dir(demo_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tb") / "run")
    result = horovodrun(["train", f"--model={demo_data['model']}", f"--data={demo_data['data']}",
                         f"--val_data={demo_data['val_data']}", "--num_classes=5", "--epochs=3",
                         "--log_every=4", "--warmup_epochs=1", f"--output_dir={out}"])
    assert result.code == 0, result.out[-3000:]
    return out


def scalars(folder):
    acc = EventAccumulator(folder, size_guidance={"tensors": 0})
    acc.Reload()
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto)) if tag != "_hparams_/session_start_info"
                   else None) for e in acc.Tensors(tag)] for tag in acc.Tags()["tensors"]}


def test_event_files_hold_epoch_step_and_run_scalars(run_dir):
    tb = os.path.join(run_dir, "tensorboard")
    assert len(glob.glob(f"{tb}/train/events.out.tfevents.*")) == 1  # one writer: rank 0
    train, val = scalars(f"{tb}/train"), scalars(f"{tb}/validation")
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate", "epoch_samples_per_sec",
                "epoch_step_time_ms"):
        assert [s for s, _ in train[tag]] == [1, 2, 3], tag
    assert [s for s, _ in val["epoch_accuracy"]] == [0, 1, 2, 3]  # 0: before fine-tuning
    assert val["epoch_accuracy"][-1][1] > val["epoch_accuracy"][0][1]
    steps = json.load(open(os.path.join(run_dir, "metrics.json")))["steps_per_epoch"]
    assert [s for s, _ in train["batch_loss"]] == list(range(4, 3 * steps + 1, 4))
    assert [s for s, _ in train["batch_samples_per_sec"]] == list(range(4, 3 * steps + 1, 4))
    lr = dict(train["batch_learning_rate"])
    assert lr[4] < lr[max(lr)]  # warm-up from lr to 2 x lr over the first epoch
    assert abs(lr[max(lr)] - 2e-3) < 1e-9
    assert train["params/trainable"][0][1] == 5 * 64 + 5
    assert train["workers"][0][1] == 2
    assert "_hparams_/session_start_info" in train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_real_tensorboard_server_serves_the_scalars(run_dir):
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen([exe, "--logdir", os.path.join(run_dir, "tensorboard"), "--host",
                               "127.0.0.1", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        tags, deadline = {}, time.time() + 90
        while time.time() < deadline and not tags.get("validation"):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/tags",
                                            timeout=5) as r:
                    tags = json.load(r)
            except OSError:
                pass
            time.sleep(1)
        assert server.poll() is None, server.stdout.read().decode()[-2000:]
        assert {"epoch_loss", "epoch_accuracy", "batch_learning_rate"} <= set(tags["train"])
        assert {"epoch_loss", "epoch_accuracy"} <= set(tags["validation"])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/data/plugin/scalars/scalars?"
                                    "run=validation&tag=epoch_accuracy", timeout=10) as r:
            points = json.load(r)
        assert [p[1] for p in points] == [0, 1, 2, 3]
        assert all(0.0 <= p[2] <= 1.0 for p in points)
    finally:
        server.terminate()
        server.wait(timeout=30)

"""GPU honesty on a machine without a GPU: a node that has NVIDIA GPUs (here a real `nvidia-smi`
executable, first on PATH, that lists one) while TensorFlow (tensorflow-cpu) sees none gets one
warning line, and --require_gpu stops every rank with one error line; rank health's clock, in
its GPU form (stamps after a host copy of the step's values), still times the step."""
from __future__ import annotations

import os
import time

import pytest

from tests.conftest import distft, horovodrun, one_line

CNN = os.path.join(os.path.dirname(__file__), "data", "keras2_cnn.h5")
GPU_LINE = "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-5e1c0ffe-0000-0000-0000-000000000000)"


@pytest.fixture
def nvidia_smi(tmp_path) -> dict:
    """An environment whose PATH starts with a folder holding an `nvidia-smi` that lists a GPU."""
    folder = tmp_path / "bin"
    folder.mkdir()
    smi = folder / "nvidia-smi"
    smi.write_text(f'#!/bin/sh\n[ "$1" = "-L" ] && echo "{GPU_LINE}"\n')
    smi.chmod(0o755)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def test_warning_then_require_gpu_stops_every_rank(nvidia_smi, tmp_path):
    # Warned, the run goes on on CPU (to its next check: data that does not exist).
    args = [f"--model={CNN}", f"--data={tmp_path}/none/*.tfrecord", "--num_classes=5",
            f"--output_dir={tmp_path}/run"]
    warned = distft(["train", *args], env=nvidia_smi, timeout=240)
    assert warned.code == 2, warned.out[-3000:]
    line = one_line(warned.out, "run on CPU although their node has NVIDIA GPUs")
    assert "NVIDIA A100-SXM4-40GB" in line and "tensorflow-cpu?" in line, line
    assert "distft install-horovod --gpu" in line and "tensorflow[and-cuda]==" in line, line
    assert "--data" in warned.out and "--require_gpu" not in warned.out
    # --require_gpu: both ranks stop together at the check, one line from rank 0.
    began = time.time()
    stopped = horovodrun(["train", *args, "--require_gpu"], np=2, env=nvidia_smi, timeout=240)
    assert stopped.code != 0, stopped.out[-3000:]
    error = one_line(stopped.out, "--require_gpu:")
    assert error.split("distft: error: ")[1].startswith("--require_gpu: 2 worker(s) run on CPU"), error
    assert one_line(stopped.out, "distft: error") == error  # not the data's error, nor rank 1's
    assert time.time() - began < 120


def test_gpu_clock_stamps_after_a_host_copy():
    import tensorflow as tf

    from distft.train.callbacks.rank_health import StepClock

    assert StepClock()._probe is None  # no GPU here: the CPU clock, unchanged
    clock = StepClock(synchronise=True)
    weights = tf.Variable(tf.ones([256, 256]))

    @tf.function
    def step(x):
        def run():
            grads = [tf.matmul(x, weights)]
            reduced = clock.allreduce(lambda g: [tf.matmul(t, weights) for t in g], grads)
            weights.assign_sub(1e-6 * reduced[0])
            return {"loss": tf.reduce_sum(reduced[0])}

        return clock.step(run, x, lambda: tf.convert_to_tensor(weights))

    for _ in range(3):
        step(tf.ones([256, 256]))
    seconds, allreduce = clock.read()
    assert 0 < allreduce < seconds
    assert clock._probe.device.endswith("CPU:0")

"""Launcher detection reads what each launcher really sets in a worker's environment; the
installed Horovod has what distft needs."""
import os

import pytest

from distft.launch import environment

LAUNCHER_VARS = ("HOROVOD_", "OMPI_COMM_WORLD_", "SLURM_", "PMIX_")


@pytest.fixture
def clean_env(monkeypatch):
    import os

    for key in list(os.environ):
        if key.startswith(LAUNCHER_VARS):
            monkeypatch.delenv(key)
    return monkeypatch


def test_plain_process_is_local(clean_env):
    env = environment.detect()
    assert (env.name, env.rank, env.size, env.is_launched) == ("local", 0, 1, False)


def test_horovodrun_gloo(clean_env):
    for k, v in dict(HOROVOD_RANK="3", HOROVOD_SIZE="4", HOROVOD_LOCAL_RANK="1",
                     HOROVOD_LOCAL_SIZE="2", HOROVOD_CROSS_RANK="1").items():
        clean_env.setenv(k, v)
    env = environment.detect()
    assert (env.name, env.rank, env.size, env.local_rank, env.local_size, env.node_rank) == \
        ("horovodrun", 3, 4, 1, 2, 1)


def test_mpirun(clean_env):
    for k, v in dict(OMPI_COMM_WORLD_RANK="1", OMPI_COMM_WORLD_SIZE="2",
                     OMPI_COMM_WORLD_LOCAL_RANK="1", OMPI_COMM_WORLD_LOCAL_SIZE="2").items():
        clean_env.setenv(k, v)
    assert environment.detect().name == "mpirun"
    assert environment.detect().rank == 1


def test_srun_step_but_not_the_batch_script(clean_env):
    for k, v in dict(SLURM_PROCID="0", SLURM_NTASKS="1", SLURM_JOB_ID="7").items():
        clean_env.setenv(k, v)
    clean_env.setenv("SLURM_STEP_ID", "batch")
    assert environment.detect().name == "local"
    for k, v in dict(SLURM_STEP_ID="0", SLURM_PROCID="3", SLURM_NTASKS="4", SLURM_LOCALID="1",
                     SLURM_NODEID="1", SLURM_STEP_TASKS_PER_NODE="2(x2)").items():
        clean_env.setenv(k, v)
    env = environment.detect()
    assert (env.name, env.rank, env.size, env.local_rank, env.local_size, env.node_rank) == \
        ("srun", 3, 4, 1, 2, 1)


def test_uneven_tasks_per_node(clean_env):
    for k, v in dict(SLURM_STEP_ID="0", SLURM_PROCID="4", SLURM_NTASKS="5", SLURM_NODEID="2",
                     SLURM_STEP_TASKS_PER_NODE="2(x2),1").items():
        clean_env.setenv(k, v)
    assert environment.detect().local_size == 1


def test_installed_horovod_has_tensorflow_mpi_and_gloo_and_no_keras_layer_in_use():
    """The Horovod that scripts/setup.sh built (without xla_mpi_ops.cc) against this TensorFlow."""
    import subprocess
    import sys

    import horovod
    import keras
    import tensorflow as tf

    out = subprocess.run([os.path.join(os.path.dirname(sys.executable), "horovodrun"), "--check-build"],
                         capture_output=True, text=True, timeout=120).stdout
    assert f"Horovod v{horovod.__version__}:" in out and horovod.__version__ == "0.28.1", out
    for part in ("TensorFlow", "MPI", "Gloo"):
        assert f"[X] {part}" in out, out
    assert tf.__version__.startswith("2.21") and keras.__version__.startswith("3."), (tf.__version__, keras.__version__)
    import horovod.tensorflow as hvd  # its ops library loads against this TensorFlow

    assert callable(hvd.grouped_allreduce)
    import distft

    root = os.path.dirname(distft.__file__)
    for folder, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                assert "horovod.tensorflow.keras" not in open(os.path.join(folder, name)).read(), name


def test_a_worker_imports_tensorflow_without_matplotlib_and_can_still_plot():
    """log.import_tensorflow hides matplotlib while Keras imports (its plotting helpers cost every
    worker ~0.6 CPU-s); matplotlib itself still imports afterwards, for the confusion matrix.
    The garbage collector is on again afterwards, with TensorFlow's objects frozen out of its
    scans."""
    import subprocess
    import sys

    code = ("import gc, sys; from distft import log; log.import_tensorflow(); import keras;"
            "print('before', 'matplotlib' in sys.modules);"
            "print('collector', gc.isenabled(), gc.get_freeze_count() > 100000, gc.get_count()[2] == 0);"
            "from distft.train.callbacks.confusion import render; import numpy as np;"
            "png = render(np.array([[3, 1], [0, 4]]), ['a', 'b'], 't'); print('png', png[:4] == b'\\x89PNG')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["before", "False", "collector", "True", "True", "True", "png", "True"], \
        out.stdout

"""distft's performance defaults take effect in real workers: one core per local rank, one
compute thread each, Horovod's settings from HOROVOD_DEFAULTS, and a value the user set wins."""
import json
import os
import re

import keras
import pytest

from conftest import distft
from distft.train.runtime import HOROVOD_DEFAULTS, INTER_OP_THREADS

pytestmark = pytest.mark.multiworker

TRAIN = ["train", "--model=base_model.keras", "--data=shards/train-*.tfrecord", "--num_classes=5",
         "--unfreeze=last:2", "--epochs=1"]
CORES = sorted(os.sched_getaffinity(0))


def start_lines(out: str) -> str:
    return "\n".join(l for l in out.splitlines() if "placement:" in l or "horovod:" in l or "thread(s)" in l)


@pytest.mark.parametrize("how", ["np", "horovodrun"])
def test_workers_pinned_one_core_each_with_distft_horovod_defaults(acceptance, how):
    # Not a skip: the project's machines have at least 2 cores, and fewer must not pass unseen.
    assert len(CORES) >= 2, f"pinning one core per worker needs 2 cores; this process has {CORES}"
    assert not any(k in os.environ for k in HOROVOD_DEFAULTS), "the test needs them unset"
    # The acceptance command's run over Gloo (shared with test_multiworker.py), in this
    # environment: distft's defaults apply.
    run = acceptance(how)
    result, wall = run.result, run.wall
    assert result.code == 0, result.out[-3000:]
    # Time to the first step, from the launch (distft --np) or the worker's start (horovodrun).
    with open(os.path.join(run.run_dir, "metrics.json")) as f:
        first = json.load(f)["first_step_seconds"]
    assert 1 < first < wall, (first, wall)
    assert re.search(rf"first step {first:.1f}s after launch", result.out), result.out[-2000:]
    lines = start_lines(result.out)
    for rank in (0, 1):
        assert re.search(rf"rank {rank} on [^,]* cores {CORES[rank]}(, rank|$)", lines, re.M), lines
    assert f"1 thread(s) each (inter-op {INTER_OP_THREADS})" in lines, lines
    for name, value in HOROVOD_DEFAULTS.items():
        assert f"{name}={value}" in lines, lines


def test_user_set_horovod_and_inter_op_values_are_kept(demo_data):
    folder = demo_data["folder"]
    name = next(iter(HOROVOD_DEFAULTS))
    mine = "7" if HOROVOD_DEFAULTS[name] != "7" else "8"
    result = distft([*TRAIN, f"--output_dir={os.path.join(folder, 'runs', 'user-horovod')}", "--np=2"],
                    cwd=folder, env={name: mine, "TF_NUM_INTEROP_THREADS": "3"})
    assert result.code == 0, result.out[-3000:]
    lines = start_lines(result.out)
    assert f"{name}={mine}" in lines and "(inter-op 3)" in lines, lines


def test_stop_check_runs_about_once_a_second_but_at_least_every_10_steps():
    import signal as sig

    from distft.train.callbacks.stopping import GracefulStop, StopRequested, StopSignals

    stop = GracefulStop(StopSignals(), size=1)
    stop.on_epoch_begin(0)
    for batch in range(10):  # near-instant steps: the first check, then one per ~1000 steps
        stop.on_train_batch_begin(batch)
        stop.on_train_batch_end(batch)
    assert stop.every == 1000 and not stop.requested
    stop.on_epoch_begin(1)  # a signal is still seen within `every` steps of the epoch
    stop.signals.received = sig.SIGTERM
    with pytest.raises(StopRequested):
        for batch in range(1000):
            stop.on_train_batch_begin(batch)
            stop.on_train_batch_end(batch)
    assert stop.requested and stop.where == (1, 1000)


def test_distft_train_step_is_traced_once():
    """distft builds the optimizer (over every stage's variables) and the compiled metrics
    before the first step, so tf.function traces distft's step once (Keras 3 alone traces it
    twice: it builds the metrics inside the first step)."""
    import numpy as np
    import tensorflow as tf

    from distft.train.step import GradientAverager
    from distft.train.metrics import build_compiled

    inputs = keras.Input((6,))
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
    optimizer = keras.optimizers.SGD()
    optimizer.build(model.trainable_variables)  # as distft builds it, before compile
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False)
    step, traces = GradientAverager(model.trainable_variables, accumulate=2).train_step(model, size=1), []
    model.train_step = lambda data: (traces.append(1), step(data))[1]  # runs once per trace
    stream = tf.data.Dataset.from_tensor_slices(
        (np.ones((8, 6), np.float32), np.arange(8) % 3)).batch(4, drop_remainder=True).repeat()
    build_compiled(model, stream.element_spec)
    model.fit(stream, epochs=3, steps_per_epoch=2, verbose=0)
    assert len(traces) == 1 and int(optimizer.iterations) == 3  # 6 batches, 2 per update

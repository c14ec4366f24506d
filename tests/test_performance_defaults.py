"""distft's performance defaults take effect in real workers: one core per local rank, one
compute thread each, Horovod's settings from HOROVOD_DEFAULTS, and a value the user set wins."""
import os
import re

import pytest

from conftest import distft, horovodrun
from distft.train.runtime import HOROVOD_DEFAULTS

pytestmark = pytest.mark.multiworker

TRAIN = ["train", "--model=base_model.h5", "--data=shards/train-*.tfrecord", "--num_classes=5",
         "--unfreeze=last:2", "--epochs=1"]
CORES = sorted(os.sched_getaffinity(0))


def start_lines(out: str) -> str:
    return "\n".join(l for l in out.splitlines() if "placement:" in l or "horovod:" in l or "thread(s)" in l)


@pytest.mark.parametrize("how", ["np", "horovodrun"])
def test_workers_pinned_one_core_each_with_distft_horovod_defaults(demo_data, how):
    # Not a skip: the project's machines have at least 2 cores, and fewer must not pass unseen.
    assert len(CORES) >= 2, f"pinning one core per worker needs 2 cores; this process has {CORES}"
    folder = demo_data["folder"]
    args = [*TRAIN, f"--output_dir={os.path.join(folder, 'runs', f'defaults-{how}')}"]
    assert not any(k in os.environ for k in HOROVOD_DEFAULTS), "the test needs them unset"
    result = distft([*args, "--np=2"], cwd=folder) if how == "np" else horovodrun(args, cwd=folder)
    assert result.code == 0, result.out[-3000:]
    lines = start_lines(result.out)
    for rank in (0, 1):
        assert re.search(rf"rank {rank} on [^,]* cores {CORES[rank]}(, rank|$)", lines, re.M), lines
    assert "1 thread(s) each" in lines, lines
    for name, value in HOROVOD_DEFAULTS.items():
        assert f"{name}={value}" in lines, lines


def test_user_set_horovod_value_is_kept(demo_data):
    folder = demo_data["folder"]
    name = next(iter(HOROVOD_DEFAULTS))
    mine = "7" if HOROVOD_DEFAULTS[name] != "7" else "8"
    result = distft([*TRAIN, f"--output_dir={os.path.join(folder, 'runs', 'user-horovod')}", "--np=2"],
                    cwd=folder, env={name: mine})
    assert result.code == 0, result.out[-3000:]
    assert f"{name}={mine}" in start_lines(result.out)


def test_stop_check_runs_about_once_a_second_but_at_least_every_10_steps():
    import signal as sig

    from distft.train.callbacks.stopping import GracefulStop, StopRequested

    stop = GracefulStop(None, None, size=1)
    stop.on_epoch_begin(0)
    for batch in range(10):  # near-instant steps: the first check, then one per ~1000 steps
        stop.on_train_batch_end(batch)
    assert stop.every == 1000 and not stop.requested
    stop.on_epoch_begin(1)  # a signal is still seen within `every` steps of the epoch
    stop.received = sig.SIGTERM
    with pytest.raises(StopRequested):
        for batch in range(1000):
            stop.on_train_batch_end(batch)
    assert stop.requested and stop.where == (1, 1000)

"""--steps_per_execution=N: each train-function call runs up to N steps, never past its epoch's
end, and every callback still works from steps. In-process: the train function and the
callbacks that act every K steps; on 2 workers: a run with N=4 stopped by SIGTERM and resumed
ends where N=1 ends (weights and EMA), with its TensorBoard steps, --log_every lines, profiler
window and rank health from steps."""
import json
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import Job, Started, horovodrun, horovodrun_command, one_line
from distft.train.callbacks.resumed import ResumedRun
from distft.train.callbacks.steps import StepCounter
from distft.train.execution import Execution


class Calls(StepCounter):
    """Records (epoch, first batch, last batch, steps ran) of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.calls.append((self.epoch, self._first_batch, batch, self.ran(batch)))


def executions(epoch: int, first: int, steps: int, n: int) -> list[tuple]:
    """The calls of an epoch from step `first`: (epoch, first batch, last batch, steps ran)."""
    return [(epoch, b, min(b + n, steps) - 1, min(b + n, steps) - b) for b in range(first, steps, n)]


def test_each_call_stops_at_its_epochs_end_and_callbacks_see_the_true_batches():
    """Keras' own loop would train the next epoch's first batches in an epoch's last call (10
    steps, 4 a call) and end the last epoch early; a resumed epoch starts mid-way."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=4)
    seen, traces, plain = [], [], model.train_step

    def step(data):
        traces.append(1)
        tf.py_function(lambda x: seen.append(int(x[0, 0])), [data[0]], [])
        return plain(data)

    model.train_step = step
    execution = Execution(4)
    execution.install(model)
    # 3 epochs of 10 batches in one stream (as distft's); batch b of epoch e holds 100 e + b.
    stream = tf.data.Dataset.range(30).map(
        lambda i: (tf.fill([2, 1], tf.cast(100 * (i // 10) + i % 10, tf.float32)), tf.zeros([2, 1])))
    probe = Calls()
    run = ResumedRun([*execution.callbacks(10), probe], model, epochs=3, steps=10, skip=6)
    model.fit(execution.unsized(stream.skip(6)), steps_per_epoch=4, epochs=1, callbacks=run, verbose=0)
    run.last_call()
    model.fit(execution.unsized(stream.skip(10)), steps_per_epoch=10, initial_epoch=1, epochs=3,
              callbacks=run, verbose=0)
    assert seen == [6, 7, 8, 9] + list(range(100, 110)) + list(range(200, 210))
    assert probe.calls == executions(0, 6, 10, 4) + executions(1, 0, 10, 4) + executions(2, 0, 10, 4)
    assert int(model.optimizer.iterations) == 24 and len(traces) == 1  # one trace, every count


def test_commits_and_stop_checks_fall_on_the_first_call_end_at_or_after_their_step():
    from distft.train.callbacks.stopping import GracefulStop, StopRequested, StopSignals
    from distft.train.elastic import Commit
    from distft.train.state import RunState

    class State:  # an ElasticState's part that Commit uses
        def __init__(self):
            self.run, self.commits = RunState(steps_run=7), []

        def commit_at(self, position, steps_run):
            self.commits.append((position.epoch, position.skip, position.steps))

    def drive(callback, first=0):
        callback.on_epoch_begin(0)
        for _, begin, end, _ in executions(0, first, 30, 4):
            callback.on_train_batch_begin(begin)
            callback.on_train_batch_end(end)
        callback.on_epoch_end(0)

    state = State()
    commit = Commit(state, every=10, steps=30)
    drive(commit)  # steps 12 and 20 (30, the epoch's end, commits as the next epoch's start)
    assert state.commits == [(0, 12, 30), (0, 20, 30), (1, 0, 30)] and commit.steps_run == 7 + 30
    signals = StopSignals()
    signals.received = signal.SIGTERM
    stop = GracefulStop(signals, size=1)  # checks every 10 steps at first
    with pytest.raises(StopRequested):
        drive(stop, first=2)  # a resumed epoch: calls end after steps 6, 10, 14, ...
    assert stop.where == (0, 14)  # 12 steps since the epoch's first


N, STEPS, EPOCHS, EVERY = 4, 30, 3, 5  # 30 steps an epoch: the last call of each runs 2


def train(demo_data, run_dir, n):
    return ["train", f"--model={demo_data['model']}", f"--data={demo_data['data']}", "--num_classes=5",
            f"--epochs={EPOCHS}", f"--steps_per_epoch={STEPS}", "--batch_size=8", "--ema=0.9",
            "--grad_accum=2", "--unfreeze_schedule=0:none,1:last:2", f"--log_every={EVERY}",
            f"--steps_per_execution={n}", f"--output_dir={run_dir}"]


def logged(stopped_at: int) -> tuple[list[int], list[tuple[int, int]]]:
    """The global steps of TensorBoard's step scalars and the (epoch, step) of the --log_every
    lines of a run stopped after global step `stopped_at` and resumed: each at the first call
    end at or after a multiple of EVERY (not the epoch's last step for the lines); the stopped
    call logs nothing."""
    ends = [(e, end + 1, ran) for e in range(EPOCHS) for _, _, end, ran in executions(e, 0, STEPS, N)]
    crossed = [(e, done) for e, done, ran in ends if done // EVERY > (done - ran) // EVERY]
    steps = [e * STEPS + done for e, done in crossed if e * STEPS + done != stopped_at]
    lines = [(e, done) for e, done in crossed if done != STEPS and e * STEPS + done > stopped_at]
    return steps, lines


@pytest.mark.multiworker
def test_four_steps_a_call_stopped_and_resumed_ends_where_one_step_a_call_ends(demo_data, tmp_path):
    from distft.train.checkpoint import CheckpointStore
    from test_multiworker import weights_by_layer
    from test_tensorboard import scalars

    run_dir, straight = str(tmp_path / "n4"), str(tmp_path / "n1")
    whole = Started(horovodrun_command(train(demo_data, straight, 1)), timeout=400)  # side by side
    job = Job(horovodrun_command(train(demo_data, run_dir, N)), str(tmp_path / "log"))
    job.wait_for("steps/epoch of 8 per worker")  # set-up: the first stop check, after step 10, sees it
    os.kill(job.worker_pid(1), signal.SIGTERM)
    assert job.wait(120) != 0
    _, state = CheckpointStore(os.path.join(run_dir, "checkpoints")).latest()
    assert (state.stopped_by, state.epoch, state.step_in_epoch) == ("SIGTERM", 0, 12), state
    assert "stopped at epoch 1 step 12" in one_line(job.out, "distft: stopped:")

    resumed = horovodrun([*train(demo_data, run_dir, N), "--resume", "--profile=15:22"], timeout=240)
    assert resumed.code == 0, resumed.out[-3000:]
    assert "(from epoch 1 step 13 of 30)" in resumed.out
    assert "profiler: steps 13-24 traced" in resumed.out  # the calls that hold steps 15-22
    assert os.listdir(os.path.join(run_dir, "tensorboard", "plugins", "profile"))
    whole = whole.result()
    assert whole.code == 0, whole.out[-3000:]

    for name in ("model.keras", "model_ema.keras"):  # the EMA is updated every step, in the step
        a, b = weights_by_layer(os.path.join(run_dir, name)), weights_by_layer(os.path.join(straight, name))
        for layer in a:
            for x, y in zip(a[layer], b[layer]):
                np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=f"{name} {layer}")
    with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    assert metrics["steps_run"] == [[STEPS - 12, STEPS, STEPS]] * 2  # timing counts steps
    assert metrics["optimizer_updates"] == EPOCHS * STEPS // 2

    steps, lines = logged(12)
    train_scalars = scalars(os.path.join(run_dir, "tensorboard", "train"))
    assert [s for s, _ in train_scalars["batch_loss"]] == steps
    shown = [(int(l.split("epoch ")[1].split("/")[0]) - 1, int(l.split("step ")[1].split("/")[0]))
             for l in resumed.lines if "  step " in l]
    assert shown == lines
    step_ms = dict(train_scalars["epoch_step_time_ms"])[EPOCHS]
    for rank in (0, 1):  # per step, not per call (which would be about N times longer)
        health = scalars(os.path.join(run_dir, "tensorboard", f"rank_{rank}"))
        assert [s for s, _ in health["ranks/step_time_ms"]] == [1, 2, 3]
        assert 0.5 < dict(health["ranks/step_time_ms"])[EPOCHS] / step_ms < 2, (health, step_ms)

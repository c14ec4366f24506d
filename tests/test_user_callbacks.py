"""User callbacks (--callbacks, --early_stopping, --keep_best; issue 31, item 2): Keras's
EarlyStopping stops 2 workers whose validation shares differ at the epoch where 1 worker at
twice the batch stops, on every rank; a stop that one rank's callback sets stops both at the
same step; --keep_best's model.keras holds the best epoch's weights. Two launches side by side:
the 2-worker runs in one (tests/cli_runner.py), the 1-worker reference without a launcher.
The classes are checked in this process; the specs that do not parse, in test_config.py and
test_cli_errors.py."""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pytest

from conftest import CLI_RUNNER, USER_CALLBACKS, SharedLaunch, Started, one_line

B = 8  # batch per worker; the 1-worker run takes 2 * B
EPOCHS = 20
# Adam on 64 training records, 24 of them with random labels: the validation loss falls, rises
# once at epoch 4 (0.703, 0.712: patience=1 would stop there), falls to its best at epoch 6
# (0.568), then rises as the noise is learnt (0.612, 0.665), so patience=2 stops after epoch 8
# of 20. 75 validation records: rank 0's share is 38, rank 1's 37.
EARLY_STOPPING = "keras.callbacks.EarlyStopping(monitor='val_loss', patience=2)"


def write_data(folder: str) -> dict:
    from distft.demo import load_digits, write_tfrecords

    d = load_digits()
    order = np.random.default_rng(0).permutation(np.flatnonzero(d.target >= 5))
    x, y = (d.images[order] / 16.0).astype(np.float32), d.target[order] - 5
    rng = np.random.default_rng(1)
    noisy = rng.choice(64, 24, replace=False)
    y[noisy] = rng.integers(0, 5, 24)
    train = write_tfrecords(x[:64], y[:64], os.path.join(folder, "train-{}.tfrecord"), 1)[0]
    val = write_tfrecords(x[64:139], y[64:139], os.path.join(folder, "val-{}.tfrecord"), 1)[0]
    return {"data": train, "val_data": val}


def train_args(demo_data: dict, data: dict, run_dir: str, batch_size: int, *extra: str) -> list[str]:
    # One file each, read by record and unshuffled: a 2-worker global batch holds the records
    # of the 1-worker batch (tests/test_equivalence.py).
    return ["train", f"--model={demo_data['model']}", f"--data={data['data']}",
            f"--val_data={data['val_data']}", "--num_classes=5", "--unfreeze=all", "--lr=3e-3",
            f"--epochs={EPOCHS}", f"--batch_size={batch_size}", "--shuffle_buffer=0", "--scale_lr=false",
            "--rank_health=false", "--log_every=1000", "--seed=1", f"--output_dir={run_dir}", *extra]


@pytest.fixture(scope="module")
def runs(demo_data, tmp_path_factory) -> dict:
    folder = str(tmp_path_factory.mktemp("user_callbacks"))
    data = write_data(folder)
    args = lambda name, *extra: train_args(demo_data, data, os.path.join(folder, "2w", name), B, *extra)
    listing, status = os.path.join(folder, "single.json"), os.path.join(folder, "single_status.json")
    with open(listing, "w") as f:
        json.dump([{"name": "early_stop", "argv": train_args(
            demo_data, data, os.path.join(folder, "1w", "early_stop"), 2 * B, f"--callbacks={EARLY_STOPPING}")}], f)
    started = time.time()
    one = Started([sys.executable, CLI_RUNNER, listing, status], timeout=600)  # beside the launch
    stop_one = f"--import={USER_CALLBACKS}"
    two = SharedLaunch(folder, [
        {"name": "early_stop", "argv": args("early_stop", f"--callbacks={EARLY_STOPPING}",
                                            "--keep_best=val_loss", "--keep_checkpoints=0")},
        {"name": "shorthand", "argv": args("shorthand", "--early_stopping=val_loss:patience=2")},
        {"name": "mid_epoch", "argv": args("mid_epoch", stop_one, "--steps_per_epoch=20", "--callbacks="
                                           "user_callbacks.StopOnOneRank(rank=1, epoch=1, step=3)")},
        {"name": "epoch_end", "argv": args("epoch_end", stop_one,
                                           "--callbacks=user_callbacks.StopOnOneRank(rank=1, epoch=2)")},
        {"name": "unknown_class", "argv": args("unknown_class", "--callbacks=keras.callbacks.EarlyStoping()")},
    ])
    result = one.result()
    assert result.code == 0 and json.load(open(status))["early_stop"]["code"] == 0, result.out[-3000:]
    each = ", ".join(f"{name} {s['seconds']}s" for name, s in two.status.items())
    print(f"2-worker launch {two.seconds:.0f}s ({each}); 1-worker run, beside it, "
          f"{time.time() - started:.0f}s")
    return {"two": two, "folder": folder}


def metrics(runs: dict, workers: int, name: str) -> dict:
    with open(os.path.join(runs["folder"], f"{workers}w", name, "metrics.json")) as f:
        return json.load(f)


@pytest.mark.multiworker
def test_early_stopping_stops_every_rank_where_one_worker_stops(runs):
    """The acceptance case: Keras's EarlyStopping through --callbacks, on 2 workers whose
    validation shares differ, stops every rank after the epoch where 1 worker at twice the batch
    on the whole validation set stops, well before --epochs."""
    out = runs["two"].output("early_stop")
    two, one = metrics(runs, 2, "early_stop"), metrics(runs, 1, "early_stop")
    stop = two["early_stop"]
    print(f"stopped after epoch {stop['epoch']} of {EPOCHS} (1 worker: {one['early_stop']['epoch']}); "
          f"val_loss {two['validation']['loss']:.6f} vs {one['validation']['loss']:.6f}")
    assert stop["epoch"] == one["early_stop"]["epoch"] < EPOCHS - 5
    assert [len(epochs) for epochs in two["steps_run"]] == [stop["epoch"]] * 2  # every rank
    assert stop["ranks"] == [0, 1] and stop["step"] is None  # the same logs: both asked
    assert "val_loss did not improve for 2 epochs" in stop["reason"], stop
    np.testing.assert_allclose(two["validation"]["loss"], one["validation"]["loss"], rtol=1e-4)
    line = one_line(out, "early stopping:")
    assert line.endswith(f"stopped after epoch {stop['epoch']} of {EPOCHS}"), line
    # The shorthand is the same Keras callback.
    assert metrics(runs, 2, "shorthand")["early_stop"]["epoch"] == stop["epoch"]


@pytest.mark.multiworker
def test_keep_best_saves_the_best_epochs_weights(runs):
    """model.keras holds the weights of the epoch with the lowest val_loss (its checkpoint's),
    not the last epoch's; metrics.json, the log and the last checkpoint's state record it."""
    import keras
    import tensorflow as tf

    run_dir = os.path.join(runs["folder"], "2w", "early_stop")
    m = metrics(runs, 2, "early_stop")
    checkpoints = os.path.join(run_dir, "checkpoints")

    def state(epoch: int) -> dict:
        with open(os.path.join(checkpoints, f"epoch-{epoch:04d}", "state.json")) as f:
            return json.load(f)

    losses = {e: state(e)["logs"]["val_loss"] for e in range(1, m["early_stop"]["epoch"] + 1)}
    best = min(losses, key=losses.get)
    assert m["best"] == {"monitor": "val_loss", "value": losses[best], "epoch": best}
    assert best == m["early_stop"]["epoch"] - 2  # patience 2
    assert any(losses[e] > min(losses[f] for f in range(1, e)) for e in range(2, best)), losses  # waited once
    assert state(m["early_stop"]["epoch"])["best"] == m["best"]  # --resume goes on from it
    assert f"(the weights of epoch {best}, the best val_loss: {losses[best]:.4f})" in \
        one_line(runs["two"].output("early_stop"), "distft model:")

    saved = [w.numpy() for w in keras.models.load_model(os.path.join(run_dir, "model.keras"), compile=False).weights]

    def holds(epoch: int) -> bool:
        """Whether that epoch's checkpoint holds model.keras's weights (under whichever keys:
        the optimizer's references name them first)."""
        reader = tf.train.load_checkpoint(os.path.join(checkpoints, f"epoch-{epoch:04d}", "ckpt"))
        stored = [np.asarray(reader.get_tensor(k)) for k in reader.get_variable_to_shape_map()]
        return all(any(w.shape == s.shape and np.array_equal(w, s) for s in stored) for w in saved)

    assert holds(best) and not holds(m["early_stop"]["epoch"])


@pytest.mark.multiworker
# (epoch, step) of the stop, and each rank's steps an epoch: 20 with --steps_per_epoch=20, else 4.
@pytest.mark.parametrize("name, where, steps", [("mid_epoch", (1, 10), [10]),
                                                ("epoch_end", (2, None), [4, 4])])
def test_a_stop_on_one_rank_stops_every_rank_at_the_same_step(runs, name, where, steps):
    """A callback sets stop_training on rank 1 alone (a plain Horovod job hangs): mid-epoch, both
    ranks stop after the next periodic stop check (step 10: no collective of its own); at an
    epoch's end, after that epoch."""
    out = runs["two"].output(name)
    m = metrics(runs, 2, name)
    stop = m["early_stop"]
    assert (stop["epoch"], stop["step"]) == where and stop["ranks"] == [1], stop
    assert m["steps_run"] == [steps, steps]
    line = one_line(out, "early stopping:")
    assert f"StopOnOneRank(rank=1, epoch={where[0]}" in line and "set stop_training (on rank 1 only)" in line


@pytest.mark.multiworker
def test_an_unknown_callback_class_is_one_line_from_the_workers(runs):
    code, out = runs["two"].ended("unknown_class")
    assert code == 2, out[-3000:]
    line = one_line(out, "distft: error:")
    assert "--callbacks=keras.callbacks.EarlyStoping(): keras.callbacks.EarlyStoping is not a Keras " \
           "callback class: did you mean keras.callbacks.EarlyStopping?" in line, line
    assert "Traceback" not in out


def test_callbacks_are_built_from_keras_and_imported_modules():
    from distft.config import TrainConfig
    from distft.model.custom import import_modules
    from distft.train.callbacks.user import build

    import_modules(USER_CALLBACKS)
    cfg = TrainConfig.resolve(model="m", data="d", callbacks=[
        "EarlyStopping(monitor='loss', patience=2); keras.callbacks.ReduceLROnPlateau(factor=0.5)",
        "user_callbacks.StopOnOneRank(rank=0, epoch=3)"], early_stopping="accuracy:patience=4:mode=max")
    built = build(cfg)
    assert [type(b.callback).__name__ for b in built] == \
        ["EarlyStopping", "ReduceLROnPlateau", "StopOnOneRank", "EarlyStopping"]
    first, _, mine, shorthand = (b.callback for b in built)
    assert (first.monitor, first.patience, built[1].callback.factor, mine.epoch) == ("loss", 2, 0.5, 3)
    assert (shorthand.monitor, shorthand.patience, shorthand.mode) == ("accuracy", 4, "max")
    assert built[3].option == "--early_stopping=accuracy:patience=4:mode=max"


@pytest.mark.parametrize("spec, expected", [
    ("keras.callbacks.EarlyStoping()", "--callbacks=keras.callbacks.EarlyStoping(): keras.callbacks."
     "EarlyStoping is not a Keras callback class: did you mean keras.callbacks.EarlyStopping?"),
    ("os.system('ls')", "os.system is not a Keras callback class"),  # found, never called
    ("nosuchmodule.Stopper()", "module nosuchmodule is not imported: pass --import=nosuchmodule"),
    ("EarlyStopping(patiense=2)", "--callbacks=EarlyStopping(patiense=2): EarlyStopping refused its "
     "arguments (TypeError: "),
])
def test_only_callback_classes_are_called(spec, expected):
    from distft.config import TrainConfig
    from distft.errors import DistftError
    from distft.train.callbacks.user import build

    with pytest.raises(DistftError) as e:
        build(TrainConfig.resolve(model="m", data="d", callbacks=spec))
    assert expected in str(e.value) and "\n" not in str(e.value)

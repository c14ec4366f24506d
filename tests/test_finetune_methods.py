"""Fine-tuning methods: staged unfreezing, layer-wise learning rates, cached frozen features,
mixed precision and XLA, EMA of the weights. Mechanisms in-process, runs on 2 real workers (the
fine-tunes that the tests only read run in two launches side by side: `methods`)."""
import json
import os
import shutil
from dataclasses import dataclass

import numpy as np
import pytest
import keras
import tensorflow as tf

from conftest import SharedLaunch, distft, horovodrun
from distft.errors import DistftError
from distft.model import stages
from distft.model.prepare import prepare
from distft.train.callbacks.unfreezing import StagedUnfreezing
from distft.train.layerwise import scale_updates
from test_cli_errors import one_error
from test_tensorboard import scalars


def metrics_of(run_dir):
    with open(os.path.join(run_dir, "metrics.json")) as f:
        return json.load(f)


def layer_weights(model_or_path, name):
    model = keras.models.load_model(model_or_path, compile=False) \
        if isinstance(model_or_path, str) else model_or_path
    return model.get_layer(name).get_weights()


def same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a, b))


# ---- grammar ----

def test_schedule_grammar_splits_stages_only_before_epoch_numbers():
    got = stages.parse_schedule("0:last:2,re:^bn,3:from:block_13,6:all")
    assert got == [stages.Stage(0, "last:2,re:^bn"), stages.Stage(3, "from:block_13"),
                   stages.Stage(6, "all")]
    assert stages.parse_lr_mult("re:^block_(1[0-2])=0.1,re:^Conv_1=0.5,last:2,re:x=2") == [
        ("re:^block_(1[0-2])", 0.1), ("re:^Conv_1", 0.5), ("last:2,re:x", 2.0)]


@pytest.mark.parametrize("flags, expected", [
    (["--unfreeze_schedule=2:all"], "the first stage starts at epoch 2: start it at 0"),
    (["--unfreeze_schedule=0:none,3:all,2:last:1"], "stage epochs must increase (3 then 2)"),
    (["--unfreeze_schedule=0:none,5:all", "--epochs=3"], "stage at epoch 5 is never reached"),
    (["--unfreeze_schedule=0:", "--epochs=3"], "stage '0:' is not EPOCH:SPEC"),
    (["--unfreeze_schedule=0:all", "--unfreeze=all"], "--unfreeze and --unfreeze_schedule exclude"),
    (["--lr_mult=re:conv=fast"], "--lr_mult: 're:conv=fast' is not SPEC=FACTOR"),
    (["--lr_mult=all=-1"], "factor -1.0 of 'all' is negative"),
    (["--ema=1.5"], "--ema must be in [0, 1)"),
    (["--precision=float8"], "--precision=float8 is not one of float32|mixed_float16|mixed_bfloat16"),
    (["--sync_bn"], "--sync_bn synchronises BatchNorm layers that train: pass --train_bn too"),
    (["--jit=maybe"], "--jit=maybe is not one of auto|on|off"),
    (["--train_bn", "--sync_bn", "--jit"], "--sync_bn allreduces in the forward pass, which XLA cannot compile"),
    (["--allreduce=ring"], "--allreduce=ring is not one of overlap|group"),
])
def test_bad_method_flags_are_one_line_before_any_work(tmp_path, flags, expected):
    result = distft(["train", "--model=m.h5", "--data=d", f"--output_dir={tmp_path}/o", *flags],
                    timeout=60)
    one_error(result, expected)
    assert not os.path.exists(f"{tmp_path}/o")


def test_distft_jit_sets_the_default_and_a_flag_or_sync_bn_wins(monkeypatch):
    from distft.config import TrainConfig

    def jit(**flags) -> str:
        return TrainConfig.resolve(model="m.keras", data="d", **flags).jit

    monkeypatch.delenv("DISTFT_JIT", raising=False)
    assert jit() == "auto"
    monkeypatch.setenv("DISTFT_JIT", "on")
    assert (jit(), jit(jit="off"), jit(jit=True)) == ("on", "off", "on")
    assert jit(train_bn=True, sync_bn=True) == "auto"  # its allreduce cannot compile
    monkeypatch.setenv("DISTFT_JIT", "sometimes")
    with pytest.raises(DistftError, match=r"DISTFT_JIT=sometimes is not one of auto\|on\|off: fix or unset"):
        jit()


# ---- mechanisms, in-process ----

def tiny(optimizer, factor):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="a"),
                                 keras.layers.Dense(2, name="b")])
    scale_updates(optimizer, {id(v): factor for v in model.get_layer("a").trainable_weights})
    model.compile(optimizer=optimizer, loss="mse")
    x, y = np.random.default_rng(0).random((8, 4)), np.random.default_rng(1).random((8, 2))
    return model, x, y


@pytest.mark.parametrize("factor", [0.0, 0.1])
@pytest.mark.parametrize("make", [lambda: keras.optimizers.SGD(0.1, momentum=0.9),
                                  lambda: keras.optimizers.Adam(0.01)], ids=["sgd", "adam"])
def test_lr_mult_scales_the_update_like_the_learning_rate(make, factor):
    ref, x, y = tiny(make(), 1.0)
    got, _, _ = tiny(make(), factor)
    start = ref.get_weights()
    ref.fit(x, y, epochs=1, batch_size=8, verbose=0)  # one step from the same weights
    got.fit(x, y, epochs=1, batch_size=8, verbose=0)
    for w0, w_ref, w_got in zip(start[:2], ref.get_layer("a").get_weights(), got.get_layer("a").get_weights()):
        np.testing.assert_allclose(w_got - w0, factor * (w_ref - w0), rtol=1e-4, atol=1e-7)
        if factor == 0:
            np.testing.assert_array_equal(w_got, w0)  # bit-identical
    assert same(got.get_layer("b").get_weights(), ref.get_layer("b").get_weights())  # full lr


def test_lr_mult_zero_holds_weights_under_adamw_weight_decay():
    model, x, y = tiny(keras.optimizers.AdamW(0.01, weight_decay=0.5), 0.0)
    start = model.get_weights()
    model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert same(model.get_layer("a").get_weights(), start[:2])
    assert not same(model.get_layer("b").get_weights(), start[2:])


def test_stage_switch_keeps_adam_moments_of_weights_already_training(demo_data):
    ft = prepare(demo_data["model"], num_classes=5)
    plan = stages.Plan(ft, stages.parse_schedule("0:none,1:last:1"))
    opt = keras.optimizers.Adam(1e-3)
    opt.build(plan.variables())
    plan.apply(0)
    ft.model.compile(optimizer=opt, loss=ft.loss)
    moment = lambda layer: opt._momentums[opt._get_variable_index(
        ft.model.get_layer(layer).kernel)].numpy().copy()
    seen = {}

    class Probe(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen[("begin", epoch)] = (moment("distft_head"), moment("features"),
                                      ft.model.get_layer("features").kernel.numpy().copy())

        def on_epoch_end(self, epoch, logs=None):
            seen[("end", epoch)] = (moment("distft_head"), moment("features"),
                                    ft.model.get_layer("features").kernel.numpy().copy())

    x = np.random.default_rng(0).random((32, 8, 8, 1)).astype("float32")
    y = np.arange(32) % 5
    ft.model.fit(x, y, epochs=2, batch_size=8, verbose=0, callbacks=[StagedUnfreezing(plan), Probe()])
    head_end0, feat_end0, kernel_end0 = seen[("end", 0)]
    head_begin1, feat_begin1, kernel_begin1 = seen[("begin", 1)]
    head_end1, feat_end1, kernel_end1 = seen[("end", 1)]
    assert np.abs(head_end0).sum() > 0 and np.array_equal(head_end0, head_begin1)  # kept
    assert not np.abs(feat_end0).any() and np.abs(feat_end1).any()  # features: only in stage 1
    assert np.array_equal(kernel_end0, seen[("begin", 0)][2]) and not np.array_equal(kernel_end1, kernel_begin1)
    assert not np.array_equal(head_end1, head_begin1)


def test_cache_split_needs_one_tensor_between_frozen_and_trainable(demo_data):
    from distft.model.split import split

    ft = prepare(demo_data["model"], num_classes=5, unfreeze="last:2")
    prefix, rest = split(ft.model, set(ft.unfrozen))
    assert [l.name for l in prefix.layers][-1] == "bn1"
    x = np.random.default_rng(0).random((4, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(rest(prefix(x)), ft.model(x), atol=1e-6)
    with pytest.raises(DistftError, match="no frozen layer comes before the first trainable"):
        split(ft.model, {"conv1", "distft_head"})


# ---- two real workers ----

def train_argv(demo_data, out, *flags):
    return ["train", f"--model={demo_data['model']}", f"--data={demo_data['data']}",
            f"--val_data={demo_data['val_data']}", "--num_classes=5", f"--output_dir={out}", *flags]


def train(demo_data, out, *flags, np_=2, timeout=300):
    args = train_argv(demo_data, out, *flags)
    return distft([*args, f"--np={np_}"] if np_ > 1 else args, timeout=timeout)


SCHEDULE = ["--unfreeze_schedule=0:none,1:last:1,2:all", "--lr_mult=re:^conv1$=0", "--ema=0.9",
            "--epochs=3", "--keep_checkpoints=0"]
# The 2-worker fine-tunes the tests below read, by name: two launches run them all (`methods`).
METHODS = {"staged": SCHEDULE,
           "plain": ["--unfreeze=last:2", "--epochs=2"],
           "cached": ["--unfreeze=last:2", "--epochs=2", "--cache_frozen"],
           "mixed_bfloat16_jit": ["--unfreeze=last:2", "--epochs=2", "--precision=mixed_bfloat16", "--jit"]}


@dataclass
class Run:
    dir: str  # the run folder
    out: str  # the run's output (rank 0's lines, as the launch printed them)


@pytest.fixture(scope="module")
def methods(demo_data, tmp_path_factory):
    """Each of METHODS on 2 workers, in two launches side by side: name -> Run."""
    root = str(tmp_path_factory.mktemp("methods"))
    launch = SharedLaunch(root, [{"name": name, "launch": i % 2,  # two launches, side by side
                                  "argv": train_argv(demo_data, os.path.join(root, name), *flags)}
                                 for i, (name, flags) in enumerate(METHODS.items())])
    return {name: Run(os.path.join(root, name), launch.output(name)) for name in METHODS}


@pytest.fixture(scope="module")
def staged(methods):
    run = methods["staged"]
    return run.dir, run


@pytest.mark.multiworker
def test_staged_unfreezing_trains_the_stage_layers_each_epoch(demo_data, staged):
    out, result = staged
    m = metrics_of(out)
    assert len(set(m["weights_checksums"])) == 1
    assert [r["trainable_layers"] for r in m["stages"]] == [
        ["distft_head"], ["features", "distft_head"], ["conv1", "conv2", "features", "distft_head"]]
    assert "epoch 2: stage 1 (from epoch 2: last:1)" in result.out
    assert "epoch 3: stage 2 (from epoch 3: all)" in result.out
    states = [json.load(open(os.path.join(out, "checkpoints", f"epoch-000{e}", "state.json")))
              for e in (1, 2, 3)]
    assert [s["stage"] for s in states] == [0, 1, 2]
    # Weights per epoch, from the checkpoints: each layer moves only once its stage starts.
    base = keras.models.load_model(demo_data["model"], compile=False)
    at = {}
    for e in (1, 2, 3):
        ft = prepare(demo_data["model"], num_classes=5)
        tf.train.Checkpoint(model=ft.model).read(
            os.path.join(out, "checkpoints", f"epoch-000{e}", "ckpt")).expect_partial()
        at[e] = {n: ft.model.get_layer(n).get_weights() for n in ("conv1", "conv2", "features")}
    assert same(at[1]["features"], base.get_layer("features").get_weights())
    assert not same(at[2]["features"], at[1]["features"])
    assert same(at[2]["conv2"], base.get_layer("conv2").get_weights())
    assert not same(at[3]["conv2"], at[2]["conv2"])
    tb = scalars(os.path.join(out, "tensorboard", "train"))
    assert [v for _, v in tb["epoch_stage"]] == [0, 1, 2]
    assert [s for s, _ in tb["epoch_stage"]] == [1, 2, 3]
    assert [v for _, v in tb["epoch_trainable_params"]] == [r["trainable_params"] for r in m["stages"]]


@pytest.mark.multiworker
def test_lr_mult_zero_keeps_a_trainable_layer_unchanged(demo_data, staged):
    out, result = staged
    assert "lr x0 for re:^conv1$: 1 layers, 160 weights (conv1)" in result.out
    tuned = keras.models.load_model(os.path.join(out, "model.keras"), compile=False)
    base = keras.models.load_model(demo_data["model"], compile=False)
    assert same(tuned.get_layer("conv1").get_weights(), base.get_layer("conv1").get_weights())
    assert not same(tuned.get_layer("conv2").get_weights(), base.get_layer("conv2").get_weights())


@pytest.mark.multiworker
def test_ema_is_validated_saved_and_in_sync(demo_data, staged):
    out, _ = staged
    m = metrics_of(out)
    assert len(m["ema_checksums"]) == 2 and len(set(m["ema_checksums"])) == 1
    assert m["ema_checksums"][0] != m["weights_checksums"][0]
    assert 0 < m["validation"]["ema_accuracy"] <= 1
    raw, ema = (os.path.join(out, n) for n in ("model.keras", "model_ema.keras"))
    assert not same(layer_weights(raw, "distft_head"), layer_weights(ema, "distft_head"))
    val = scalars(os.path.join(out, "tensorboard", "validation"))
    assert [s for s, _ in val["epoch_ema_accuracy"]] == [1, 2, 3]


@pytest.mark.multiworker
def test_resume_lands_in_the_right_stage(demo_data, staged, tmp_path):
    out = str(tmp_path / "run")
    shutil.copytree(staged[0], out)
    for name in ("metrics.json", "model.keras", "model_ema.keras"):
        os.remove(os.path.join(out, name))
    shutil.rmtree(os.path.join(out, "checkpoints", "epoch-0003"))  # as if stopped after epoch 2
    result = train(demo_data, out, *SCHEDULE, "--resume")
    assert result.code == 0, result.out[-3000:]
    assert "2 epoch(s) done, 1 to go" in result.out
    assert "now stage 2 (from epoch 3: all)" in result.out
    m = metrics_of(out)
    assert len(set(m["weights_checksums"])) == 1 and len(set(m["ema_checksums"])) == 1
    assert m["stages"] == [{"epoch": 3, "stage": 2, "trainable_params": m["stages"][0]["trainable_params"],
                            "trainable_layers": ["conv1", "conv2", "features", "distft_head"]}]


@pytest.mark.multiworker
def test_cache_frozen_gives_the_same_accuracy(methods):
    plain, cached = methods["plain"], methods["cached"]  # both ended with exit code 0
    assert "cached the frozen prefix's output (8, 8, 16) for 716 records" in cached.out
    a, b = metrics_of(plain.dir), metrics_of(cached.dir)
    assert len(set(b["weights_checksums"])) == 1
    # The records come in another order (the cache holds each worker's share, in file order),
    # so the runs differ a little: within 2 of the 180 validation records.
    assert abs(a["validation"]["accuracy"] - b["validation"]["accuracy"]) <= 2 / 180 + 1e-6
    full = keras.models.load_model(os.path.join(cached.dir, "model.keras"), compile=False)
    assert full.input_shape == (None, 8, 8, 1)  # the full model, usable on raw inputs


@pytest.mark.multiworker
def test_mixed_bfloat16_with_xla_on_two_workers(methods):
    out = methods["mixed_bfloat16_jit"].dir  # ended with exit code 0
    m = metrics_of(out)
    assert len(set(m["weights_checksums"])) == 1
    assert m["validation"]["loss"] < m["validation_before"]["loss"]
    model = keras.models.load_model(os.path.join(out, "model.keras"), compile=False)
    assert model.get_layer("conv2").compute_dtype == "bfloat16"
    assert model.output.dtype == tf.float32


def test_mixed_float16_trains_with_loss_scaling(demo_data, tmp_path):
    out = str(tmp_path / "run")
    result = train(demo_data, out, "--unfreeze=last:2", "--epochs=1", "--precision=mixed_float16",
                   np_=1)
    assert result.code == 0, result.out[-3000:]
    assert np.isfinite(metrics_of(out)["train"]["loss"])


@pytest.mark.multiworker
@pytest.mark.parametrize("flags, expected", [
    (["--unfreeze_schedule=0:none,1:from:conv9"],
     "--unfreeze_schedule=from:conv9: no layer named 'conv9'; close matches: conv2, conv1"),
    (["--lr_mult=re:^block=0.5"], "--lr_mult=re:^block: no layer name matches '^block'"),
    (["--unfreeze=all", "--cache_frozen"],
     "--cache_frozen: no frozen layer comes before the first trainable one"),
])
def test_bad_specs_against_the_model_on_two_workers(demo_data, tmp_path, flags, expected):
    # Under horovodrun: `distft --np` reports the launcher's SIGTERM of rank 1 (after rank 0's
    # exit 2) as a death instead of rank 0's error, on main too (see the report).
    result = horovodrun(["train", f"--model={demo_data['model']}", f"--data={demo_data['data']}",
                         "--num_classes=5", f"--output_dir={tmp_path / 'run'}", "--epochs=2", *flags],
                        timeout=120)
    one_error(result, expected, launcher=True)
    assert not os.path.exists(tmp_path / "run")  # refused before anything is written

"""LoRA (--lora): on a transformer block written by stock Keras in another process, only the
factors and the new head train; a Ctrl-C'd run resumes with its factors and goes on learning on
2 workers; the final model is plain Keras with the factors merged; adapter.npz holds them."""
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from conftest import DISTFT, Job, run

MAKE = os.path.join(os.path.dirname(__file__), "data", "make_transformer.py")
LORA = ["--num_classes=4", "--lora=4"]


@pytest.fixture(scope="module")
def transformer(tmp_path_factory) -> dict:
    """transformer.keras, train.npz and val.npz from tests/data/make_transformer.py."""
    folder = str(tmp_path_factory.mktemp("transformer"))
    result = run([sys.executable, MAKE, folder, "--records=1024"], timeout=180)
    assert result.code == 0, result.out[-3000:]
    return {key: os.path.join(folder, name) for key, name in
            (("model", "transformer.keras"), ("train", "train.npz"), ("val", "val.npz"))}


def lora_model(transformer, **options):
    from distft.model.prepare import prepare

    return prepare(transformer["model"], num_classes=4, lora_rank=4, **options)


def factors(model) -> dict:
    from distft.model import lora

    return {v.path: np.asarray(v) for v in model.weights if lora.is_factor(v)}


def test_only_the_factors_and_the_head_train_and_the_merged_model_is_plain(transformer, tmp_path):
    import keras

    from distft.model import lora
    from distft.model.prepare import prepare

    ft = lora_model(transformer)
    trained = {v.path for v in ft.model.trainable_variables}
    layers = {"embed", "attention/query", "attention/key", "attention/value",
              "attention/attention_output", "ffn_1", "ffn_2"}
    assert trained == {f"{l}/lora_{'embeddings' if l == 'embed' else 'kernel'}_{ab}"
                       for l in layers for ab in "ab"} | {"distft_head/kernel", "distft_head/bias"}
    assert set(lora.summary(ft.model)["layers"]) == layers
    total = sum(int(np.prod(w.shape)) for w in ft.model.weights)
    assert ft.trainable_params + ft.frozen_params == total  # biases and LayerNorms frozen
    head = 32 * 4 + 4
    assert ft.trainable_params - head == lora.summary(ft.model)["factor_params"]
    # The frozen weights under the factors are not statistics to average every epoch (nor
    # training state to commit): the model's 0.2M frozen weights stay off the network.
    from distft.train.callbacks.statistics import LayerStatistics

    frozen = [v for l in lora.layers_with_lora(ft.model) for v in l.non_trainable_variables]
    assert len(frozen) == 2 * len(layers) - 1  # kernels, biases; Embedding: its table
    assert LayerStatistics(ft.model, worker=None).variables() == []

    only = lora_model(transformer, lora_layers="attention/(query|value)", unfreeze="re:^norm_2$")
    assert {v.path for v in only.model.trainable_variables} == {
        f"attention/{p}/lora_kernel_{ab}" for p in ("query", "value") for ab in "ab"} | {
        "norm_2/gamma", "norm_2/beta", "distft_head/kernel", "distft_head/bias"}

    from distft.errors import DistftError

    with pytest.raises(DistftError, match="matches no Dense, EinsumDense or Embedding layer"):
        lora_model(transformer, lora_layers="^nothing")
    with pytest.raises(DistftError, match="which --unfreeze trains whole"):
        lora_model(transformer, lora_layers="ffn", unfreeze="re:^ffn_1$")

    rng = np.random.default_rng(0)
    for v in ft.model.weights:  # B starts at zero: give the factors a product to merge
        if lora.is_factor(v):
            v.assign(rng.normal(0, 0.1, v.shape))
    x = np.load(transformer["val"])["x"][:32].astype("float32")
    plain = lora.merged(ft.model)
    assert "lora_rank" not in json.dumps(keras.saving.serialize_keras_object(plain))
    assert not lora.layers_with_lora(plain)
    np.testing.assert_allclose(plain.predict(x, verbose=0), ft.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    assert not np.allclose(plain.get_layer("ffn_1").get_weights()[0],
                           keras.models.load_model(transformer["model"]).get_layer("ffn_1").get_weights()[0])
    # Keras's own save keeps lora_rank and reloads with zeroed factors: distft loads plain layers.
    ft.model.save(tmp_path / "keras_lora.keras")
    again = prepare(str(tmp_path / "keras_lora.keras"), unfreeze="all")
    assert not lora.layers_with_lora(again.model) and again.frozen_params == 0
    np.testing.assert_allclose(again.model.predict(x, verbose=0), ft.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)
    lora.save_adapter(ft.model, str(tmp_path / "adapter.npz"))
    with np.load(tmp_path / "adapter.npz") as z:
        assert int(z["lora_rank"]) == 4 and float(z["lora_alpha"]) == 4
        saved = {k: z[k] for k in z.files if "/" in k}
    assert saved.keys() == factors(ft.model).keys()
    for k, v in factors(ft.model).items():
        np.testing.assert_array_equal(saved[k], v)


def test_lora_options_are_checked():
    from distft.config import TrainConfig
    from distft.errors import DistftError

    base = {"model": "m.keras", "data": "d.npz"}
    for options, message in (({"lora_layers": "query"}, "--lora_layers needs --lora=RANK"),
                             ({"save_adapter": True}, "--save_adapter needs --lora=RANK"),
                             ({"lora": -1}, "--lora is the LoRA rank"),
                             ({"lora": 4, "lora_alpha": 0}, "--lora_alpha must be positive"),
                             ({"lora": 4, "lora_layers": "("}, "bad regular expression"),
                             ({"lora": 4, "unfreeze_schedule": "0:none,1:all", "epochs": 3},
                              "exclude each other")):
        with pytest.raises(DistftError, match=re.escape(message)):
            TrainConfig.resolve(**base, **options)


def restore(model, folder: str) -> None:
    """The model's part of a distft checkpoint (as --resume reads it, without the optimizer)."""
    import tensorflow as tf

    tf.train.Checkpoint(model=model).read(os.path.join(folder, "ckpt")) \
        .assert_existing_objects_matched().expect_partial()


def validation_loss_before(out: str) -> float:
    (line,) = [l for l in out.splitlines() if "validation before fine-tuning:" in l]
    return float(re.search(r"loss (\S+)", line).group(1))


@pytest.mark.multiworker
def test_ctrl_c_and_resume_on_two_workers(transformer, tmp_path):
    """A LoRA run stopped by Ctrl-C resumes with the checkpointed factors (not Keras' zeroed
    ones) and goes on learning; the ranks end identical; model.keras opens in stock Keras
    without LoRA and predicts as the LoRA model; adapter.npz holds the final factors."""
    import tensorflow as tf

    from distft.train.checkpoint import CheckpointStore

    run_dir = str(tmp_path / "run")
    args = [DISTFT, "train", f"--model={transformer['model']}", f"--data={transformer['train']}",
            f"--val_data={transformer['val']}", *LORA, "--save_adapter", "--epochs=6",
            "--batch_size=16", "--log_every=1000", f"--output_dir={run_dir}", "--np=2"]
    job = Job(args, str(tmp_path / "log"))
    job.wait_for("epoch 1/6")  # 5 epochs left: the stop lands mid-run
    os.killpg(job.proc.pid, signal.SIGINT)
    assert job.wait(60) == 75, job.out[-3000:]
    assert "Ctrl-C (SIGINT) received" in job.out
    assert re.search(r"weights: 2500 trainable, \d+ frozen", job.out)
    assert "LoRA rank 4, alpha 4, on 7 layers" in job.out
    start_loss = validation_loss_before(job.out)
    stopped, state = CheckpointStore(os.path.join(run_dir, "checkpoints")).latest()
    assert state.epoch < 6

    # What --resume restores: the checkpoint's factors, trained (B non-zero), not zeros.
    ft = lora_model(transformer)
    restore(ft.model, stopped)
    reader = tf.train.load_checkpoint(os.path.join(stopped, "ckpt"))
    stored = {reader.get_tensor(k).tobytes() for k in reader.get_variable_to_shape_map()
              if k != "_CHECKPOINTABLE_OBJECT_GRAPH"}
    restored = factors(ft.model)
    assert len(restored) == 14 and all(v.tobytes() in stored for v in restored.values())
    assert all(np.abs(v).max() > 0 for k, v in restored.items() if k.endswith("_b"))

    resumed = Job([*args, "--resume"], str(tmp_path / "log2"))
    assert resumed.wait(180) == 0, resumed.out[-3000:]
    resumed_loss = validation_loss_before(resumed.out)
    with open(os.path.join(run_dir, "metrics.json")) as f:
        m = json.load(f)
    print(f"validation loss: {start_loss:.4f} at the start, {resumed_loss:.4f} at the resume, "
          f"{m['validation']['loss']:.4f} at the end (accuracy {m['validation']['accuracy']:.4f})")
    assert resumed_loss < 0.7 * start_loss  # zeroed factors would start over
    assert m["validation"]["loss"] < resumed_loss and m["validation"]["accuracy"] > 0.8
    assert len(m["weights_checksums"]) == 2 and len(set(m["weights_checksums"])) == 1
    assert m["lora"]["rank"] == 4 and "attention/query" in m["lora"]["layers"]
    assert m["params"]["trainable"] == m["lora"]["factor_params"] + 32 * 4 + 4

    # The final LoRA model (last checkpoint) against model.keras in stock Keras.
    final, _ = CheckpointStore(os.path.join(run_dir, "checkpoints")).latest()
    restore(ft.model, final)
    with np.load(os.path.join(run_dir, "adapter.npz")) as z:
        for k, v in factors(ft.model).items():
            np.testing.assert_array_equal(z[k], v)
    x = np.load(transformer["val"])["x"][:64].astype("float32")
    np.save(tmp_path / "x.npy", x)
    stock = subprocess.run([sys.executable, "-c", STOCK, os.path.join(run_dir, "model.keras"),
                            str(tmp_path / "x.npy"), str(tmp_path / "p.npy")],
                           capture_output=True, text=True, timeout=120)
    assert stock.returncode == 0, stock.stderr[-3000:]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), ft.model.predict(x, verbose=0),
                               rtol=1e-5, atol=1e-6)


# Stock Keras (no distft): load model.keras, check no layer has LoRA, save its predictions.
STOCK = """
import json, sys
import keras, numpy as np
model = keras.models.load_model(sys.argv[1])
assert "lora_rank" not in json.dumps(model.get_config())
assert not any(getattr(l, "lora_enabled", False) for l in model._flatten_layers())
np.save(sys.argv[3], model.predict(np.load(sys.argv[2]), verbose=0))
assert not any(m.startswith("distft") for m in sys.modules)
"""

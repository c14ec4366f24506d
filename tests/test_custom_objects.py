"""A user's custom layer (--import) and a Keras Hub task model, from files that stock Keras wrote in
a process without distft (tests/custom_models.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from distft import cli
from distft.config import TrainConfig
from distft.errors import DistftError
from distft.model import custom, loading
from tests.conftest import distft

WRITER = os.path.join(os.path.dirname(__file__), "custom_models.py")


def need_keras_hub() -> None:
    """keras-hub (the hub extra) needs Python 3.11+; there, scripts/setup.sh installs it, and its
    absence fails the test rather than skipping it."""
    if sys.version_info < (3, 11):
        pytest.skip("keras-hub requires Python 3.11 or newer")
    import keras_hub  # noqa: F401


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> str:
    folder = str(tmp_path_factory.mktemp("custom"))
    subprocess.run([sys.executable, WRITER, folder], check=True, capture_output=True)
    return folder


@pytest.fixture
def forget_mymod(monkeypatch):
    """Leave no trace of mymod in this process: not its module, its folder on sys.path (where
    --import=FILE.py puts it) or its registered class."""
    import keras

    monkeypatch.setattr(sys, "path", list(sys.path))
    yield
    sys.modules.pop("mymod", None)
    keras.saving.get_custom_objects().pop("mymod>Scale", None)


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    """`distft ARGS` run in this process: (exit code, stdout, stderr)."""
    try:
        cli.main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def test_a_custom_layer_loads_with_import(files, capsys, monkeypatch, forget_mymod):
    model = os.path.join(files, "custom.keras")
    code, _, err = _cli(capsys, "inspect", f"--model={model}")
    assert code == 2 and err == (f"distft: error: --model={model} uses mymod>Scale, which no "
                                 "imported module registers: pass --import=mymod (on PYTHONPATH) "
                                 "or the .py file that defines it\n")
    code, _, err = _cli(capsys, "inspect", f"--model={model}", "--import=mymod")
    assert err == ("distft: error: --import=mymod: No module named 'mymod': put its folder on "
                   "PYTHONPATH or pass the .py file\n")
    monkeypatch.syspath_prepend(files)
    code, out, _ = _cli(capsys, "inspect", f"--model={model}", "--import=mymod")
    assert code == 0 and " scale   Scale " in out
    assert loading.load(model).get_layer("scale").factor == 0.5
    sys.modules.pop("mymod")
    import keras

    keras.saving.get_custom_objects().pop("mymod>Scale")
    sys.path.remove(files)
    with pytest.raises(DistftError, match="uses mymod>Scale"):
        loading.load(model)
    code, out, _ = _cli(capsys, "inspect", f"--model={model}", f"--import={files}/mymod.py")
    assert code == 0 and " scale   Scale " in out


def test_import_is_a_yaml_key_and_a_flag(tmp_path):
    """`import` is a Python keyword: the field is `import_`, the key and flag `import`."""
    (tmp_path / "run.yaml").write_text("import: [mylayers, src/blocks.py]\n")
    cfg = TrainConfig.resolve(str(tmp_path / "run.yaml"), model="m.keras", data="d")
    assert cfg.import_ == ("mylayers", "src/blocks.py")
    assert cfg.to_dict()["import"] == ["mylayers", "src/blocks.py"]  # config.yaml, workers' flags
    assert TrainConfig.resolve(model="m.keras", data="d", import_="a,b").import_ == ("a", "b")
    assert "  --import: modules" in cli.Commands.train.__doc__


def test_version_advice_only_when_the_versions_differ(files, tmp_path, forget_mymod):
    """A class registered under the file's name whose code cannot rebuild it: the same Keras
    wrote the file, so the message does not send the user to another Keras."""
    (tmp_path / "mymod.py").write_text(
        "import keras\n\n\n@keras.saving.register_keras_serializable(package='mymod')\n"
        "class Scale(keras.layers.Layer):\n    def __init__(self, **kwargs):\n"
        "        super().__init__(**kwargs)\n")
    custom.import_modules(str(tmp_path / "mymod.py"))
    with pytest.raises(DistftError) as e:
        loading.load(os.path.join(files, "custom.keras"))
    assert "written by Keras 3.15.1) cannot be rebuilt" in str(e.value)
    assert "wrote it" not in str(e.value) and "check the get_config and from_config" in str(e.value)


def test_a_keras_hub_model_needs_no_flag(files, monkeypatch):
    need_keras_hub()
    path = os.path.join(files, "hub_classifier.keras")
    model = loading.load(path)
    assert type(model).__name__ == "BertTextClassifier"
    ids = np.arange(1, 33, dtype="int32").reshape(2, 16)
    assert model({"token_ids": ids, "segment_ids": 0 * ids, "padding_mask": ids > 0}).shape == (2, 2)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "keras_hub" else real(n, *a))
    with pytest.raises(DistftError, match=r"is a Keras Hub model \(keras_hub>BertTextClassifier\) "
                                          "and keras_hub is not installed"):
        loading.load(path)


def test_an_input_of_any_length_takes_the_arrays_length():
    """Keras Hub's token inputs are (None,): the data's rows give the length."""
    from distft.data import named

    port = named.Port("token_ids", (None,), "int32")
    (bound,), _ = named.bind((named.Field("token_ids", "bool", (16,)),), (port,), (), False, "d.npz")
    assert bound.shape == (16,) and bound.dtype == "int32"
    with pytest.raises(DistftError, match=r"^--data=d.npz: 'token_ids' has rows of shape \(4, 4\) "
                                          r"but the model's input 'token_ids' is \(None,\)"):
        named.bind((named.Field("token_ids", "int32", (4, 4)),), (port,), (), False, "d.npz")


def test_lora_on_a_keras_hub_classifier_trains_only_the_factors_and_the_new_head(files):
    """By default the factors go where Keras Hub's own `backbone.enable_lora` puts them (the
    attention's query and value); `--lora_layers` reaches its other EinsumDense, Dense and
    Embedding layers. The new head keeps the output's name, so the data's target array stays
    `logits`."""
    need_keras_hub()
    import keras

    from distft.model import lora
    from distft.model.prepare import prepare

    path = os.path.join(files, "hub_classifier.keras")
    stock = keras.saving.load_model(path)
    stock.backbone.enable_lora(4)
    picked = {l.path for l in stock._flatten_layers() if getattr(l, "lora_enabled", False)}
    attention = "transformer_layer_0/self_attention_layer/"
    assert picked == {attention + "query", attention + "value"}
    ft = prepare(path, num_classes=2, lora_rank=4)
    assert set(lora.summary(ft.model)["layers"]) == picked and ft.model.output_names == ["logits"]
    assert {v.path for v in ft.model.trainable_variables} == {"logits/kernel", "logits/bias"} | {
        f"{l}/lora_kernel_{ab}" for l in picked for ab in "ab"}

    ft = prepare(path, num_classes=2, lora_rank=4, lora_layers=".")
    block = "transformer_layer_0/"
    layers = {"token_embedding", "segment_embedding", "pooled_dense"} | {
        block + l for l in ("feedforward_intermediate_dense", "feedforward_output_dense")} | {
        attention + l for l in ("query", "key", "value", "attention_output")}
    assert {v.path for v in ft.model.trainable_variables} == {"logits/kernel", "logits/bias"} | {
        f"{l}/lora_{'embeddings' if l.endswith('embedding') else 'kernel'}_{ab}"
        for l in layers for ab in "ab"}
    assert set(lora.summary(ft.model)["layers"]) == layers


@pytest.mark.multiworker
def test_a_custom_layer_from_a_user_module_trains_on_two_workers(files, tmp_path):
    """custom.keras (mymod>Scale) on 2 workers, its module named by the YAML key `import` as a
    .py file; evaluate of the result with --import by module name, found on PYTHONPATH."""
    run, val = tmp_path / "run", os.path.join(files, "numbers_val.npz")
    (tmp_path / "run.yaml").write_text(
        f"import: {files}/mymod.py\nmodel: {files}/custom.keras\ndata: {files}/numbers_train.npz\n"
        f"val_data: {val}\nnp: 2\nepochs: 3\nbatch_size: 16\nlr: 0.05\noutput_dir: {run}\n")
    result = distft(["train", f"--config={tmp_path / 'run.yaml'}"], timeout=240)
    assert result.code == 0, result.out[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["workers"] == 2 and len(set(metrics["weights_checksums"])) == 1
    assert metrics["validation_before"]["accuracy"] < 0.75 < 0.9 < metrics["validation"]["accuracy"]
    assert "import:" in (run / "config.yaml").read_text()
    result = distft(["evaluate", f"--model={run / 'model.keras'}", f"--data={val}", "--import=mymod",
                     f"--output={tmp_path / 'eval.json'}"], timeout=120,
                    env={"PYTHONPATH": os.pathsep.join([files, os.environ.get("PYTHONPATH", "")])})
    assert result.code == 0, result.out[-3000:]
    accuracy = json.loads((tmp_path / "eval.json").read_text())["accuracy"]
    assert accuracy == pytest.approx(metrics["validation"]["accuracy"])


@pytest.mark.multiworker
def test_a_keras_hub_text_classifier_fine_tunes_on_two_workers(files, tmp_path):
    """The BertTextClassifier itself (inputs token_ids, segment_ids, padding_mask of any length;
    output logits) from .npz arrays of those names (a bool padding_mask), trained whole on 2
    workers with the objective Keras Hub compiled it with (its metric sparse_categorical_accuracy);
    evaluate and predict agree on the accuracy (evaluate on 2 workers of named .npz data:
    tests/test_multi_io.py)."""
    acc = "sparse_categorical_accuracy"
    need_keras_hub()
    run, val = tmp_path / "run", os.path.join(files, "val.npz")
    result = distft(["train", f"--model={files}/hub_classifier.keras", f"--data={files}/train.npz",
                     f"--val_data={val}", "--np=2", "--epochs=3", "--batch_size=16",
                     f"--output_dir={run}"], timeout=240)
    assert result.code == 0, result.out[-3000:]
    assert "model's graph is not written" not in result.out
    assert "from the model file" in result.out, result.out[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["workers"] == 2 and len(set(metrics["weights_checksums"])) == 1
    assert metrics["params"] == {"trainable": 4450, "frozen": 0}
    assert metrics["validation_before"][acc] < 0.7 < 0.85 < metrics["validation"][acc]
    model = str(run / "model.keras")
    result = distft(["evaluate", f"--model={model}", f"--data={val}",
                     f"--output={tmp_path / 'eval.json'}"], timeout=120)
    assert result.code == 0, result.out[-3000:]
    accuracy = json.loads((tmp_path / "eval.json").read_text())[acc]
    assert accuracy == pytest.approx(metrics["validation"][acc])
    result = distft(["predict", f"--model={model}", f"--data={val}", f"--output={tmp_path / 'p.npy'}"],
                    timeout=120)
    assert result.code == 0, result.out[-3000:]
    with np.load(val) as v:
        assert (np.load(tmp_path / "p.npy").argmax(1) == v["logits"]).mean() == pytest.approx(accuracy)

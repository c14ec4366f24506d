"""Seeing a language model talk (issue 30, part 7): `distft generate` and the `Generations`
callback, on a tiny GemmaCausalLM that stock keras_hub writes in a process without distft.

The model has its preprocessor: a SentencePiece word vocabulary (18 pieces: 4 special, 14
words) trained on three sentences, sequence length 16, and a 2-layer backbone that a short
plain-Keras fit on one repeated sentence taught to finish it, so greedy output is more than one
token repeated. The same process loads the saved file again with stock keras_hub and records
what its `generate` gives for each prompt: the texts `distft generate` must print exactly.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import run
from test_custom_objects import need_keras_hub

MAX_LENGTH = 12
PROMPT = "dog, cat"  # Fire alone would read it as the tuple ("dog", "cat"): "dog,cat" here
PROMPTS = ["the cat", "a bird", "the dog ran"]

# Stock keras_hub, no distft: the model, one without its preprocessor, and the reference texts.
WRITER = f"""
import io, json, os, sys
import keras, keras_hub, sentencepiece
folder = sys.argv[1]
keras.utils.set_random_seed(0)
sentences = ["the cat sat on the mat", "the dog ran in the park", "a bird flew over the tree"]
proto = io.BytesIO()
sentencepiece.SentencePieceTrainer.train(
    sentence_iterator=iter(sentences * 4), model_writer=proto, vocab_size=18, model_type="word",
    pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>", unk_piece="<unk>",
    bos_piece="<bos>", eos_piece="<eos>", minloglevel=2)
tok = keras_hub.models.GemmaTokenizer(proto=proto.getvalue())
preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tok, sequence_length=16)
def backbone():
    return keras_hub.models.GemmaBackbone(vocabulary_size=tok.vocabulary_size(), num_layers=2,
        num_query_heads=2, num_key_value_heads=1, hidden_dim=32, intermediate_dim=64, head_dim=16)
lm = keras_hub.models.GemmaCausalLM(backbone(), preprocessor)
lm.compile(optimizer=keras.optimizers.Adam(1e-2))
lm.fit(["the cat sat on the mat"] * 32, batch_size=8, epochs=6, verbose=0)
path = os.path.join(folder, "gemma.keras")
lm.save(path)
keras_hub.models.GemmaCausalLM(backbone(), preprocessor=None).save(
    os.path.join(folder, "no_preprocessor.keras"))
stock = keras.saving.load_model(path)
texts = {{p: stock.generate(p, max_length={MAX_LENGTH}) for p in [{PROMPT!r}, *{PROMPTS!r}]}}
with open(os.path.join(folder, "stock.json"), "w") as f:
    json.dump(texts, f)
assert not any(m.startswith("distft") for m in sys.modules)
"""


@pytest.fixture(scope="module")
def gemma(tmp_path_factory) -> dict:
    need_keras_hub()
    folder = str(tmp_path_factory.mktemp("generate"))
    result = run([sys.executable, "-c", WRITER, folder], timeout=180)
    assert result.code == 0, result.out[-3000:]
    with open(os.path.join(folder, "stock.json")) as f:
        stock = json.load(f)
    return {"folder": folder, "model": os.path.join(folder, "gemma.keras"), "stock": stock}


def generate(*args: str) -> subprocess.CompletedProcess:
    """`python -m distft generate ARGS`, its stdout and stderr apart."""
    return subprocess.run([sys.executable, "-m", "distft", "generate", *args], text=True,
                          capture_output=True, timeout=180)


def test_greedy_prints_what_stock_keras_hub_generates(gemma):
    stock = gemma["stock"][PROMPT]
    assert stock.endswith("cat sat on the mat"), stock  # a real continuation
    done = generate(f"--model={gemma['model']}", f"--prompt={PROMPT}", "--sampler=greedy",
                    f"--max_length={MAX_LENGTH}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout == stock + "\n"


def test_a_prompts_file_gives_one_text_a_line_from_a_run_folder(gemma, tmp_path):
    stock = [gemma["stock"][p] for p in PROMPTS]
    assert len(set(stock)) == 3 and any(s.split()[-1] != s.split()[-2] for s in stock), stock
    run_folder = tmp_path / "run"
    run_folder.mkdir()
    shutil.copy(gemma["model"], run_folder / "model.keras")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join([PROMPTS[0], "", *PROMPTS[1:]]) + "\n")  # a blank line: no prompt
    done = generate(f"--model={run_folder}", f"--prompts={prompts}", f"--max_length={MAX_LENGTH}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == stock


def test_output_writes_json_lines(gemma, tmp_path):
    prompts, output = tmp_path / "prompts.txt", tmp_path / "generated.jsonl"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    done = generate(f"--model={gemma['model']}", f"--prompts={prompts}", f"--output={output}",
                    f"--max_length={MAX_LENGTH}")
    assert done.returncode == 0, done.stderr[-3000:]
    assert [json.loads(line) for line in output.read_text().splitlines()] == \
        [{"prompt": p, "generated": gemma["stock"][p]} for p in PROMPTS]
    assert not any(gemma["stock"][p] in done.stdout for p in PROMPTS)  # written, not printed


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> str:
    import keras

    path = str(tmp_path_factory.mktemp("plain") / "dense.keras")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(path)
    return path


@pytest.mark.parametrize("args, says", [
    ([], "no prompt: pass --prompt=TEXT or --prompts=FILE"),
    (["--prompt=the cat", "--sampler=nucleus"], "--sampler=nucleus is not one of"),
])
def test_bad_flags_are_one_error_line(gemma, args, says):
    result = run([sys.executable, "-m", "distft", "generate", f"--model={gemma['model']}", *args],
                 timeout=180)
    assert result.code != 0
    assert len(result.lines) == 1 and result.lines[0].startswith("distft: error: "), result.out
    assert says in result.lines[0]


@pytest.mark.parametrize("case", ["plain", "no_preprocessor"])
def test_a_model_that_cannot_talk_is_one_error_line(gemma, tmp_path, capsys, case):
    """In this process (its TensorFlow already loaded): `distft generate` as the CLI runs it."""
    import keras

    from test_custom_objects import _cli

    model, says = str(tmp_path / "dense.keras"), "is a Sequential, not a Keras Hub causal language model"
    if case == "plain":
        keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]).save(model)
    else:
        model, says = os.path.join(gemma["folder"], "no_preprocessor.keras"), \
            "is a GemmaCausalLM saved without its preprocessor"
    code, out, err = _cli(capsys, "generate", f"--model={model}", "--prompt=the cat")
    assert code != 0 and out == ""
    assert len(err.splitlines()) == 1 and err.startswith("distft: error: "), err
    assert says in err


def test_a_seed_repeats_a_random_sampler(gemma):
    import distft
    from distft.model.generation import causal_lm

    lm = causal_lm(gemma["model"])
    greedy = distft.generate(lm, PROMPTS, sampler="greedy", max_length=MAX_LENGTH)
    assert greedy == [gemma["stock"][p] for p in PROMPTS]
    seeded = [distft.generate(lm, PROMPTS, sampler="random", max_length=MAX_LENGTH, seed=s)
              for s in (1, 2, 1)]
    assert seeded[0] == seeded[2]
    assert greedy not in seeded  # the sampler is the one asked for


def _texts(folder: str) -> dict[int, str]:
    """The `generations` text of the event file in `folder`, by step."""
    import tensorflow as tf

    found = {}
    for path in glob.glob(os.path.join(folder, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "generations":
                    assert value.metadata.plugin_data.plugin_name == "text"
                    found[event.step] = tf.make_ndarray(value.tensor).item().decode()
    return found


def test_the_callback_writes_each_epochs_generations_to_tensorboard(gemma, tmp_path):
    import keras

    from distft.train.callbacks.samples import Generations

    lm = keras.saving.load_model(gemma["model"])
    heard: list[list[str]] = []

    class Listen(keras.callbacks.Callback):  # after the callbacks: stock generate, same weights
        def on_epoch_end(self, epoch, logs=None):
            heard.append([lm.generate(p, max_length=MAX_LENGTH) for p in PROMPTS])

    def broken() -> keras.Model:
        raise RuntimeError("no model here")

    folders = {name: str(tmp_path / name) for name in ("model", "function", "rank1", "broken")}
    callbacks = [Generations(lm, PROMPTS, folders["model"], MAX_LENGTH, rank=0),
                 Generations(lambda: lm, PROMPTS, folders["function"], MAX_LENGTH, rank=0),
                 Generations(lm, PROMPTS, folders["rank1"], MAX_LENGTH, rank=1),
                 Generations(broken, PROMPTS, folders["broken"], MAX_LENGTH, rank=0), Listen()]
    lm.compile(optimizer=keras.optimizers.Adam(3e-2))
    lm.fit(["a bird flew over the tree"] * 16, batch_size=8, epochs=2, verbose=0,
           callbacks=callbacks)
    assert len(heard) == 2 and heard[0] != heard[1], heard  # trained on, the model changed
    for name in ("model", "function"):
        texts = _texts(folders[name])
        assert sorted(texts) == [1, 2], texts
        for step, said in zip((1, 2), heard):
            rows = texts[step].splitlines()
            assert rows[:2] == ["| prompt | generated |", "|---|---|"], texts[step]
            assert rows[2:] == [f"| {p} | {s} |" for p, s in zip(PROMPTS, said)], texts[step]
    assert not os.path.exists(folders["rank1"]) and not os.path.exists(folders["broken"])

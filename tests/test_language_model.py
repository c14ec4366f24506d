"""Keras Hub text models on raw text (issue 30): tiny models that stock keras_hub writes with
their preprocessors in a process without distft (tests/data/make_hub_text.py), fine-tuned on
2 workers from JSONL, .txt and CSV text.

- A GemmaCausalLM with `--lora` on raw text: held-out token accuracy rises from the random
  base's to far above it, the loss is the mean over all workers' real tokens, perplexity and
  token accuracy are reported, TensorBoard's Text tab shows what the model says each epoch,
  and the merged model.keras, opened in stock keras_hub, generates the pattern it learnt.
- The same with prompt/response pairs (the prompts' tokens weigh 0).
- Text shards, and token-id shards of the same pairs (`distft shard --model`): training on the
  token ids ends with the weights of the same run on the text.
- A BERT text classifier (logits head, kept with its file's objective) on a CSV text column.
- Text for a model without a preprocessor, half a prompt/response pair, a missing text field,
  and token ids for a model of another vocabulary or with another --sequence_length: one
  error line each.
- Ctrl-C, then --resume, of a LoRA causal-LM run ends where a run never stopped ends.

tests/test_equivalence.py holds the exactness rows (2 workers against 1 on the doubled batch).
"""
from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest

from conftest import DISTFT, Job, SharedLaunch, one_line, run
from test_custom_objects import need_keras_hub
from test_multiworker import weights_by_layer

pytestmark = pytest.mark.multiworker

HERE = os.path.dirname(__file__)
MAKE = os.path.join(HERE, "data", "make_hub_text.py")
RECORDS = 261

# Stock keras_hub, no distft: what a saved causal LM is and says.
STOCK = """
import json, sys
import keras, keras_hub
model = keras.saving.load_model(sys.argv[1])
print(json.dumps({"task": type(model).__name__, "preprocessor": type(model.preprocessor).__name__,
                  "lora": "lora" in json.dumps(model.get_config()),
                  "generated": [model.generate(p, max_length=8) for p in sys.argv[2:]]}))
assert not any(m.startswith("distft") for m in sys.modules)
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> str:
    need_keras_hub()
    folder = str(tmp_path_factory.mktemp("hub_text"))
    result = run([sys.executable, MAKE, folder, str(RECORDS)], timeout=300)
    assert result.code == 0, result.out[-3000:]
    return folder


def lm_args(hub: str, name: str, *more: str) -> list[str]:
    return ["train", f"--model={hub}/gemma.keras", "--lora=4", "--lr=2e-2", "--batch_size=16",
            "--log_every=1000", f"--output_dir={hub}/runs/{name}", *more]


@pytest.fixture(scope="module")
def launch(hub) -> SharedLaunch:
    from concurrent.futures import ThreadPoolExecutor

    pairs = [DISTFT, "shard", f"--input={hub}/pairs.jsonl", "--prompt_key=prompt", "--response_key=response",
             "--num_shards=4"]  # as text, and as token ids of 12 tokens a record: in the same order
    with ThreadPoolExecutor() as pool:
        for sharded in pool.map(run, [[*pairs, f"--output_dir={hub}/shards"],
                                      [*pairs, f"--output_dir={hub}/token_shards", f"--model={hub}/gemma.keras",
                                       "--sequence_length=12"]]):
            assert sharded.code == 0, sharded.out[-3000:]
    lora_model = f"{hub}/runs/lora/model.keras"
    ids = np.random.default_rng(0).integers(4, 24, (64, 17)).astype("int32")  # token ids, not text
    np.savez(f"{hub}/ids.npz", token_ids=ids[:, :-1], padding_mask=np.ones((64, 16), "int32"), y=ids[:, 1:])
    runs = [
        {"name": "lora", "argv": lm_args(hub, "lora", f"--data={hub}/train.jsonl",
                                         f"--val_data={hub}/held.txt", "--epochs=12", "--generations=4")},
        {"name": "int8", "launch": 1, "argv": lm_args(hub, "int8", f"--data={hub}/train.jsonl",
                                         f"--val_data={hub}/held.txt", "--epochs=12", "--quantize=int8",
                                         "--generations=0")},
        {"name": "pairs", "launch": 1, "argv": lm_args(hub, "pairs", f"--data={hub}/pairs.jsonl", "--val_split=0.2",
                                          "--prompt_key=prompt", "--response_key=response", "--epochs=12",
                                          "--generations=0")},
        {"name": "evaluate", "argv": ["evaluate", f"--model={lora_model}", f"--data={hub}/held.jsonl",
                                      f"--output={hub}/runs/evaluated.json"]},
        {"name": "predict", "argv": ["predict", f"--model={lora_model}", f"--data={hub}/held.txt",
                                     f"--output={hub}/runs/generated.jsonl"]},
        {"name": "shards", "launch": 1, "argv": lm_args(hub, "shards", f"--data={hub}/shards", "--val_split=0.2",
                                           "--sequence_length=12", "--cache=memory", "--epochs=6",
                                           "--generations=0")},
        {"name": "token_shards", "launch": 1, "argv": lm_args(
            hub, "token_shards", f"--data={hub}/token_shards", "--val_split=0.2", "--sequence_length=12",
            "--cache=memory", "--epochs=6", "--generations=0")},
        {"name": "classifier", "argv": ["train", f"--model={hub}/bert.keras", f"--data={hub}/reviews.csv",
                                        "--val_split=0.2", "--epochs=8", "--lr=3e-3", "--batch_size=16",
                                        f"--output_dir={hub}/runs/classifier"]},
        {"name": "ids_y", "argv": ["train", f"--model={hub}/gemma_ids.keras", f"--data={hub}/ids.npz",
                                   "--epochs=1", f"--output_dir={hub}/runs/ids_y"]},
        {"name": "no_preprocessor", "argv": ["train", f"--model={hub}/gemma_ids.keras",
                                             f"--data={hub}/train.jsonl", f"--output_dir={hub}/runs/x1"]},
        {"name": "half_pair", "argv": lm_args(hub, "x2", f"--data={hub}/pairs.jsonl", "--prompt_key=prompt")},
        {"name": "missing_field", "argv": lm_args(hub, "x3", f"--data={hub}/pairs.jsonl")},
        {"name": "tokens_other_model", "argv": ["train", f"--model={hub}/gemma_other.keras",
                                                f"--data={hub}/token_shards", f"--output_dir={hub}/runs/x4"]},
        {"name": "tokens_other_length", "argv": lm_args(hub, "x5", f"--data={hub}/token_shards",
                                                        "--sequence_length=10")},
    ]
    os.makedirs(os.path.join(hub, "runs"), exist_ok=True)
    return SharedLaunch(os.path.join(hub, "runs"), runs)


def metrics(hub: str, name: str) -> dict:
    with open(os.path.join(hub, "runs", name, "metrics.json")) as f:
        return json.load(f)


def test_lora_on_raw_text_learns_the_pattern_and_the_merged_model_generates_it(hub, launch):
    out = launch.output("lora")
    line = one_line(out, "distft objective:")
    assert "SparseCategoricalCrossentropy(from_logits=True) from the model file" in line, line
    assert "the mean over every worker's real tokens" in line and "perplexity" in line, line
    assert "LoRA rank 4" in out and "attention/query" in out
    m = metrics(hub, "lora")
    before, after = m["validation_before"], m["validation"]
    print(f"held-out token accuracy {before['sparse_categorical_accuracy']:.3f} -> "
          f"{after['sparse_categorical_accuracy']:.3f}, perplexity {before['perplexity']:.1f} -> "
          f"{after['perplexity']:.2f}")
    assert before["sparse_categorical_accuracy"] < 0.1 and after["sparse_categorical_accuracy"] > 0.6
    assert after["perplexity"] == pytest.approx(np.exp(after["loss"]), rel=1e-4)
    assert after["perplexity"] < before["perplexity"] / 10
    assert m["workers"] == 2 and len(set(m["weights_checksums"])) == 1

    stock = run([sys.executable, "-c", STOCK, f"{hub}/runs/lora/model.keras", "five", "twelve thirteen"])
    assert stock.code == 0, stock.out[-3000:]
    said = json.loads(stock.out.strip().splitlines()[-1])
    assert said["task"] == "GemmaCausalLM" and said["preprocessor"] == "GemmaCausalLMPreprocessor"
    assert not said["lora"]  # merged
    print(f"generated: {said['generated']}")
    assert said["generated"][0].startswith("five six seven eight"), said
    assert said["generated"][1].startswith("twelve thirteen fourteen fifteen"), said


def test_int8_base_under_lora_learns_as_the_float_base_and_saves_the_float_weights(hub, launch):
    """--quantize=int8: the frozen layers train as int8 (the tied embedding excepted, see
    model/lora.py), the factors on top learn as much as on the float base, and model.keras is
    the float model of the file with the factors merged: the layers without LoRA hold the file's
    own weights, bit for bit, not their int8 round trip."""
    import keras

    out = launch.output("int8")
    line = one_line(out, "frozen layers quantized")
    assert "int8:" in line and "model.keras holds the model file's float weights" in line, line
    assert "moving statistics" not in one_line(out, "distft weights:")  # int8 weights are frozen
    int8, float_ = metrics(hub, "int8")["validation"], metrics(hub, "lora")["validation"]
    print(f"held-out loss {int8['loss']:.4f} on an int8 base, {float_['loss']:.4f} on the float base")
    assert int8["sparse_categorical_accuracy"] > 0.6
    assert abs(int8["loss"] - float_["loss"]) < 0.1 * float_["loss"]
    saved = keras.saving.load_model(f"{hub}/runs/int8/model.keras")
    base = keras.saving.load_model(f"{hub}/gemma.keras")
    assert all(v.dtype == "float32" for v in saved.weights) and "int8" not in json.dumps(saved.get_config())
    saved_w, base_w = ({v.path: np.asarray(v) for v in m.weights} for m in (saved, base))
    assert saved_w.keys() == base_w.keys()
    ffw = [p for p in base_w if "ffw" in p]
    merged = [p for p in base_w if "attention/query/kernel" in p or "attention/value/kernel" in p]
    assert ffw and merged
    assert all(np.array_equal(saved_w[p], base_w[p]) for p in ffw)
    assert all(np.abs(saved_w[p] - base_w[p]).max() > 1e-4 for p in merged)


def test_each_epoch_tensorboard_shows_what_the_model_says(hub, launch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    launch.output("lora")
    events = EventAccumulator(f"{hub}/runs/lora/tensorboard/validation", size_guidance={"tensors": 0})
    events.Reload()
    tables = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("generations")}
    assert sorted(tables) == [0, 4, 8, 12]  # before training, then every 4 epochs (--generations=4)
    # The first held-out text's first half, continued: nothing of the pattern at first.
    with open(f"{hub}/held.txt") as f:
        first = f.readline().split()
    prompt = " ".join(first[:len(first) // 2])
    assert f"| {prompt} |" in tables[0] and f"| {prompt} |" in tables[12]
    assert tables[0] != tables[12]


def test_evaluate_and_predict_read_text(hub, launch):
    """evaluate on 2 workers gives the run's own last validation (the same texts as JSONL);
    predict writes each text continued by the model, in file order."""
    launch.output("evaluate")
    with open(f"{hub}/runs/evaluated.json") as f:
        evaluated = json.load(f)
    assert evaluated == pytest.approx(metrics(hub, "lora")["validation"], rel=1e-5)
    launch.output("predict")
    with open(f"{hub}/held.txt") as f:
        texts = [line.strip() for line in f if line.strip()]
    with open(f"{hub}/runs/generated.jsonl") as f:
        rows = [json.loads(line) for line in f]
    assert [r["prompt"] for r in rows] == texts
    assert all(r["generated"].startswith(r["prompt"]) for r in rows)
    continued = [r for r in rows if len(r["generated"]) > len(r["prompt"])]  # the rest ended at once
    assert len(continued) > 0.75 * len(rows)


def test_text_shards_train_with_another_sequence_length(hub, launch):
    """`distft shard` writes prompt/response pairs into balanced TFRecord shards whose manifest
    says they are text; training on them (cached in memory, 12 tokens a record) learns."""
    with open(f"{hub}/shards/manifest.json") as f:
        manifest = json.load(f)
    assert manifest["schema"]["record"] == {"x_kind": "text", "fields": ["prompt", "response"], "label": None}
    assert sorted(s["records"] for s in manifest["shards"]) == [65, 65, 65, 66]
    out = launch.output("shards")
    m = metrics(hub, "shards")
    assert m["validation"]["sparse_categorical_accuracy"] > 0.3 > m["validation_before"]["sparse_categorical_accuracy"]
    assert "weights identical on all 2 workers" in out


def test_token_shards_train_as_the_text_they_hold(hub, launch):
    """`distft shard --model` writes the pairs as what the model's preprocessor makes of them
    (token ids, targets, the prompts' tokens weighing 0), 12 tokens a record, in the text
    shards' order (the same seed), and its manifest names the preprocessor. Training on them
    (no tokenizing) ends where the same run on the text shards (tokenized per batch) ends."""
    with open(f"{hub}/token_shards/manifest.json") as f:
        manifest = json.load(f)
    assert manifest["schema"]["record"] == {
        "x_kind": "tokens", "fields": ["prompt", "response"], "label": None, "inputs": ["token_ids", "padding_mask"],
        "sequence_length": 12, "preprocessor": "GemmaCausalLMPreprocessor", "vocabulary_size": 24}
    assert {k: f["shape"] for k, f in manifest["schema"]["features"].items()} == {
        "token_ids": [12], "padding_mask": [12], "y": [12], "sample_weight": [12]}
    assert sorted(s["records"] for s in manifest["shards"]) == [65, 65, 65, 66]
    assert "weights identical on all 2 workers" in launch.output("token_shards")
    launch.output("shards")
    tokens, text = metrics(hub, "token_shards"), metrics(hub, "shards")
    assert tokens["validation"] == pytest.approx(text["validation"], rel=1e-5)
    a, b = (weights_by_layer(f"{hub}/runs/{name}/model.keras") for name in ("token_shards", "shards"))
    diff = max(float(np.max(np.abs(x - y))) for layer in a for x, y in zip(a[layer], b[layer]))
    print(f"token shards against text shards: largest weight difference {diff:.3g}")
    for layer in a:
        for x, y in zip(a[layer], b[layer]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=layer)


def test_prompt_response_pairs_learn_the_responses(hub, launch):
    out = launch.output("pairs")
    m = metrics(hub, "pairs")
    before, after = m["validation_before"], m["validation"]
    print(f"pairs: held-out response-token accuracy {before['sparse_categorical_accuracy']:.3f} -> "
          f"{after['sparse_categorical_accuracy']:.3f}")
    assert before["sparse_categorical_accuracy"] < 0.2 and after["sparse_categorical_accuracy"] > 0.5
    assert "weights identical on all 2 workers" in out


def test_a_text_classifier_keeps_its_logits_head_and_learns_from_a_csv_column(hub, launch):
    out = launch.output("classifier")
    assert "from_logits=True) from the model file" in one_line(out, "distft objective:")
    m = metrics(hub, "classifier")
    print(f"classifier: held-out accuracy {m['validation_before']['sparse_categorical_accuracy']:.3f}"
          f" -> {m['validation']['sparse_categorical_accuracy']:.3f}")
    assert m["validation"]["sparse_categorical_accuracy"] > 0.95
    assert m["validation"]["loss"] < m["validation_before"]["loss"] / 4


def test_token_ids_in_y_train_a_model_whose_one_output_has_another_name(hub, launch):
    """GemmaCausalLM's one output is named `token_embedding`; an .npz of its inputs and `y`."""
    out = launch.output("ids_y")
    assert "SparseCategoricalCrossentropy(from_logits=True) from the model file" in one_line(out, "distft objective:")
    assert metrics(hub, "ids_y")["optimizer_updates"] > 0


@pytest.mark.parametrize("name, words", [
    ("no_preprocessor", ["holds text", "no preprocessor", "Keras Hub task"]),
    ("half_pair", ["--prompt_key and --response_key go together"]),
    ("missing_field", ["line 1 has no 'text'", "--text_key"]),
    ("tokens_other_model", ["holds token ids written by GemmaCausalLMPreprocessor (a vocabulary of 24)",
                            "the model's preprocessor is GemmaCausalLMPreprocessor (a vocabulary of 26)"]),
    ("tokens_other_length", ["--sequence_length=10", "token ids of 12 tokens a record"]),
])
def test_bad_text_input_is_one_error_line(launch, name, words):
    code, out = launch.ended(name)
    assert code != 0
    line = one_line(out, "distft: error:")
    assert all(w in line for w in words), line
    assert "Traceback" not in out


def test_prompt_tokens_weigh_nothing():
    """Keras Hub's packing of a text (start token, tokens, end token, padding), the prompt's
    targets weighted 0: the model learns to continue the prompt, not to say it."""
    need_keras_hub()
    import keras_hub
    import tensorflow as tf

    from distft.data.formats.text import _prompted

    vocabulary = {"<|endoftext|>": 0, "a": 1, "b": 2, "c": 3, "\u0120a": 4, "\u0120b": 5, "\u0120c": 6,
                  "\u0120": 7}
    tokenizer = keras_hub.models.GPT2Tokenizer(vocabulary=vocabulary, merges=["\u0120 a", "\u0120 b", "\u0120 c"])
    preprocessor = keras_hub.models.GPT2CausalLMPreprocessor(tokenizer, sequence_length=8)
    pairs = tf.data.Dataset.from_tensors((["a b", "c"], [" c a", " b b b"]))  # in tf.data, as distft runs it
    x, y, weights = next(iter(pairs.map(lambda p, r: _prompted(preprocessor, p, r, 8))))
    # GPT-2 packs <|endoftext|> at both ends: [0, prompt..., response..., 0, padding].
    np.testing.assert_array_equal(x["token_ids"], [[0, 1, 5, 6, 4, 0, 0, 0], [0, 3, 5, 5, 5, 0, 0, 0]])
    np.testing.assert_array_equal(y, [[1, 5, 6, 4, 0, 0, 0, 0], [3, 5, 5, 5, 0, 0, 0, 0]])
    np.testing.assert_array_equal(np.asarray(weights, int), [[0, 0, 1, 1, 1, 0, 0, 0], [0, 1, 1, 1, 1, 0, 0, 0]])
    plain_x, plain_y, plain_weights = next(iter(tf.data.Dataset.from_tensors(["a b c a"]).map(preprocessor)))
    np.testing.assert_array_equal(plain_x["token_ids"][0], [0, 1, 5, 6, 4, 0, 0, 0])  # the same packing
    assert int(np.sum(plain_weights)) == 5


def test_ctrl_c_then_resume_of_a_lora_language_model_ends_with_the_uninterrupted_weights(hub, tmp_path):
    from distft.train.checkpoint import CheckpointStore
    from test_faults import resume_and_run_straight

    def args(run_dir: str) -> list[str]:  # 200 steps an epoch: stopped mid-epoch
        return [*lm_args(hub, "unused", f"--data={hub}/train.jsonl", "--epochs=2", "--steps_per_epoch=200",
                         "--batch_size=8", "--schedule=cosine", "--generations=0"), f"--output_dir={run_dir}"]

    run_dir = str(tmp_path / "stopped")
    job = Job([DISTFT, *args(run_dir), "--np=2"], str(tmp_path / "log"))
    job.wait_for("epoch 1/2")
    os.killpg(job.proc.pid, signal.SIGINT)
    assert job.wait(60) == 75, job.out[-3000:]
    _, state = CheckpointStore(os.path.join(run_dir, "checkpoints")).latest()
    assert state.stopped_by == "Ctrl-C (SIGINT)" and 0 < state.step_in_epoch < 200, state
    resume_and_run_straight(args, run_dir, state, 200, tmp_path)


def test_a_killed_worker_leaves_an_elastic_lora_run_on_text_that_finishes(hub, tmp_path):
    """Elastic mode on raw text: rank 1 killed mid-epoch, the survivor re-reads its new share of
    the texts (all of them) from the last commit and finishes the run; the merged model learnt."""
    out = tmp_path / "run"
    job = Job([DISTFT, *lm_args(hub, "unused", f"--data={hub}/train.jsonl", f"--val_data={hub}/held.txt",
                                "--epochs=6", "--batch_size=4", "--generations=0", "--log_every=8"),
               f"--output_dir={out}", "--commit_every=8", "--np=2", "--min_np=1",
               "--hosts=localhost:1,127.0.0.1:1"], str(tmp_path / "log"))
    job.wait_for("epoch 2/6  step 16/")
    os.kill(job.worker_pid(1), signal.SIGKILL)
    assert job.wait(300) == 0, job.out[-3000:]
    line = one_line(job.out, "lost: continuing with 1 worker")
    assert "rank 1 (host " in line and "from epoch 2 step " in line, line
    with open(out / "metrics.json") as f:
        m = json.load(f)
    accuracy = m["validation"]["sparse_categorical_accuracy"]
    print(f"{line}; held-out token accuracy {m['validation_before']['sparse_categorical_accuracy']:.3f} "
          f"-> {accuracy:.3f}")
    assert m["workers"] == 1 and m["elastic"]["resets"] == 1
    assert accuracy > 0.5 and os.path.exists(out / "model.keras")
    assert "Traceback" not in job.out and "distft: error" not in job.out

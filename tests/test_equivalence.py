"""Exactness under distribution (issue 19): 2 workers at batch B end where 1 worker at batch 2B
ends, option by option, on the same records in the same order.

The whole matrix costs two launches, side by side, each running every case one after another in
one process (tests/equivalence_runner.py): 2 workers under horovodrun, and 1 worker without a
launcher.
Each case is then one test that compares the two runs' saved weights layer by layer, checks
that training moved them and that the 2 ranks ended identical. The records are one file split
by record (rank r reads records r, r+2, ...), unshuffled, so a global batch of the 2-worker run
holds the records of the 1-worker run's batch. A session-end table lists every case's largest
weight difference.

Example (a new row in CASES: options for both runs; `single` overrides the 1-worker run's):
    "sgd": Case({"optimizer": "sgd", "lr": 0.05}),
    "scale_lr": Case({"scale_lr": True}, single={"lr": 2e-3}),
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import pytest

from conftest import DISTFT, LAUNCHER, Started, run
from distft.demo import write_tfrecords
from test_multiworker import weights_by_layer

# The first test's set-up runs both launches (a few minutes; longer on a loaded machine).
pytestmark = [pytest.mark.multiworker, pytest.mark.timeout(1500)]

B = 16  # batch per worker; the 1-worker run takes 2 * B
STEPS = 8  # steps per epoch
REMAINDER = 5  # records past the last whole global batch: both runs drop the same ones
RECORDS = 2 * B * STEPS + REMAINDER
# bn1 and the layers after it. conv1 stays frozen: its input has exact zeros (blank pixels), so a
# blank patch's pre-activation is exactly its bias, and one rounding difference near a zero
# bias flips whole ReLU gates (2 workers and 1 measured 1.3e-4 apart after 6 steps with
# --unfreeze=all, without BatchNorm training at all).
BN = {"unfreeze": "from:bn1", "train_bn": True, "optimizer": "sgd", "lr": 0.01}
COMMON = {"epochs": 2, "batch_size": B, "lr": 3e-3, "num_classes": 5, "unfreeze": "last:2",
          "shuffle_buffer": 0, "scale_lr": False, "rank_health": False, "keep_checkpoints": 1,
          "log_every": 1000, "seed": 1, "generations": 0}
RUNNER = os.path.join(os.path.dirname(__file__), "equivalence_runner.py")
MAKE_HUB_TEXT = os.path.join(os.path.dirname(__file__), "data", "make_hub_text.py")
HUB = sys.version_info >= (3, 11)  # keras-hub's Python


@dataclass(frozen=True)
class Case:
    """One row: `options` for both runs, `single` on top for the 1-worker run (after its batch
    size is doubled), the targets `data` (see write_data), the tolerance, the files compared.
    `equal=False` is a negative control: the runs must differ."""

    options: dict = field(default_factory=dict)
    single: dict = field(default_factory=dict)
    data: str = "ids"
    rtol: float = 1e-4
    atol: float = 2e-6
    files: tuple = ("model.keras",)
    validate: bool = False  # validate on the class-id file each epoch (--val_data)
    equal: bool = True
    # Randomness or statistics that differ by design: the ranks must end identical and the run
    # close to one big batch's (its final training loss within `loss_rtol`), not equal to it;
    # with `seeds`, the mean final loss of the runs at those --seed values (one draw is noise).
    in_sync: bool = False
    loss_rtol: float = 0.0
    seeds: tuple = ()
    xfail: str = ""  # why the case fails today (a known bug): xfail(strict=True)


CASES = {
    "sgd": Case({"optimizer": "sgd", "lr": 0.05}),
    "adam": Case({"optimizer": "adam"}),
    "adamw": Case({"optimizer": "adamw", "weight_decay": 0.05}),
    "rmsprop": Case({"optimizer": "rmsprop"}),
    "cosine_warmup": Case({"schedule": "cosine", "warmup_epochs": 1}),
    "scale_lr": Case({"scale_lr": True, "schedule": "cosine"}, single={"lr": 2 * COMMON["lr"]}),
    "lr_mult": Case({"lr_mult": "re:^conv2$=0.1,re:^features$=0.5"}),
    "unfreeze_schedule": Case({"unfreeze": None, "unfreeze_schedule": "0:none,1:last:2"}),
    "grad_accum": Case({"grad_accum": 2}),
    "ema": Case({"ema": 0.9}, files=("model.keras", "model_ema.keras")),
    "cache_frozen": Case({"cache_frozen": True}),
    "lora": Case({"lora": 4, "unfreeze": "none"}),  # factors on `features`, merged into model.keras
    "label_smoothing": Case({"label_smoothing": 0.2}),  # class ids made smoothed one-hot rows
    "one_hot_targets": Case(data="one_hot"),
    "multi_label_targets": Case(data="multi_label"),
    "regression_targets": Case(data="regression"),
    # Each rank's gradients are rounded to bfloat16 (8 significant bits) before the average, the
    # 1-worker run's once for the whole batch. Adam moves a weight by about lr (3e-3) a step
    # whatever its gradient's size, so a near-zero component rounded to the other sign costs up
    # to 2 lr: measured 0.0027 apart (0.0066 with XLA, which rounds at its fusions' edges), where
    # the same run in float32 is 0.017 away and the negative control 0.07.
    "mixed_bfloat16": Case({"precision": "mixed_bfloat16"}, rtol=0, atol=1e-2),
    # The per-rank loss-scaled float16 gradients are averaged (or, with fp16 compression,
    # pre-divided, cast and summed) where one worker's come from the whole batch.
    "mixed_float16": Case({"precision": "mixed_float16"}, rtol=0, atol=2e-3),
    "fp16_compression": Case({"precision": "mixed_float16", "compression": "fp16"}, rtol=0, atol=2e-3),
    # Statistics over both workers' batches in the forward pass: one big batch's exactly.
    "sync_bn": Case({**BN, "sync_bn": True}),
    # Each worker's own batch statistics; moving statistics averaged at every epoch's end.
    "train_bn": Case(BN, in_sync=True, loss_rtol=0.05),
    # Each worker draws its own dropout masks (seeded by rank), as one worker does per record.
    # One draw is noise: over seeds 1-4 one run's final loss was +6.3, +3.4, -0.1, -15.6% off
    # the other's (+25.4, -0.6, -1.1, -21.1% with XLA, which draws other masks); the means agree.
    "head_dropout": Case({"head_dropout": 0.5}, in_sync=True, loss_rtol=0.1, seeds=(1, 2, 3, 4)),
    # XLA compiles the forward and backward pass and the update around Horovod's ops, in both
    # runs alike.
    "jit": Case({"jit": "on"}),
    # One grouped allreduce after the backward pass (the default overlaps per-tensor ops).
    "allreduce_group": Case({"allreduce": "group"}),
    "cache_memory": Case({"cache": "memory"}),
    # 4 steps a call of the train function (8 an epoch; test_steps_per_execution.py has epochs
    # that are not a multiple).
    "steps_per_execution": Case({"steps_per_execution": 4}),
    # Training and validation metrics from metric states summed over the workers.
    "metrics": Case({"metrics": "accuracy,auc,precision,recall,f1_score"}, validate=True),
    "val_split": Case({"val_split": 0.1}),
    "loss": Case({"loss": "mean_absolute_error"}, data="regression"),
    # A logits head kept with the objective its file was compiled with: from_logits, top-k and
    # weighted metrics, validated each epoch (the metrics' states summed over the workers).
    "model_objective": Case(data="logits", validate=True),
    # The same weights uncompiled, the loss and metrics given with arguments.
    "loss_arguments": Case({"loss": "sparse_categorical_crossentropy:from_logits=true",
                            "metrics": "accuracy,sparse_top_k_categorical_accuracy:k=2,auc:from_logits=true"},
                           data="logits_plain", validate=True),
    # An image + metadata model with a new digit head and a weighted size head, validated on
    # its own .npz each epoch (per-output losses over partial batches).
    "two_inputs_two_outputs": Case(data="two_heads"),
    # Each worker shuffles its own share (seeded by --seed and the rank): other batches.
    "shuffle": Case({"shuffle_buffer": 64}, in_sync=True, loss_rtol=0.1),
    # A Keras Hub causal LM on raw text (JSONL of 2 to 12 words, padded to 16 tokens): each
    # rank's batches hold other numbers of real tokens, and the loss is the mean over all of
    # them; in full, with LoRA, and on prompt/response pairs (the prompts' tokens weigh 0).
    # Validated on held-out texts each epoch (loss, perplexity and token accuracy, summed).
    "causal_lm": Case({"unfreeze": "all"}, data="lm"),
    "causal_lm_lora": Case({"lora": 4, "unfreeze": "none"}, data="lm"),
    # The frozen layers quantized to int8 (Keras's own quantize), the factors on top.
    "causal_lm_int8_lora": Case({"lora": 4, "unfreeze": "none", "quantize": "int8"}, data="lm"),
    "causal_lm_pairs": Case({"lora": 4, "unfreeze": "none", "prompt_key": "prompt",
                             "response_key": "response"}, data="lm_pairs"),
    # 12 tokens a record (--sequence_length) instead of the preprocessor's 16: the longer texts cut.
    "causal_lm_sequence_length": Case({"unfreeze": "all", "sequence_length": 12}, data="lm"),
    # The same texts as token-id shards (`distft shard --model`, one shard): no tokenizing.
    "causal_lm_token_shards": Case({"unfreeze": "all"}, data="lm_tokens"),
    # A Keras Hub ImageClassifier (a tiny ResNet) saved with its preprocessor, on 24x24 RGB
    # pixels in [0, 255], which its own preprocessor resizes to 16x16 and scales on each worker;
    # its logits head kept with its own objective.
    "hub_image_preprocessor": Case(data="hub_image"),
    # Negative control: 1 worker at batch B makes twice the updates; the comparison must fail.
    "control_one_worker_at_batch_b": Case(single={"batch_size": B}, equal=False),
}


def write_data(folder: str, base_model: str, records: int) -> dict[str, dict]:
    """The first `records` of digits 5-9 (seeded order), as one file per kind of target, with
    the base model each needs: class ids (TFRecord) and one-hot rows under the demo's base with
    a new softmax head; the digit's 4 binary digits under a sigmoid head; 2 regression targets
    under a linear head; the class ids under a logits head (5 linear outputs), saved compiled
    with from_logits (`logits`) and not compiled (`logits_plain`); an image + (mean, std) model with a digit head (new, 5 classes) and a
    linear size head (the ink's mean), its arrays named so; a Keras Hub causal LM's text, as
    JSONL and as token-id shards, and prompt/response pairs; a Keras Hub image classifier and
    the digits as 24x24 RGB pixels. Returns each kind's
    `distft.train` options."""
    import keras
    from distft.demo import load_digits

    d = load_digits()
    keep = np.flatnonzero(d.target >= 5)
    order = np.random.default_rng(0).permutation(keep)[:records]
    x, digit = (d.images[order] / 16.0).astype(np.float32), d.target[order]
    y = digit - 5
    write_tfrecords(x, y, os.path.join(folder, "ids-{}.tfrecord"), 1)
    flat = x.reshape(len(x), -1)
    targets = {"one_hot": np.eye(5, dtype=np.float32)[y],
               "multi_label": ((digit[:, None] >> np.arange(4)) & 1).astype(np.float32),
               "regression": np.stack([y / 4.0, flat.mean(axis=1)], axis=1).astype(np.float32)}
    kinds = {"ids": {"model": base_model, "data": os.path.join(folder, "ids-0.tfrecord")}}
    base = keras.models.load_model(base_model, compile=False)
    for kind, target in targets.items():
        path = os.path.join(folder, f"{kind}.npz")
        np.savez(path, x=flat, y=target)
        kinds[kind] = {"model": base_model, "data": path}
    for kind, activation in (("multi_label", "sigmoid"), ("regression", None)):
        keras.utils.set_random_seed(0)
        out = keras.layers.Dense(targets[kind].shape[1], activation=activation, name="classes")(
            base.get_layer("features").output)
        model_path = os.path.join(folder, f"{kind}_base.keras")
        keras.Model(base.inputs, out).save(model_path)
        kinds[kind] = {"model": model_path, "data": kinds[kind]["data"], "num_classes": None}
    keras.utils.set_random_seed(0)
    logits = keras.Model(base.inputs, keras.layers.Dense(5, name="classes")(base.get_layer("features").output))
    logits.save(os.path.join(folder, "logits_plain.keras"))  # not compiled: no objective in the file
    logits.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                   metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=2)],
                   weighted_metrics=["accuracy"])
    logits.save(os.path.join(folder, "logits.keras"))
    for kind in ("logits", "logits_plain"):
        kinds[kind] = {"model": os.path.join(folder, f"{kind}.keras"), "data": kinds["ids"]["data"],
                       "num_classes": None}
    keras.utils.set_random_seed(0)
    image, meta = keras.Input((8, 8, 1), name="image"), keras.Input((2,), name="meta")
    features = keras.Model(base.inputs, base.get_layer("features").output)(image)
    size = keras.layers.Dense(1, name="size")(keras.layers.Concatenate()([features, meta]))
    model_path, path = os.path.join(folder, "two_heads.keras"), os.path.join(folder, "two_heads.npz")
    keras.Model([image, meta], [keras.layers.Dense(5, activation="softmax", name="digit")(features), size]
                ).save(model_path)
    np.savez(path, image=x[..., None], meta=np.stack([flat.mean(1), flat.std(1)], 1), digit=y,
             size=targets["regression"][:, 1])
    kinds["two_heads"] = {"model": model_path, "data": path, "val_data": path, "head": "digit",
                          "loss_weights": "size=0.5"}
    if HUB:  # stock keras_hub writes the causal LM and its text, and the image classifier
        from test_hub_image import SCRIPT as HUB_IMAGE

        written = [Started([sys.executable, MAKE_HUB_TEXT, folder, str(records)], timeout=300),
                   Started([sys.executable, HUB_IMAGE, "write", os.path.join(folder, "hub_image.keras")],
                           timeout=300)]
        # The 24x24 RGB pixels in [0, 255] (uint8) the PNGs of tests/test_hub_image.py hold, in
        # one file (split by record: an image folder's files go to workers whole).
        pixels = np.repeat(np.repeat(d.images[order] * (255 / 16), 3, axis=1), 3, axis=2)[..., None]
        np.savez(os.path.join(folder, "pixels.npz"), x=np.repeat(pixels, 3, axis=-1).round().astype(np.uint8), y=y)
        for result in (w.result() for w in written):
            assert result.code == 0, result.out[-3000:]
        kinds["hub_image"] = {"model": os.path.join(folder, "hub_image.keras"), "num_classes": None,
                              "data": os.path.join(folder, "pixels.npz")}
        lm = {"model": os.path.join(folder, "gemma.keras"), "num_classes": None}
        kinds["lm"] = {**lm, "data": os.path.join(folder, "train.jsonl"),
                       "val_data": os.path.join(folder, "held.jsonl")}
        kinds["lm_pairs"] = {**lm, "data": os.path.join(folder, "pairs.jsonl")}
        tokens = os.path.join(folder, "lm_tokens")
        result = run([DISTFT, "shard", f"--input={kinds['lm']['data']}", f"--model={lm['model']}",
                      f"--output_dir={tokens}", "--num_shards=1"])
        assert result.code == 0, result.out[-3000:]
        kinds["lm_tokens"] = {**kinds["lm"], "data": tokens}
    return kinds


def runs(name: str, case: Case) -> dict[str, dict]:
    """The runs of case `name`: its own, or one per seed (`name@S`), with their own options."""
    if not case.seeds:
        return {name: {}}
    return {f"{name}@{seed}": {"seed": seed} for seed in case.seeds}


def options(name: str, case: Case, kinds: dict, folder: str, workers: int,
            extra: Optional[dict] = None) -> dict:
    """`distft.train`'s options for run `name` of `case` on `workers` (2, or 1 at the doubled
    batch). DISTFT_JIT=on (distft's default for --jit) runs them all with XLA."""
    opts = {**COMMON, **kinds[case.data], **case.options, **(extra or {}),
            "output_dir": os.path.join(folder, f"{workers}w", name)}
    if case.validate:
        opts["val_data"] = kinds["ids"]["data"]
    if workers == 1:
        opts["batch_size"] *= 2
        opts.update(case.single)
    return opts


class Matrix:
    """Both launches over every case, their status, and the differences the tests measure."""

    def __init__(self, folder: str, cases: dict, base_model: str, records: int):
        self.folder, self.kinds = folder, write_data(folder, base_model, records)
        self.status, self.out, self.seconds, self.diffs = {}, {}, {}, {}
        launches = {}
        for workers in (2, 1):  # side by side: each leaves the cores idle much of the time
            listing = os.path.join(folder, f"runs-{workers}w.json")
            with open(listing, "w") as f:
                json.dump({name: options(name, c, self.kinds, folder, workers, extra)
                           for n, c in cases.items() if c.data in self.kinds
                           for name, extra in runs(n, c).items()}, f)
            launcher = [*LAUNCHER, "-np", "2", "-H", "localhost:2", "--gloo"] if workers == 2 else []
            launches[workers] = (time.time(), Started([*launcher, sys.executable, RUNNER, listing,
                                                       self.status_path(workers)], timeout=900))
        while not all(launch.poll() for _, launch in launches.values()):
            time.sleep(1)
        for workers, (started, launch) in launches.items():
            self.out[workers] = launch.result().out
            self.seconds[workers] = (launch.ended or time.time()) - started
            if os.path.exists(self.status_path(workers)):
                with open(self.status_path(workers)) as f:
                    self.status[workers] = json.load(f)

    def status_path(self, workers: int) -> str:
        return os.path.join(self.folder, f"status-{workers}w.json")

    def run_dir(self, name: str, workers: int) -> str:
        return os.path.join(self.folder, f"{workers}w", name)

    def metrics(self, name: str, workers: int) -> dict:
        """metrics.json of a run that finished; the launch's output or the run's error if not."""
        if workers not in self.status:
            pytest.fail(f"the {workers}-worker launch wrote no status:\n{self.out[workers][-4000:]}")
        error = self.status[workers][name]["error"]
        assert error is None, f"{name} on {workers} worker(s): {error}"
        with open(os.path.join(self.run_dir(name, workers), "metrics.json")) as f:
            return json.load(f)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        """A pytest hook (the fixture registers this object as a plugin): the launches' wall
        times and every case's largest weight difference, after the tests' own lines."""
        terminalreporter.section("equal to one big batch")
        terminalreporter.write_line(f"2-worker launch {self.seconds[2]:.0f}s, 1-worker launch "
                                    f"{self.seconds[1]:.0f}s (side by side); largest absolute "
                                    "weight difference:")
        for (name, file), diff in self.diffs.items():
            terminalreporter.write_line(f"  {name:<34} {file:<16} {diff:.3g}")


@pytest.fixture(scope="session")
def matrix(demo_data, tmp_path_factory, request):
    m = Matrix(str(tmp_path_factory.mktemp("equivalence")), CASES, demo_data["model"], RECORDS)
    request.config.pluginmanager.register(m, "equivalence-matrix")
    return m


def largest_difference(a: dict, b: dict) -> float:
    """The largest absolute difference between the weights of the layers both hold."""
    return max(float(np.max(np.abs(x.astype(np.float64) - y))) for name in a.keys() & b.keys()
               for x, y in zip(a[name], b[name]))


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[pytest.mark.xfail(strict=True, reason=c.xfail)] if c.xfail else
                 [pytest.mark.skip(reason="keras-hub requires Python 3.11 or newer")]
                 if c.data.startswith(("lm", "hub")) and not HUB else [])
    for n, c in CASES.items()])
def test_equal_to_one_big_batch(matrix, name):
    case = CASES[name]
    for run in runs(name, case):  # the ranks ended identical
        two = matrix.metrics(run, 2)
        for key in ("weights_checksums", "ema_checksums"):
            if key in two:
                assert len(two[key]) == 2 and len(set(two[key])) == 1, (run, key, two[key])
    if case.in_sync:  # the final training loss: the mean over the runs of its seeds
        losses = {w: [matrix.metrics(run, w)["train"]["loss"] for run in runs(name, case)]
                  for w in (2, 1)}
        loss2, loss1 = np.mean(losses[2]), np.mean(losses[1])
        print(f"{name}: final training loss {np.round(losses[2], 4)} on 2 workers (mean "
              f"{loss2:.4f}), {np.round(losses[1], 4)} on 1 (mean {loss1:.4f})")
        assert abs(loss2 - loss1) <= case.loss_rtol * loss1, losses
    first = next(iter(runs(name, case)))  # the run whose weights are compared
    two, one = matrix.metrics(first, 2), matrix.metrics(first, 1)
    if case.equal and not case.in_sync:
        # The last epoch's training metrics (summed over the workers) and validation metrics.
        for part in ("train", "validation"):
            assert two[part].keys() == one[part].keys()
            for k in two[part]:
                assert two[part][k] == pytest.approx(one[part][k], rel=1e-3 if case.rtol else 2e-2,
                                                     abs=1e-5), (part, k, two[part], one[part])
        assert two["steps_per_epoch"] == one["steps_per_epoch"]
        assert two["steps_per_epoch"] == STEPS or "val_split" in case.options
        assert two["optimizer_updates"] == one["optimizer_updates"]  # --grad_accum: every K-th step
    base = weights_by_layer(matrix.kinds[case.data]["model"])
    for file in case.files:
        a = weights_by_layer(os.path.join(matrix.run_dir(first, 2), file))
        b = weights_by_layer(os.path.join(matrix.run_dir(first, 1), file))
        assert a.keys() == b.keys()
        diff = matrix.diffs[name, file] = largest_difference(a, b)
        print(f"{name} {file}: largest weight difference {diff:.3g}")
        assert largest_difference(a, base) > 1e-4, f"{file}: the 2-worker run trained nothing"
        if not case.equal:
            assert diff > 1e-3, f"{file}: the negative control did not differ ({diff:.3g})"
            continue
        if case.in_sync:
            continue
        for layer in a:
            for i, (x, y) in enumerate(zip(a[layer], b[layer])):
                np.testing.assert_allclose(
                    x, y, rtol=case.rtol, atol=case.atol,
                    err_msg=f"{file} {layer}[{i}] (largest difference in the model {diff:.3g})")


def test_xla_and_one_group_end_where_the_default_step_ends(matrix):
    """The default run (per-tensor allreduce ops, no XLA: the "adam" row) on 2 workers, against
    the same run with one grouped allreduce (the same sums: equal) and compiled with XLA
    (XLA fuses and orders float operations its own way: equal to float tolerance)."""
    default = weights_by_layer(os.path.join(matrix.run_dir("adam", 2), "model.keras"))
    for name, rtol, atol in (("allreduce_group", 0, 0), ("jit", 1e-4, 2e-6)):
        other = weights_by_layer(os.path.join(matrix.run_dir(name, 2), "model.keras"))
        print(f"{name} against the default step: largest weight difference "
              f"{largest_difference(default, other):.3g}")
        for layer in default:
            for x, y in zip(default[layer], other[layer]):
                np.testing.assert_allclose(x, y, rtol=rtol, atol=atol, err_msg=f"{name}: {layer}")


def test_fp16_compression_skips_no_more_steps_than_none(matrix):
    """Gradients divided by the workers before the fp16 sum: the sum of loss-scaled values
    overflows no sooner than one worker's, so no extra step is skipped."""
    plain, compressed = matrix.metrics("mixed_float16", 2), matrix.metrics("fp16_compression", 2)
    print(f"optimizer updates {plain['optimizer_updates']} without compression, "
          f"{compressed['optimizer_updates']} with; loss scale {plain['loss_scale']:g} and "
          f"{compressed['loss_scale']:g}")
    assert compressed["optimizer_updates"] >= plain["optimizer_updates"]
    assert compressed["loss_scale"] >= plain["loss_scale"]


def test_label_smoothing_changes_what_is_learned(matrix):
    """The "adam" row's run but for --label_smoothing=0.2: other weights, and a higher training
    loss (smoothed targets keep the crossentropy off zero)."""
    plain = weights_by_layer(os.path.join(matrix.run_dir("adam", 2), "model.keras"))
    smoothed = weights_by_layer(os.path.join(matrix.run_dir("label_smoothing", 2), "model.keras"))
    assert largest_difference(plain, smoothed) > 1e-4
    assert matrix.metrics("label_smoothing", 2)["train"]["loss"] > matrix.metrics("adam", 2)["train"]["loss"]


def test_the_loss_with_from_logits_trains_as_the_files_own_objective(matrix):
    """The logits model kept with the objective its file was compiled with, and the same
    weights uncompiled with --loss=sparse_categorical_crossentropy:from_logits=true: the same
    training (the metrics differ, not the loss), and both reach the same accuracy."""
    own = weights_by_layer(os.path.join(matrix.run_dir("model_objective", 2), "model.keras"))
    given = weights_by_layer(os.path.join(matrix.run_dir("loss_arguments", 2), "model.keras"))
    print(f"file's objective against --loss with from_logits: largest weight difference "
          f"{largest_difference(own, given):.3g}")
    assert largest_difference(own, given) < 1e-6
    a, b = (matrix.metrics(n, 2)["validation"] for n in ("model_objective", "loss_arguments"))
    assert a["accuracy"] == pytest.approx(b["accuracy"]) and a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    assert a["weighted_accuracy"] == pytest.approx(a["accuracy"])  # no sample weights
    assert {"sparse_top_k_categorical_accuracy", "auc"} <= b.keys()

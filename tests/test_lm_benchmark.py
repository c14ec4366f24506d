"""`python -m benchmarks lm`'s arithmetic and table, on made-up metrics.json contents (no runs):
tokens/s and bytes per step as its output explains them, the int8 row "not available" while
`distft train --help` has no --quantize and run when it has, and --quick kept out of the
tracked results."""
from __future__ import annotations

import argparse
import os

import pytest

from benchmarks import lm

WORKLOAD = {"model": "GemmaCausalLM", "params": 10_000, "vocabulary": 8000, "sequence_length": 128,
            "train": {"records": 200, "real_tokens": 20_000}, "held": {"records": 10, "real_tokens": 900}}


def metrics(trainable: int, frozen: int, samples_per_sec: float, loss: float, accuracy: float) -> dict:
    return {"samples_per_sec": samples_per_sec, "params": {"trainable": trainable, "frozen": frozen},
            "validation": {"loss": loss, "sparse_categorical_accuracy": accuracy, "perplexity": 9.0},
            "validation_before": {"loss": 9.0, "sparse_categorical_accuracy": 0.0, "perplexity": 8000.0},
            "steps_per_epoch": 12, "epochs": 2, "workers": 2, "seconds": 100.0}


def test_figures_are_the_formulas_the_output_states():
    run = lm.figures(metrics(10_000, 0, 8.0, 7.5, 0.25), WORKLOAD, {0: 1800.0, 1: 1700.0})
    assert run["tokens_per_record"] == 100.0  # 20,000 real tokens over 200 texts
    assert run["tokens_per_sec"] == pytest.approx(800.0)  # samples/s x real tokens a text
    assert run["bytes_per_step"] == 40_000  # 4 bytes a trainable weight
    assert run["peak_rss_mb_max"] == 1800.0 and run["peak_rss_mb"] == {"0": 1800.0, "1": 1700.0}
    assert run["val_loss"] == 7.5 and run["val_accuracy"] == 0.25 and run["val_loss_before"] == 9.0


def test_the_int8_row_follows_distft_train_help():
    help_text = "  --lora: LoRA rank\n  --quantize_scale: something else\n"
    assert lm.has_flag(help_text, "--lora") and not lm.has_flag(help_text, "--quantize")
    assert lm.has_flag(help_text + "      --quantize: int8: ...\n", "--quantize")

    args = argparse.Namespace(rank=4, batch_size=8, epochs=2, steps_per_epoch=12, lr=5e-4, lora_lr=2e-2)
    full = {"available": True, "flags": lm.render("full", args),
            **lm.figures(metrics(10_000, 0, 8.0, 7.5, 0.25), WORKLOAD, {0: 2000.0, 1: 1900.0})}
    lora = {"available": True, "flags": lm.render("lora", args),
            **lm.figures(metrics(50, 10_000, 6.0, 8.5, 0.1), WORKLOAD, {0: 1800.0, 1: 1700.0})}
    missing = {"available": False, "flags": lm.render("int8_lora", args),
               "why": "`distft train --help` does not list --quantize"}
    result = {"settings": vars(args), "workload": WORKLOAD,
              "runs": {"full": full, "lora": lora, "int8_lora": missing}}
    lines = lm.table(result).splitlines()
    [row] = [line for line in lines if line.startswith("| int8_lora | `--lora=4` `--quantize=int8` |")]
    assert "not available" in row
    ratios = [line for line in lines if line.startswith("| lora | ") and "`" not in line]
    assert ratios == ["| lora | 0.750 | 0.900 | - | 0.005 | 0.005 | 1.133 | 0.400 |"]
    assert not any(line.startswith("| int8_lora | 0") for line in lines)
    assert any(line.startswith("tokens/s = samples/s") and "100.00 real tokens a text" in line for line in lines)

    # Rounds: each figure the median over the rounds, each ratio the median of the rounds' ratios.
    fast = {**full, "tokens_per_sec": 1600.0}
    runs, ratios = lm.summarize([{"full": full, "lora": lora, "int8_lora": missing},
                                 {"full": fast, "lora": lora, "int8_lora": missing},
                                 {"full": full, "lora": {**lora, "tokens_per_sec": 900.0}, "int8_lora": missing}])
    assert runs["full"]["tokens_per_sec"] == 800.0 and runs["lora"]["tokens_per_sec"] == 600.0
    assert runs["full"]["trainable_params"] == 10_000 and runs["int8_lora"] == missing
    assert ratios["lora"]["tokens_per_sec"] == pytest.approx(0.75)  # of 0.75, 0.375, 1.125
    assert set(ratios) == {"lora"}


def test_quick_saves_outside_the_tracked_results(tmp_path):
    def path(**given):
        return lm.output_path(argparse.Namespace(**{"quick": False, "output": None, "workdir": None, **given}))

    assert path() == lm.RESULTS and os.path.basename(lm.RESULTS).startswith("lm-tf")
    assert path(quick=True, workdir=str(tmp_path)) == str(tmp_path / "lm-quick.json")
    assert os.path.dirname(path(quick=True)) != os.path.dirname(lm.RESULTS)
    assert path(quick=True, output="mine.json") == "mine.json"


def test_training_ends_at_the_last_epoch_line():
    import datetime

    started = datetime.datetime(2026, 1, 2, 23, 59, 0).timestamp()
    log = ("23:59:10 distft epoch 1/2  loss 8.7  (2 samples/s, 25.9s)\n"
           "00:00:05 distft epoch 2/2  loss 8.0  (9 samples/s, 5.6s)\n00:00:20 distft weights identical\n")
    assert lm.training_end(log, 2, started) == started + 65  # past midnight
    assert lm.training_end(log, 3, started) is None
    rss = lm.PeakRSS(0)
    rss.rises = {0: [(started + 60, 1000 * 1024), (started + 65.5, 1100 * 1024), (started + 70, 1500 * 1024)]}
    assert rss.peak_by(started + 66) == {0: 1100.0}

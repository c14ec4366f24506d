"""A language-model workload: a ~10M-weight GemmaCausalLM fine-tuned on raw text on 2 workers,
full fine-tune against LoRA against int8 + LoRA, side by side in one invocation: tokens/s, peak
memory per worker, bytes allreduced per step, held-out loss and token accuracy.

The workload (`--prepare`, a fresh process of stock keras_hub that never imports distft): a
SentencePiece word vocabulary of 8,000 pieces (7,996 generated words and <pad> <unk> <bos>
<eos>), a GemmaCausalLM of random weights (8 decoder blocks, hidden 256, 4 query heads of 64, 1
key/value head, intermediate 2160: 9,998,592 weights, the embedding tied to the output) saved
with its GemmaCausalLMPreprocessor (sequence length 128), and JSONL text: phrases of 4 words,
a start word drawn from a Zipf law over the vocabulary and the 3 words that follow it in a
fixed cycle of the vocabulary, 10 to 40 phrases a text. 3 of every 4 words are predictable
from the one before: token accuracy rises as the model learns the cycle, frequent start words
first. train.jsonl and held.jsonl (other texts, the same law).

The runs: `python -m distft train --np=2` of that model on train.jsonl, validated on held.jsonl,
with `--unfreeze=all` (full), `--lora=RANK` (lora) and `--lora=RANK --quantize=int8` (int8_lora)
when `distft train --help` lists `--quantize` (else that row says "not available"); the same
epochs, steps, batch and seed.

Example (from the repository root):
    python -m benchmarks lm                 # 2 epochs of 12 steps, batch 8 a worker
    python -m benchmarks lm --quick         # 2 epochs of 3 steps: a look, not saved in results/
    python -m benchmarks lm --rounds=3      # the three runs in turn 3 times: medians

On a shared machine a run's tokens/s moves with the other work; `--rounds` runs them in turn,
so that drift hits all alike, and reports medians. Peak RSS and the losses barely move.
"""
from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Optional

from benchmarks.common import ROOT, environment, invocation, python, result_file, save

RESULTS = result_file("lm.json")
SEQUENCE_LENGTH = 128
# GemmaBackbone: 8000 x 256 embedding (2,048,000) + 8 blocks of 1,243,792 + the final norm (256).
CONFIG = {"num_layers": 8, "num_query_heads": 4, "num_key_value_heads": 1, "hidden_dim": 256,
          "intermediate_dim": 2160, "head_dim": 64}
WORDS = 7996  # + <pad> <unk> <bos> <eos>: a vocabulary of 8000
PHRASE = 4  # a start word and the 3 that follow it in the cycle
# The runs, in order: name -> distft flags; `full` is the row the others are divided by.
RUNS = {"full": ["--unfreeze=all"], "lora": ["--lora={rank}"],
        "int8_lora": ["--lora={rank}", "--quantize=int8"]}
NEEDS = {"int8_lora": "--quantize"}  # a run whose flag distft may not have yet
BYTES_PER_WEIGHT = 4  # float32 gradients, one allreduce of every trainable gradient per step


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks lm", description=__doc__.split("\n")[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per run (the first is not timed)")
    p.add_argument("--steps_per_epoch", type=int, default=12, help="steps of each worker per epoch")
    p.add_argument("--batch_size", type=int, default=8, help="per worker")
    p.add_argument("--lr", type=float, default=5e-4, help="full fine-tune, for one worker (distft scales it by 2)")
    p.add_argument("--lora_lr", type=float, default=2e-2, help="the LoRA runs, for one worker")
    p.add_argument("--rank", type=int, default=4, help="--lora rank")
    p.add_argument("--records", type=int, default=2048, help="training texts")
    p.add_argument("--held", type=int, default=64, help="held-out texts")
    p.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, of {','.join(RUNS)}")
    p.add_argument("--rounds", type=int, default=1, help="every run once a round, in turn; figures are "
                   "medians over rounds, ratios medians of each round's ratios")
    p.add_argument("--quick", action="store_true", help="2 epochs of 3 steps: a look, saved in --workdir "
                   "(or the temp folder), not in benchmarks/results/")
    p.add_argument("--workdir", help="folder for the model, data and runs (kept; default: a temp folder)")
    p.add_argument("--output", help="result JSON (default: benchmarks/results/lm-TAG.json; "
                   "with --quick, lm-quick.json in --workdir)")
    p.add_argument("--prepare", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prepare:
        print(json.dumps(prepare(args.workdir, args.records, args.held)))
        return 0
    if args.quick:
        args.epochs, args.steps_per_epoch = 2, 3
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown or "full" not in names:
        p.error(f"--runs: {','.join(unknown) or 'full is needed (the ratios divide by it)'}; "
                f"choose from {','.join(RUNS)}")
    workdir = args.workdir or tempfile.mkdtemp(prefix="distft-bench-lm-")
    print(f"command: {invocation()}", flush=True)
    try:
        workload = run_json([python(), "-m", "benchmarks.lm", "--prepare", f"--workdir={workdir}",
                             f"--records={args.records}", f"--held={args.held}"])
        print(f"  workload: GemmaCausalLM of {workload['params']:,} weights, vocabulary "
              f"{workload['vocabulary']}, {workload['train']['records']} training texts "
              f"({workload['train']['tokens_per_record']:.1f} real tokens each on average), "
              f"{workload['held']['records']} held-out", file=sys.stderr, flush=True)
        flags = distft_flags()
        missing = {name: {"available": False, "flags": render(name, args),
                          "why": f"`distft train --help` does not list {NEEDS[name]}"}
                   for name in names if name in NEEDS and not has_flag(flags, NEEDS[name])}
        for name, why in missing.items():
            print(f"  {name}: not available ({why['why']})", file=sys.stderr, flush=True)
        rounds = []
        for r in range(1, args.rounds + 1):  # the runs in turn, so the machine's drift hits all alike
            rounds.append({name: missing.get(name) or train(workdir, name, args, workload, r, args.rounds)
                           for name in names})
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    runs, ratios = summarize(rounds)
    result = {"benchmark": "lm", "command": invocation(),
              "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "settings": {k: v for k, v in vars(args).items() if k not in ("workdir", "output", "prepare")},
              "environment": environment(), "load": os.getloadavg(), "workload": workload, "runs": runs,
              "ratios": ratios, "rounds": rounds}
    print(table(result))
    output = output_path(args)
    save(result, output)
    if args.quick and not args.output:
        print(f"--quick: saved in {os.path.dirname(output)} (benchmarks/results/ unchanged)")
    return 1 if any(r.get("failed") for row in rounds for r in row.values()) else 0


def output_path(args: argparse.Namespace) -> str:
    """--output, else --quick's file in --workdir or the temp folder (a look: the repository's
    tracked results stay as they are), else this TensorFlow's result file."""
    if args.output:
        return args.output
    if args.quick:
        return os.path.join(args.workdir or tempfile.gettempdir(), "lm-quick.json")
    return RESULTS


def run_json(cmd: list[str]) -> dict[str, Any]:
    """Run a child step (TF quiet); its last output line is its JSON result."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=900)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return json.loads(lines[-1])


# The workload: stock keras_hub, in its own process ---------------------------------------------

def words(seed: int = 0) -> list[str]:
    """WORDS distinct pronounceable words of 2 or 3 syllables, the same for a seed."""
    import numpy as np

    rng = np.random.default_rng(seed)
    syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
    found: set[str] = set()
    while len(found) < WORDS:
        found.add("".join(rng.choice(syllables, rng.integers(2, 4))))
    return sorted(found)


def texts(vocabulary: list[str], n: int, rng) -> list[str]:
    """`n` texts of 10 to 40 phrases: a start word drawn from a Zipf law over `vocabulary` (in a
    shuffled order of ranks, the same for every call with the same vocabulary) and the
    PHRASE - 1 words that follow it in the vocabulary's cycle."""
    import numpy as np

    size = len(vocabulary)
    ranks = np.random.default_rng(1).permutation(size)  # rank r -> word index
    weights = 1.0 / np.arange(1, size + 1) ** 1.1
    weights /= weights.sum()
    out = []
    for phrases in rng.integers(10, 41, n):
        starts = ranks[rng.choice(size, phrases, p=weights)]
        out.append(" ".join(vocabulary[(s + i) % size] for s in starts for i in range(PHRASE)))
    return out


def prepare(workdir: str, records: int, held: int, seed: int = 0) -> dict[str, Any]:
    """Write gemma.keras (random weights, with its preprocessor), train.jsonl, held.jsonl and
    workload.json with stock keras_hub; the workload's description, real tokens counted by the
    model's own preprocessor."""
    import keras
    import keras_hub
    import numpy as np
    import sentencepiece as spm

    os.makedirs(workdir, exist_ok=True)
    vocabulary = words(seed)
    proto = io.BytesIO()
    lines = [" ".join(vocabulary[i:i + 100]) for i in range(0, len(vocabulary), 100)]
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines * 2), model_writer=proto, vocab_size=len(vocabulary) + 4,
        model_type="word", pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="<pad>",
        unk_piece="<unk>", bos_piece="<bos>", eos_piece="<eos>", minloglevel=2)
    tokenizer = keras_hub.models.GemmaTokenizer(proto=proto.getvalue())
    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GemmaBackbone(vocabulary_size=tokenizer.vocabulary_size(), **CONFIG)
    preprocessor = keras_hub.models.GemmaCausalLMPreprocessor(tokenizer, sequence_length=SEQUENCE_LENGTH)
    model = keras_hub.models.GemmaCausalLM(backbone, preprocessor)
    model.save(os.path.join(workdir, "gemma.keras"))
    rng = np.random.default_rng(seed)
    data = {}
    for name, n in (("train", records), ("held", held)):
        rows = texts(vocabulary, n, rng)
        with open(os.path.join(workdir, f"{name}.jsonl"), "w") as f:
            f.writelines(json.dumps({"text": t}) + "\n" for t in rows)
        tokens = 0.0
        for i in range(0, n, 256):  # the targets that weigh 1: what the loss and tokens/s count
            _, _, weights = preprocessor(rows[i:i + 256])
            tokens += float(np.sum(keras.ops.convert_to_numpy(weights)))
        unknown = sum(int(np.sum(keras.ops.convert_to_numpy(tokenizer(t)) == 1)) for t in rows[:32])
        assert unknown == 0, "a generated word is missing from the vocabulary"
        data[name] = {"records": n, "real_tokens": int(tokens), "tokens_per_record": tokens / n,
                      "words_per_record": sum(len(t.split()) for t in rows) / n}
    workload = {"model": "GemmaCausalLM", "config": CONFIG, "params": int(model.count_params()),
                "vocabulary": int(tokenizer.vocabulary_size()), "sequence_length": SEQUENCE_LENGTH,
                "keras_hub": keras_hub.__version__, **data}
    with open(os.path.join(workdir, "workload.json"), "w") as f:
        json.dump(workload, f, indent=2)
    assert not any(m.startswith("distft") for m in sys.modules)
    return workload


# The runs: distft on 2 workers, their peak RSS read from /proc -------------------------------

def distft_flags() -> str:
    """`distft train --help` of this checkout: the flags it has."""
    proc = subprocess.run([python(), "-m", "distft", "train", "--help"], cwd=ROOT, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PAGER="cat"))
    return proc.stdout


def has_flag(help_text: str, flag: str) -> bool:
    """Whether `distft train --help`'s text lists `flag` (`--quantize`, not `--quantize_x`)."""
    return re.search(rf"^\s*{re.escape(flag)}\b", help_text, re.MULTILINE) is not None


def render(name: str, args: argparse.Namespace) -> list[str]:
    return [f.format(rank=args.rank) for f in RUNS[name]]


class PeakRSS(threading.Thread):
    """Peak RSS of each distft worker below `launcher`: the VmHWM (the kernel's high-water mark
    of the resident set) in /proc/PID/status of every Python process with a HOROVOD_RANK, read
    every `every` seconds until the job ends; the last value read is the peak up to then.
    `rises[rank]` holds (time.time(), kB) at each rise, for the peak up to a moment (`peak_by`)."""

    def __init__(self, launcher: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.launcher, self.every = launcher, every
        self.workers: dict[int, int] = {}  # pid -> rank
        self.peak_kb: dict[int, int] = {}  # rank -> VmHWM kB
        self.rises: dict[int, list[tuple[float, int]]] = {}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.scan()
            self.done.wait(self.every)

    def scan(self) -> None:
        import psutil

        try:
            for p in psutil.Process(self.launcher).children(recursive=True):
                if p.pid in self.workers:
                    continue
                try:
                    env = p.environ()
                    if p.name().startswith("python") and "HOROVOD_RANK" in env:
                        self.workers[p.pid] = int(env["HOROVOD_RANK"])
                except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                    continue
        except psutil.NoSuchProcess:
            pass
        for pid, rank in self.workers.items():
            kb = vm_hwm_kb(pid)
            if kb and kb > self.peak_kb.get(rank, 0):
                self.peak_kb[rank] = kb
                self.rises.setdefault(rank, []).append((time.time(), kb))

    def peak_by(self, moment: float) -> dict[int, float]:
        """The peak MB by rank up to `moment` (a time.time())."""
        return {rank: max((kb for t, kb in rises if t <= moment), default=0) / 1024
                for rank, rises in sorted(self.rises.items())}

    def stop(self) -> dict[int, float]:
        """Stop reading: the peak MB by rank."""
        self.done.set()
        self.join()
        return {rank: kb / 1024 for rank, kb in sorted(self.peak_kb.items())}


def vm_hwm_kb(pid: int) -> Optional[int]:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


# Runs `distft train` (argv[2:]) and writes the job's ru_maxrss to argv[1]: getrusage(RUSAGE_CHILDREN)
# is the largest resident set of the processes below it that ended (the launcher, horovodrun and
# the workers, each waited for by its parent), a check of the polled VmHWM's maximum.
WRAPPER = ("import json, resource, subprocess, sys; code = subprocess.call(sys.argv[2:]); "
           "json.dump({'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}, "
           "open(sys.argv[1], 'w')); sys.exit(code)")


def train(workdir: str, name: str, args: argparse.Namespace, workload: dict[str, Any], round_: int = 1,
          rounds: int = 1) -> dict[str, Any]:
    """One `distft train --np=2` of the workload with `name`'s flags: its figures."""
    out = os.path.join(workdir, "runs", name)
    flags = render(name, args)
    lr = args.lr if name == "full" else args.lora_lr
    cmd = [python(), "-m", "distft", "train", "--np=2", f"--model={os.path.join(workdir, 'gemma.keras')}",
           f"--data={os.path.join(workdir, 'train.jsonl')}", f"--val_data={os.path.join(workdir, 'held.jsonl')}",
           f"--output_dir={out}", f"--epochs={args.epochs}", f"--steps_per_epoch={args.steps_per_epoch}",
           f"--batch_size={args.batch_size}", f"--lr={lr}", "--log_every=1000", "--overwrite", *flags]
    started, load = time.time(), os.getloadavg()[0]
    log_path, usage = (os.path.join(workdir, f"{name}-{round_}.log"),
                       os.path.join(workdir, f"{name}-{round_}.rusage.json"))
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, usage, *cmd], cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
        rss = PeakRSS(proc.pid)
        rss.start()
        code = proc.wait()
        peak = rss.stop()
    seconds = time.time() - started
    try:
        with open(usage) as f:
            job_maxrss_mb = json.load(f)["maxrss_kb"] / 1024
    except (OSError, ValueError, KeyError):
        job_maxrss_mb = None
    with open(log_path) as f:
        log_text = f.read()
    metrics_file = os.path.join(out, "metrics.json")
    if code or not os.path.exists(metrics_file):
        tail = [line for line in log_text.splitlines() if line.strip()][-1:] or ["no output"]
        print(f"  {name}: failed ({code}): {tail[0]}\n{log_text[-3000:]}", file=sys.stderr, flush=True)
        return {"available": True, "failed": True, "flags": flags, "exit_code": code, "error": tail[0]}
    with open(metrics_file) as f:
        m = json.load(f)
    result = figures(m, workload, peak)
    result.update(available=True, flags=flags, lr=lr, job_seconds=round(seconds, 1), load=round(load, 2),
                  job_maxrss_mb=round(job_maxrss_mb, 1) if job_maxrss_mb else None,
                  start_lines=[line for line in log_text.splitlines()
                               if " distft " in line and ("weights:" in line or "LoRA" in line
                                                          or "quantized" in line)])
    trained = training_end(log_text, m["epochs"], started)
    if trained:  # the log's second, so the peak up to the end of that second
        by_end = rss.peak_by(trained + 1)
        result.update(peak_rss_trained_mb={str(r): round(v, 1) for r, v in by_end.items()},
                      peak_rss_trained_mb_max=round(max(by_end.values()), 1) if by_end else None)
    print(f"  {f'round {round_}/{rounds} ' if rounds > 1 else ''}{name}: {result['tokens_per_sec']:.0f} tokens/s, peak RSS "
          f"{' / '.join(f'{v:.0f}' for v in peak.values())} MB, {result['trainable_params']:,} trainable, "
          f"held-out loss {result['val_loss']:.4f} ({seconds:.0f}s)", file=sys.stderr, flush=True)
    return result


def training_end(log_text: str, epochs: int, started: float) -> Optional[float]:
    """The time.time() (to the second) of the log's last epoch line, "HH:MM:SS distft epoch E/E":
    training and its last validation are over; the model's save is yet to come."""
    found = re.findall(rf"^(\d\d):(\d\d):(\d\d) distft epoch {epochs}/{epochs}\b", log_text, re.MULTILINE)
    if not found:
        return None
    h, m, sec = map(int, found[-1])
    day = datetime.datetime.fromtimestamp(started).replace(hour=h, minute=m, second=sec, microsecond=0)
    moment = day.timestamp()
    return moment + 86400 if moment < started - 60 else moment  # past midnight


def summarize(rounds: list[dict[str, dict[str, Any]]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(each run's figures, the median over `rounds` of every number; each run's ratios to the
    full row, the median over the rounds of each round's ratio)."""
    names = list(rounds[0])
    runs = {}
    for name in names:
        done = [r[name] for r in rounds if r[name].get("available", True) and not r[name].get("failed")]
        if not done:
            runs[name] = rounds[-1][name]
            continue
        run = dict(done[-1])
        for key, value in done[-1].items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                run[key] = median([d[key] for d in done if d.get(key) is not None])
            elif isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
                run[key] = {k: median([d[key][k] for d in done if k in (d.get(key) or {})]) for k in value}
        run["rounds"] = len(done)
        runs[name] = run
    ratios = {}
    for name in names:
        if name == "full":
            continue
        per_key: dict[str, list[float]] = {}
        for r in rounds:
            a, b = r[name], r["full"]
            if a.get("failed") or b.get("failed") or not a.get("available", True):
                continue
            for _, key, _, is_ratio in COLUMNS:
                if is_ratio and a.get(key) is not None and b.get(key):
                    per_key.setdefault(key, []).append(a[key] / b[key])
        if per_key:
            ratios[name] = {key: median(values) for key, values in per_key.items()}
    return runs, ratios


def median(values: list[float]) -> float:
    import statistics

    found = statistics.median(values)
    return int(found) if all(isinstance(v, int) for v in values) and found == int(found) else found


def accuracy_key(metrics: dict[str, float]) -> Optional[str]:
    """The token accuracy among a causal LM's validation metrics (sparse_categorical_accuracy)."""
    return next((k for k in sorted(metrics) if "accuracy" in k), None)


def figures(m: dict[str, Any], workload: dict[str, Any], peak_mb: dict[int, float]) -> dict[str, Any]:
    """A run's figures from its metrics.json `m`, the workload's token counts and its workers'
    peak RSS: tokens/s = samples/s (metrics.json: every worker's samples, the epochs after the
    first) x the training file's real tokens per text (targets of weight 1, as the preprocessor
    packs them); bytes allreduced per step = 4 x the trainable weights."""
    per_record = workload["train"]["real_tokens"] / workload["train"]["records"]
    val, before = m["validation"], m.get("validation_before") or {}
    acc = accuracy_key(val)
    return {"samples_per_sec": m["samples_per_sec"], "tokens_per_record": per_record,
            "tokens_per_sec": m["samples_per_sec"] * per_record,
            "trainable_params": m["params"]["trainable"], "frozen_params": m["params"]["frozen"],
            "bytes_per_step": BYTES_PER_WEIGHT * m["params"]["trainable"],
            "peak_rss_mb": {str(r): round(v, 1) for r, v in peak_mb.items()},
            "peak_rss_mb_max": round(max(peak_mb.values()), 1) if peak_mb else None,
            "val_loss": val["loss"], "val_accuracy": val[acc] if acc else None,
            "val_loss_before": before.get("loss"), "val_accuracy_before": before.get(acc) if acc else None,
            "steps_per_epoch": m["steps_per_epoch"], "epochs": m["epochs"], "workers": m["workers"],
            "seconds": round(m["seconds"], 1), "first_step_seconds": m.get("first_step_seconds"),
            "lora": m.get("lora")}


# The table ----------------------------------------------------------------------------------

COLUMNS = [  # label, key, format, whether a ratio to the full row means something
    ("tokens/s", "tokens_per_sec", "{:.0f}", True),
    ("peak RSS MB (rank 0 / rank 1)", "peak_rss_mb", None, False),
    ("peak RSS MB (max)", "peak_rss_mb_max", "{:.0f}", True),
    ("peak RSS MB by training's end (max)", "peak_rss_trained_mb_max", "{:.0f}", True),
    ("trainable weights", "trainable_params", "{:,}", True),
    ("bytes allreduced/step", "bytes_per_step", "{:,}", True),
    ("held-out loss before", "val_loss_before", "{:.4f}", False),
    ("held-out loss", "val_loss", "{:.4f}", True),
    ("held-out token accuracy", "val_accuracy", "{:.4f}", True),
    ("job s", "job_seconds", "{:.0f}", False),
    ("load", "load", "{:.1f}", False),
]


def cell(run: dict[str, Any], key: str, fmt: Optional[str]) -> str:
    value = run.get(key)
    if value is None:
        return "-"
    if key == "peak_rss_mb":
        return " / ".join(f"{v:.0f}" for _, v in sorted(value.items()))
    return fmt.format(value)


def table(result: dict[str, Any]) -> str:
    s, w, runs = result["settings"], result["workload"], result["runs"]
    any_run = next((r for r in runs.values() if r.get("steps_per_epoch")), {})
    head = "| run | flags | " + " | ".join(c[0] for c in COLUMNS) + " |"
    lines = [f"\n### {w['model']} of {w['params']:,} weights (vocabulary {w['vocabulary']:,}, sequence "
             f"length {w['sequence_length']}), 2 workers, batch {s['batch_size']} each, {s['epochs']} "
             f"epochs of {any_run.get('steps_per_epoch', s['steps_per_epoch'])} steps"
             + (f"; medians of {len(result['rounds'])} rounds" if len(result.get("rounds") or []) > 1 else "")
             + "\n",
             head, "|---|---|" + "---:|" * len(COLUMNS)]
    for name, run in runs.items():
        flags = " ".join(f"`{f}`" for f in run["flags"])
        if not run.get("available", True):
            lines.append(f"| {name} | {flags} | not available: {run['why']} |" + " |" * (len(COLUMNS) - 1))
        elif run.get("failed"):
            lines.append(f"| {name} | {flags} | failed: {run['error']} |" + " |" * (len(COLUMNS) - 1))
        else:
            lines.append(f"| {name} | {flags} | " + " | ".join(cell(run, k, f) for _, k, f, _ in COLUMNS) + " |")
    ratio_columns = [c for c in COLUMNS if c[3]]
    rounds = len(result.get("rounds") or [None])
    lines += ["", f"| run / full{' (median of the rounds)' if rounds > 1 else ''} | "
              + " | ".join(c[0] for c in ratio_columns) + " |", "|---|" + "---:|" * len(ratio_columns)]
    ratios = result.get("ratios") or summarize([runs])[1]
    for name, row in ratios.items():
        lines.append(f"| {name} | " + " | ".join("-" if row.get(key) is None else f"{row[key]:.3f}"
                                                 for _, key, _, _ in ratio_columns) + " |")
    if rounds > 1:
        lines.append("\ntokens/s by round: " + "; ".join(
            f"{n} " + " / ".join(f"{r[n]['tokens_per_sec']:.0f}" if r[n].get("tokens_per_sec") else "-"
                                 for r in result["rounds"]) for n in runs))
    per_record = w["train"]["real_tokens"] / w["train"]["records"]
    maxrss = ", ".join(f"{n} {r['job_maxrss_mb']:.0f} MB" for n, r in runs.items() if r.get("job_maxrss_mb"))
    lines += ["",
              f"tokens/s = samples/s of the run's metrics.json (both workers' texts over the epochs after the "
              f"first) x {per_record:.2f} real tokens a text (train.jsonl's {w['train']['real_tokens']:,} "
              f"targets of weight 1 over its {w['train']['records']:,} texts, as the model's "
              f"GemmaCausalLMPreprocessor packs them: padding weighs 0).",
              "peak RSS = VmHWM of /proc/PID/status (the resident set's high-water mark) of each worker "
              "process, read every 0.1 s until it exited"
              + (f"; check: getrusage(RUSAGE_CHILDREN).ru_maxrss of a process wrapping the job (its "
                 f"largest process): {maxrss}." if maxrss else ".")
              + " By training's end: the peak up to the log's last epoch line (to the second), before "
              "the model's save.",
              "job s: the whole `distft train --np=2` (start-up, validation, the model's save); load: the "
              "1-minute load average at its start (2 cores; other work shared them).",
              f"bytes allreduced/step = {BYTES_PER_WEIGHT} x the trainable weights of metrics.json (one float32 "
              "gradient allreduce each; plus the 4-byte allreduce of the step's real-token count).",
              "held-out loss and token accuracy: the last epoch's val_loss and val_sparse_categorical_accuracy "
              "of metrics.json, over held.jsonl's real tokens; before: the same before fine-tuning.",
              f"learning rate (for one worker, scaled by 2): full {s['lr']:g}, LoRA runs {s['lora_lr']:g}."]
    lora = next((r["lora"] for r in runs.values() if r.get("lora")), None)
    if lora:
        lines.append(f"LoRA rank {lora['rank']} on {len(lora['layers'])} layers "
                     f"({lora['factor_params']:,} factor weights): {', '.join(lora['layers'][:4])}"
                     f"{' ...' if len(lora['layers']) > 4 else ''}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The `distft` command (Fire): parse flags, call the Python API, turn errors into one line.

    distft train    --model=PATH --data=PATTERN [--output_dir=DIR] [options]
    distft evaluate --model=PATH --data=PATTERN [--metrics=auc,precision,...] [--np=N] [--batch_size=B]
    distft predict  --model=PATH --data=PATTERN --output=FILE.npy|FILE.npz|FILE.csv
    distft generate --model=DIR_OR_FILE (--prompt=TEXT | --prompts=FILE) [--sampler=greedy|top_k]
    distft inspect  --model=PATH [--num_classes=K --unfreeze=SPEC]
    distft inspect  --model=PATH --unfreeze=SPEC --workers=8,64,512 --link=25gbit [--step_ms=MS]
    distft shard    --input=SRC --output_dir=DIR --num_shards=K [--compression=GZIP] [--model=M]
    distft demo
    distft install-horovod [--gpu] [--rebuild]
    distft doctor   [--hosts=h1:2,h2:2] [--data=PATTERN] [--output_dir=DIR] [--network_interface=IF]
"""
from __future__ import annotations

import signal
import sys
import time
import traceback
from typing import Any, Optional

from distft.config import TrainConfig, coerce, field_name, option_groups, option_name, to_bool
from distft.data.text_options import TextOptions
from distft.errors import DistftError
from distft.launch.environment import detect, tell_exit_code


class Commands:
    """Fine-tune Keras models on Horovod workers."""

    def train(self, config: Optional[str] = None, **options: Any) -> None:
        from distft import api

        api.train(config, **options)

    def evaluate(self, model: str, data: str, batch_size: int = 256, label: str = "label",
                 unsafe_deserialization: bool = False, preprocess: str = "auto",
                 x_key: Optional[str] = None, y_key: Optional[str] = None,
                 classes: Optional[str] = None, metrics: Optional[str] = None,
                 np: Optional[int] = None, output: Optional[str] = None,
                 import_: Optional[str] = None, text_key: str = "text",
                 prompt_key: Optional[str] = None, response_key: Optional[str] = None) -> None:
        """Loss and metrics of MODEL over DATA (all workers' shares when launched, or NP workers
        started here), exact over the workers for every Keras metric; METRICS: Keras names,
        e.g. auc,precision,recall,f1_score, each with arguments NAME:KEY=VALUE (default: the model
        file's, else the head's); OUTPUT: also write them as JSON;
        IMPORT: modules or .py files defining the model's custom classes (as for train);
        TEXT_KEY, PROMPT_KEY, RESPONSE_KEY: text records, as for train (a causal LM: the loss
        over the real tokens, perplexity, token accuracy).
        """
        from distft import api

        api.evaluate(model, data, int(batch_size), _str(label), bool(unsafe_deserialization),
                     preprocess, _str(x_key), _str(y_key), _str(classes), _str(metrics), np,
                     _str(output), _str(import_), str(text_key), _str(prompt_key), _str(response_key))

    def predict(self, model: str, data: str, output: str, batch_size: int = 256,
                label: str = "label", unsafe_deserialization: bool = False,
                preprocess: str = "auto", x_key: Optional[str] = None,
                y_key: Optional[str] = None, classes: Optional[str] = None,
                import_: Optional[str] = None, text_key: str = "text") -> None:
        """Write MODEL's outputs for each record of DATA, in order, to OUTPUT: .npy, .npz (one
        array per output: models with several outputs), or .csv with the predicted class name
        and each class's probability (names from CLASSES, a classes.json, by default the one
        beside MODEL), or .jsonl: a Keras Hub causal LM's continuation of each text (the field
        TEXT_KEY of .jsonl records); IMPORT as for evaluate."""
        from distft import api

        api.predict(model, data, str(output), int(batch_size), _str(label), bool(unsafe_deserialization),
                    _preprocess(preprocess), _str(x_key), _str(y_key), _str(classes),
                    _str(import_), str(text_key))

    def generate(self, model: str, prompt: Optional[str] = None, prompts: Optional[str] = None,
                 sampler: str = "greedy", max_length: int = 64, output: Optional[str] = None,
                 seed: Optional[int] = None, batch_size: int = 16) -> None:
        """Continue PROMPT, or each line of the file PROMPTS, with MODEL: a Keras Hub causal
        language model saved with its preprocessor (a .keras file, or a run folder holding
        model.keras). Prints each text as the model's generate gives it (the prompt, then its
        continuation; one a line, a line break in it shown as \\n), or writes them to OUTPUT as
        JSON lines {"prompt": ..., "generated": ...}. SAMPLER: keras_hub's greedy, top_k, top_p,
        random, beam or contrastive; MAX_LENGTH: tokens in all; SEED: repeatable sampling;
        BATCH_SIZE: prompts a generate call.

        Example:
            distft generate --model=runs/lm --prompt="The cat" --max_length=32
            distft generate --model=lm.keras --prompts=prompts.txt --sampler=top_k --seed=1 \\
                --output=generated.jsonl
        """
        from distft import api
        from distft.model.generation import prompts_from

        texts = api.generate(str(model), prompts_from(_str(prompt), _str(prompts)), _str(sampler),
                             max_length, None if seed is None else _integer("seed", seed),
                             _str(output), batch_size)
        if output is None:
            for text in texts:
                print(text.replace("\n", "\\n"), flush=True)

    def inspect(self, model: str, num_classes: Optional[int] = None, unfreeze: Optional[str] = None,
                train_bn: bool = False, weights: Optional[str] = None,
                input_shape: Optional[tuple] = None, unsafe_deserialization: bool = False,
                import_: Optional[str] = None, head: Optional[str] = None,
                workers: Optional[str] = None, link: str = "25gbit", step_ms: Optional[float] = None,
                batch_size: int = 32, compression: str = "none", latency_ms: float = 0.1,
                overlap: float = 0.0) -> None:
        """List MODEL's layers: index, name, type, params, trainable (as train would set them);
        IMPORT as for evaluate; HEAD: the output whose head --num_classes replaces.

        With --workers=8,64,512: instead, predict the step time and efficiency on that many
        workers joined by --link (distft/scaling.py; docs/performance.md), from one worker's
        step: --step_ms, or a short timing here at --batch_size.
        """
        from distft import api

        opts = {k: coerce(TrainConfig, k, v) for k, v in
                (("num_classes", num_classes), ("unfreeze", unfreeze), ("train_bn", train_bn),
                 ("weights", weights), ("input_shape", input_shape),
                 ("unsafe_deserialization", unsafe_deserialization), ("import_", import_),
                 ("head", head), ("batch_size", batch_size), ("compression", compression))}
        if workers is not None:
            from distft import scaling

            try:
                counts = [int(n) for n in str(workers).strip("()[] ").split(",") if n.strip()]
            except ValueError:
                raise DistftError(f"--workers={workers}: give worker counts, e.g. --workers=8,64,512")
            found = api.inspect(model, workers=counts, link=str(link),
                                step_ms=None if step_ms is None else float(step_ms),
                                latency_ms=float(latency_ms), overlap=float(overlap), **opts)
            i = found["inputs"]
            print(f"{i['model']}: {i['trainable_params']} trainable parameters "
                  f"(compression {i['compression']}), one worker's step {i['compute_ms']:.1f} ms "
                  f"({'measured here' if i['compute_measured'] else '--step_ms'}, batch "
                  f"{i['batch_size']}), link {i['link']}, latency {i['latency_ms']} ms, "
                  f"overlap {i['overlap']}")
            print(scaling.table(found["rows"]))
            return
        rows = api.inspect(model, **{k: v for k, v in opts.items()
                                     if k not in ("batch_size", "compression")})
        width = max(len(r["name"]) for r in rows)
        print(f"{'index':>5}  {'name':<{width}}  {'type':<22} {'params':>10}  trainable")
        for r in rows:
            print(f"{r['index']:>5}  {r['name']:<{width}}  {r['type']:<22} {r['params']:>10}  "
                  f"{'yes' if r['trainable'] else 'no'}")
        trainable = sum(r["params"] for r in rows if r["trainable"])
        print(f"{len(rows)} layers; {trainable} trainable and "
              f"{sum(r['params'] for r in rows) - trainable} frozen parameters")

    def shard(self, output_dir: str, input: Optional[str] = None, num_shards: int = 0,
              compression: str = "", label: str = "label", seed: int = 0, workers: int = 1,
              overwrite: bool = False, verify: bool = False, x_key: Optional[str] = None,
              y_key: Optional[str] = None, text_key: str = "text", prompt_key: Optional[str] = None,
              response_key: Optional[str] = None, model: Optional[str] = None,
              sequence_length: Optional[int] = None) -> None:
        """Write NUM_SHARDS balanced TFRecord shards of INPUT (image folder with one subfolder per
        class, TFRecord/.npz/.csv files, or text: .jsonl/.txt, as train reads it) and a
        manifest.json into OUTPUT_DIR; --verify checks the shards of OUTPUT_DIR against their
        manifest (sizes and sha256). With MODEL (a Keras Hub task saved with its preprocessor),
        text is tokenized once by that preprocessor (SEQUENCE_LENGTH tokens a record, default
        its own) and the shards hold the token ids the model takes.

        Example:
            distft shard --input=flowers/ --output_dir=shards/ --num_shards=64 --workers=2
            distft shard --input=train.jsonl --model=gemma.keras --sequence_length=256 \\
                --output_dir=tokens/ --num_shards=64
            distft shard --output_dir=shards/ --verify
        """
        from distft import api

        length = None if sequence_length is None else _integer("sequence_length", sequence_length)
        if length is not None and length < 1:
            raise DistftError(f"--sequence_length={length} must be at least 1")
        api.shard(input and str(input), str(output_dir), _integer("num_shards", num_shards),
                  str(compression or ""), _str(label), _integer("seed", seed),
                  _integer("workers", workers), to_bool(overwrite), to_bool(verify), _str(x_key),
                  _str(y_key), TextOptions(str(text_key), _str(prompt_key), _str(response_key), length),
                  _str(model))

    def slurm(self, template: str = "multi-node", nodes: int = 2, gpus_per_node: int = 4,
              cpus_per_task: int = 8, time: str = "04:00:00", partition: Optional[str] = None,
              account: Optional[str] = None, script: str = "distft-job.sbatch",
              submit: bool = False, cpu_only: bool = False, **train_options: Any) -> None:
        """Write a Slurm batch script from slurm/TEMPLATE.sbatch with your train options; --submit sbatches it.

        Templates: single-node, multi-node, multi-node-gloo, requeue, sweep, elastic. Example:
            distft slurm --nodes=2 --gpus_per_node=4 --model=base.h5 --data='shards/*' --submit
        """
        import os

        from distft.config import check_names
        from distft.launch import slurm

        check_names(train_options, TrainConfig)
        path = slurm.write_script(template, script, int(nodes), int(gpus_per_node),
                                  int(cpus_per_task), str(time), partition, account, train_options,
                                  to_bool(cpu_only))
        print(f"wrote {path} ({nodes} node(s) x {max(1, int(gpus_per_node))} worker(s), "
              f"template slurm/{template}.sbatch)")
        if to_bool(submit):
            job = slurm.submit(path)
            run_root = train_options.get("output_dir", "runs")
            print(f"submitted job {job}")
            print(f"log:        {os.path.abspath(f'slurm-{job}.out')}")
            print(f"run folder: {os.path.join(run_root, job)}")
            print(f"watch:      tensorboard --logdir {os.path.join(run_root, job, 'tensorboard')} "
                  "--host 127.0.0.1 --port 6006")

    def demo(self, output_dir: str = "distft-demo", np: int = 2, epochs: int = 10,
             controller: str = "gloo") -> None:
        """Built-in example: pretrain on digits 0-4, fine-tune a new head on 5-9 with NP workers."""
        from distft.demo import run_demo

        run_demo(output_dir, int(np), int(epochs), controller)

    def install_horovod(self, gpu: Optional[bool] = None, rebuild: bool = False) -> None:
        """Build Horovod 0.28.1 (without xla_mpi_ops.cc, which TensorFlow >= 2.19 cannot compile)
        against this environment's TensorFlow and install it here; --gpu adds NCCL (needs nvcc,
        CUDA headers and nccl.h; default: when TensorFlow is built with CUDA and nvcc is found).
        The wheel is kept in ~/.cache/distft/wheels, so installing again takes seconds;
        --rebuild builds anew."""
        from distft.horovod_install import install

        install(None if gpu is None else to_bool(gpu), to_bool(rebuild))

    def doctor(self, hosts: Optional[str] = None, data: Optional[str] = None,
               output_dir: Optional[str] = None, network_interface: Optional[str] = None) -> None:
        """Check the hosts before a run, in seconds: versions, Horovod's ops, the network
        (interface, reachability, throughput), DATA visible, OUTPUT_DIR writable, GPUs. HOSTS:
        horovodrun's h1:2,h2:2 (default: the Slurm allocation's nodes, else localhost);
        NETWORK_INTERFACE: the one to check (default: the one that routes to the first host).
        Prints a table, then a line for each problem; exit code 1 when there is one.

        Example:
            distft doctor --hosts=node1:4,node2:4 --data='shards/*.tfrecord' --output_dir=runs
        """
        from distft import api

        report = api.doctor(_str(hosts), _str(data), _str(output_dir), _str(network_interface))
        print(report.table(), flush=True)
        for line in report.problems:
            print(f"distft: doctor: {line}", file=sys.stderr, flush=True)
        if report.problems:
            raise DistftError(f"{len(report.problems)} problem(s)", exit_code=1, reported=True)


def _str(value: Any) -> Optional[str]:
    """A string option as a string (Fire turns `--label=1` into an int and `--label=a,b` into a
    tuple), None left alone."""
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return None if value is None else str(value)


def _preprocess(value: str) -> str:
    """A checked --preprocess value (as train checks it)."""
    return TrainConfig.resolve(model="-", data="-", output_dir="-", preprocess=value).preprocess


def _integer(name: str, value: Any) -> int:
    if isinstance(value, bool) or not str(value).lstrip("-").isdigit():
        raise DistftError(f"--{name}={value!r} is not an integer: fix the value")
    return int(value)


# Flags whose value is free text: Fire would read `--prompt=hello, world` as a tuple and
# `--prompt=1e3` as a number, so `main` hands their values to Fire quoted, as typed.
TEXT_FLAGS = ("--prompt",)


def _text_flags(argv: list[str]) -> list[str]:
    """`argv` with the values of TEXT_FLAGS (`--prompt=TEXT` or `--prompt TEXT`) quoted for
    Fire, which unquotes them to the same string."""
    out: list[str] = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if out and out[-1] in TEXT_FLAGS and not arg.startswith("--"):
            out.append(repr(arg))
        elif sep and name in TEXT_FLAGS:
            out.append(f"{name}={value!r}")
        else:
            out.append(arg)
    return out


def _keyword_flag(arg: str) -> str:
    name, sep, value = arg.partition("=")
    return f"--{field_name(name[2:])}{sep}{value}" if name.startswith("--") else arg


def _train_help() -> str:
    """`distft train --help`: every option once, under its group's heading (config.GROUPS)."""
    lines = ["Fine-tune a model: distft train --model=PATH --data=PATTERN [--output_dir=DIR] [options]",
             "", "Options by group (also keys of --config=FILE.yaml; flags override the file):"]
    for heading, fields in option_groups():
        lines += ["", f"{heading}:"]
        for f in fields:
            default = "" if f.default in (None, "") else f" (default {f.default})"
            lines.append(f"  --{option_name(f.name)}: {f.metadata.get('help', '')}{default}")
    return "\n".join(lines)


Commands.train.__doc__ = _train_help()


# Seconds a rank > 0 waits, after an error every rank raised, for rank 0 to report it.
SHARED_ERROR_GRACE = 10.0


def main(argv: Optional[list[str]] = None) -> None:
    import fire

    argv = sys.argv[1:] if argv is None else argv
    # A flag named after a Python keyword (--import) reaches Fire as its parameter (import_).
    argv = _text_flags([_keyword_flag(a) for a in argv])
    if any(a in ("--help", "-h") for a in argv) and "--" not in argv:
        argv = [a for a in argv if a not in ("--help", "-h")] + ["--", "--help"]
    debug = any(a in ("--debug", "--debug=true", "--debug=True") for a in argv)
    from distft import log

    log.quiet_tensorflow(debug)  # before anything imports TensorFlow
    try:
        fire.Fire(Commands(), command=argv, name="distft")
    except DistftError as e:
        if debug:
            traceback.print_exc()
        env = detect()
        rank = env.rank
        tell_exit_code(e.exit_code)
        if e.local and env.size > 1:  # this rank's alone: named, rank 0 too
            print(f"distft: {e.label}: rank {rank}: {e}", file=sys.stderr, flush=True)
        elif rank == 0 and not e.reported:
            print(f"distft: {e.label}: {e}", file=sys.stderr, flush=True)
        if rank and not e.local:
            # Every rank raised the same error; give rank 0 time to say it before a launcher,
            # seeing this rank exit, stops the others. horovodrun and mpirun end this rank with
            # SIGTERM as soon as rank 0 exits (so the default action, not the stop handler), so
            # the wait only bounds a slow rank 0 on a loaded machine.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            time.sleep(SHARED_ERROR_GRACE)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("distft: interrupted", file=sys.stderr)
        sys.exit(130)

"""distft's Python API; the CLI is a thin layer over these functions.

Example:
    import distft
    metrics = distft.train(model="base_model.h5", data="shards/*.tfrecord", output_dir="runs/a",
                           num_classes=5, unfreeze="last:2", epochs=3, np=2)
    print(metrics["validation"]["accuracy"])
"""
from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Union

from distft import log, scaling
from distft.config import TrainConfig, evaluation_options
from distft.data.text_options import TextOptions
from distft.errors import DistftError
from distft.launch.environment import Environment, detect

if TYPE_CHECKING:  # the API imports Keras only when it runs
    import keras

    from distft.doctor import Report


# Options for the launcher that `--np` starts, not for its workers.
LAUNCHER_OPTIONS = ("np", "hosts", "controller", "min_np", "max_np", "host_discovery", "elastic_timeout")


def train(config: Optional[str] = None, **options: Any) -> dict[str, Any]:
    """Fine-tune a model on this worker, or on `np` workers that it starts.

    Options are the fields of `TrainConfig` (see `distft train --help`); `config` names a YAML
    file of them, which `options` override. Returns the metrics saved in metrics.json.
    """
    from distft.launch.elastic import Elastic
    from distft.launch.slurm import mistakes

    cfg = TrainConfig.resolve(config, **options)
    env = detect()
    elastic = None if env.is_launched else Elastic.of(cfg)  # a worker's launcher has the counts
    _setup_logging(env.rank, env.size, cfg.debug, tensorflow=False)
    for warning in mistakes(env, cfg.np, cfg.elastic):
        log.warning(warning)
    if not cfg.output_dir and not env.is_launched:
        cfg = cfg.with_run_folder()
        log.info("run folder: %s (choose one with --output_dir)", cfg.output_dir)
    if cfg.np and not env.is_launched:
        from distft.launch.spawn import spawn

        flags = _flags(cfg.to_dict(), TrainConfig().to_dict(), skip=LAUNCHER_OPTIONS)
        spawn(["train", *flags], cfg.np, cfg.hosts, cfg.controller, cfg.debug, elastic)
        with open(os.path.join(cfg.output_dir, "metrics.json")) as f:
            return json.load(f)
    _warn_np_ignored(cfg.np, env)
    log.import_tensorflow(cfg.debug)
    from distft.model.custom import import_modules
    from distft.train.trainer import run

    import_modules(cfg.import_)
    return run(cfg)


def evaluate(model: str, data: str, batch_size: int = 256, label: str = "label",
             unsafe_deserialization: bool = False, preprocess: str = "auto",
             x_key: Optional[str] = None, y_key: Optional[str] = None,
             classes: Optional[str] = None, metrics: Union[str, Sequence[str], None] = None,
             np: Optional[int] = None, output: Optional[str] = None,
             import_: Union[str, Sequence[str], None] = None,
             text_key: str = "text", prompt_key: Optional[str] = None,
             response_key: Optional[str] = None) -> dict[str, float]:
    """Loss and metrics of `model` over all of `data`, split across the workers when launched
    or across `np` workers that this call starts; exact for every Keras metric (each metric's
    state is summed over the workers).

    `metrics`: Keras metric names, with arguments NAME:KEY=VALUE (e.g.
    "auc,precision,recall,f1_score"; default: the model file's if it was compiled, else the
    head's, as in train). Images are fed as in training (`preprocess`: auto feeds what the run that
    wrote the model fed, see model/preprocessing.py). Class names in the
    data are numbered as in `classes` (a classes.json; default: the one beside the model).
    `output`: also write the results to this JSON file. `import_`: modules to import first
    (`--import`: names or .py files, whose classes the model uses). Text records (a Keras Hub
    task's, see train's --text_key, --prompt_key, --response_key): a causal LM's loss is the mean
    over the real tokens, with perplexity and token accuracy.
    """
    options = dict(locals())  # this call's arguments, for the workers that --np starts
    env = detect()
    _setup_logging(env.rank, env.size, False, tensorflow=False)
    batch_size, preprocess, metrics, np = evaluation_options(batch_size, preprocess, metrics, np)
    if np and not env.is_launched:
        return _evaluate_on_workers(options, np)
    _warn_np_ignored(np, env)
    log.import_tensorflow(False)

    from distft.files import write_json
    from distft.model.custom import import_modules
    from distft.model.prepare import prepare
    from distft.train.checks import check_fit
    from distft.train.evaluation import evaluate_split
    from distft.train.metrics import objective
    from distft.train.step import evaluate_per_token

    import_modules(import_)
    worker, source = _open(data, label, x_key, y_key, TextOptions(text_key, prompt_key, response_key))
    ft = worker.all_ok(lambda: prepare(model, unfreeze="all", metrics=metrics,
                                       unsafe_deserialization=unsafe_deserialization,
                                       target_shape=source.layout.target_shape))
    ds = _load(worker, source, ft.model, model, classes)
    worker.all_ok(lambda: check_fit(ft, ds))
    feed = _feed(preprocess, model, ft.model, ds, worker)
    # Every output weighs 1 in `loss`; the loss and metrics default to the file's (a kept head).
    tokens = ds.layout.token_weighted  # a causal LM on text: the mean over the real tokens
    ft.model.compile(**{**worker.all_ok(lambda: objective(ft, None, tokens)), "loss_weights": None})
    if tokens:
        evaluate_per_token(ft.model)
    stream = ds.stream(worker.rank, worker.size, batch_size, ft.input_shape, training=False,
                       preprocess=feed)
    results = evaluate_split(ft.model, stream, ds.share(worker.rank, worker.size).records, worker)
    log.info("%s on %s (%d records): %s", model, data, sum(ds.part_counts()),
             "  ".join(f"{k} {v:.4f}" for k, v in results.items()))
    if output and worker.rank == 0:
        write_json(output, results)
    return results


def _evaluate_on_workers(options: dict[str, Any], np: int) -> dict[str, float]:
    """`evaluate(**options)` run by `np` workers started here, through `distft evaluate`."""
    import inspect
    import tempfile

    from distft.launch.spawn import spawn

    defaults = {k: p.default for k, p in inspect.signature(evaluate).parameters.items()}
    with tempfile.TemporaryDirectory(prefix="distft-evaluate-") as folder:
        output = options["output"] or os.path.join(folder, "metrics.json")
        spawn(["evaluate", *_flags({**options, "output": output}, defaults, skip=("np",))], np)
        with open(output) as f:
            return json.load(f)


def _warn_np_ignored(np: Optional[int], env: Environment) -> None:
    """--np in a worker that a launcher started: the launcher's worker count holds."""
    if np and env.is_launched and np != env.size:
        log.warning("--np=%d ignored: this is one of %d workers started by %s", np, env.size,
                    env.name)


def predict(model: str, data: str, output: str, batch_size: int = 256, label: str = "label",
            unsafe_deserialization: bool = False, preprocess: str = "auto",
            x_key: Optional[str] = None, y_key: Optional[str] = None,
            classes: Optional[str] = None, import_: Union[str, Sequence[str], None] = None,
            text_key: str = "text") -> str:
    """Write the model's outputs for every record of `data`, in file order, to `output`:
    `.npy` (the outputs), `.npz` (one array per output, named as the outputs: a model with
    several outputs), or `.csv` (the predicted class's name, then one probability column per
    class, named from `classes`: a classes.json, default the one beside the model), or, for a
    Keras Hub causal LM on text, `.jsonl`: each record's text (the field `text_key`, e.g. the
    prompts of pairs) continued by the model's `generate`, up to the length its preprocessor packs.
    `import_`: modules to import first, as in `evaluate`."""
    _setup_logging(detect().rank, detect().size, False)

    import keras
    import numpy as np

    from distft.model import loading
    from distft.model.custom import import_modules
    from distft.files import atomic_write

    kind = os.path.splitext(output)[1]
    if kind not in (".npy", ".npz", ".csv", ".jsonl"):
        raise DistftError(f"--output={output} must end in .npy (outputs), .npz (one array per "
                          "output), .csv (class names and probabilities) or .jsonl (a causal LM's text)")
    import_modules(import_)
    worker, source = _open(data, label, x_key, y_key, TextOptions(text_key))
    net = worker.all_ok(lambda: loading.load(model, unsafe_deserialization=unsafe_deserialization))
    if kind == ".jsonl":
        return _generated(worker, net, _load(worker, source, net, model, classes, targets=False), output)
    outputs = list(net.output_names) if len(net.outputs) > 1 else ["output"]  # a Sequential has no names
    if (len(outputs) > 1) != (kind == ".npz"):
        raise DistftError(f"--output={output}: the model has {len(outputs)} output(s) "
                          f"({', '.join(outputs)}): write " + (
                              "an .npz file, one array per output" if len(outputs) > 1 else ".npy or .csv"))
    ds = _load(worker, source, net, model, classes, targets=False)
    names = _class_names(model, classes) or ds.classes
    if kind == ".csv" and (len(net.output_shape) != 2 or (names and len(names) != net.output_shape[-1])):
        raise DistftError(f"--output={output}: the model's output {net.output_shape} is not one "
                          f"probability per class{f' of {len(names)}' if names else ''}: write .npy")
    feed = _feed(preprocess, model, net, ds, worker)
    # Split by record (every worker reads all files) so the outputs interleave back in order.
    stream = ds.stream(worker.rank, worker.size, batch_size, tuple(net.input_shape[1:]),
                       training=False, by_record=True, preprocess=feed).map(lambda x, y: x)
    # Keras's own predict, not a Keras Hub task's, which would run its preprocessor again.
    mine = keras.Model.predict(net, stream, verbose=0)
    parts = worker.gather(mine if len(outputs) > 1 else [mine])
    if worker.rank == 0:
        merged = {}
        for i, name in enumerate(outputs):  # the ranks' records interleave back into file order
            first = parts[0][i]
            merged[name] = np.empty((sum(len(p[i]) for p in parts), *first.shape[1:]), first.dtype)
            for r, part in enumerate(parts):
                merged[name][r::worker.size] = part[i]
        out = merged[outputs[0]]
        if kind == ".npz":
            atomic_write(output, lambda tmp: np.savez(open(tmp, "wb"), **merged), suffix=".npz")
        elif kind == ".npy":
            atomic_write(output, lambda tmp: np.save(open(tmp, "wb"), out), suffix=".npy")
        else:
            atomic_write(output, lambda tmp: _write_predictions(tmp, out, names), suffix=".csv")
        log.info("wrote %s: %s predictions of shape %s", output, len(out),
                 ", ".join(f"{n} {merged[n].shape[1:]}" for n in outputs))
    return output


def _generated(worker, net, ds, output: str) -> str:
    """predict's `.jsonl`: each record's prompt continued by a causal LM, split by record over
    the workers and written in file order by rank 0."""
    from distft.model.generation import causal_lm, continuations, write_jsonl

    lm = worker.all_ok(lambda: causal_lm(net))
    prompts = [p for path in ds.files for p in ds.layout.prompts(path, whole=True)]
    mine = continuations(lm, prompts[worker.rank::worker.size], lm.preprocessor.sequence_length)
    parts = worker.gather(mine)
    if worker.rank == 0:
        texts = [parts[i % worker.size][i // worker.size] for i in range(len(prompts))]
        write_jsonl(output, prompts, texts)
        log.info("wrote %s: %d generated texts", output, len(texts))
    return output


def generate(model: Union[str, keras.Model], prompts: Union[str, Sequence[str]],
             sampler: str = "greedy", max_length: int = 64, seed: Optional[int] = None,
             output: Optional[str] = None, batch_size: int = 16) -> list[str]:
    """Continue each prompt with a Keras Hub causal language model: `model` is its .keras file,
    a run folder holding model.keras, or the loaded `CausalLM`, saved with its preprocessor.
    Returns what the model's `generate` gives for each prompt (the prompt, then its
    continuation, up to `max_length` tokens in all), after `compile(sampler=sampler)` (keras_hub's
    sampler names: greedy, top_k, top_p, random, beam, contrastive); `seed` makes a random
    sampler repeatable. `output`: also write `{"prompt", "generated"}` JSON lines there. One
    process, no workers.

    Example:
        distft.generate("runs/lm", ["The cat"], sampler="top_k", max_length=32, seed=1)
    """
    from distft.model import generation

    _setup_logging(0, 1, False, tensorflow=False)
    sampler, max_length, batch_size = generation.check(sampler, max_length, batch_size)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise DistftError("prompts: pass a text or a list of texts")
    log.import_tensorflow(False)
    lm = generation.causal_lm(model)
    texts = generation.generate(lm, prompts, sampler, max_length, seed, batch_size)
    if output:
        generation.write_jsonl(output, prompts, texts)
        log.info("wrote %s: %d prompts and their continuations (--sampler=%s --max_length=%d)",
                 output, len(texts), sampler, max_length)
    return texts


def _open(data: str, label: str, x_key: Optional[str], y_key: Optional[str],
          text: TextOptions = TextOptions()):
    """This worker and `data`, opened (see `_load`)."""
    from distft.data.dataset import Source
    from distft.train.runtime import Worker

    worker = Worker.start()
    return worker, worker.all_ok(lambda: Source.open(data, label, x_key=x_key, y_key=y_key, named_csv=True,
                                                     text=text))


def _load(worker, source, net, model: str, classes: Optional[str], targets: bool = True):
    """`source` matched to the model `net` (from the file `model`; `targets`: it must hold the
    outputs' targets), counted, its class names numbered as the model's: ready."""
    from distft.data.dataset import load

    names = worker.all_ok(lambda: _class_names(model, classes))
    return load(source, net, worker, targets=targets, classes=tuple(names) if names else None,
                where="the model's classes.json").train


def _feed(preprocess: str, model: str, net, ds, worker) -> str:
    """The --preprocess for `net` (loaded from `model`): with auto, what its training run fed
    (the config.yaml beside it) or what its first layers expect; logged by rank 0."""
    from distft.model import preprocessing

    trained = worker.all_ok(lambda: preprocessing.trained_with(model))
    feed = worker.all_ok(lambda: preprocessing.choose(preprocess, net, ds.layout, trained))
    if worker.rank == 0:
        feed.report()
    return feed.preprocess


def _class_names(model: str, classes: Optional[str]) -> list[str]:
    """The class names in `classes` (a classes.json), or in the classes.json beside `model`."""
    path = classes or os.path.join(os.path.dirname(os.path.abspath(model)), "classes.json")
    if not os.path.exists(path):
        if classes:
            raise DistftError(f"--classes={classes} does not exist: pass the run's classes.json")
        return []
    try:
        with open(path) as f:
            return list(json.load(f)["class_names"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DistftError(f"{path} is not a distft classes.json ({type(e).__name__}): pass "
                          "--classes=RUN/classes.json") from None


def _write_predictions(path: str, probabilities, names: list[str]) -> None:
    import csv

    names = names or [str(i) for i in range(probabilities.shape[1])]
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["class", *names])
        for row in probabilities:
            out.writerow([names[int(row.argmax())], *(f"{p:.6g}" for p in row)])


def inspect(model: str, num_classes: Optional[int] = None, unfreeze: Optional[str] = None,
            train_bn: bool = False, weights: Optional[str] = None,
            input_shape: Optional[tuple] = None, unsafe_deserialization: bool = False,
            import_: Union[str, Sequence[str], None] = None,
            head: Optional[str] = None, workers: Optional[Sequence[int]] = None,
            link: str = "25gbit", step_ms: Optional[float] = None, batch_size: int = 32,
            compression: str = "none", latency_ms: float = scaling.LATENCY_MS,
            overlap: float = 0.0) -> Union[list[dict], dict]:
    """The flattened layers (index, name, type, params, trainable) as `train` would set them,
    after importing the modules `import_` (as in `evaluate`).

    With `workers`: instead, the scaling model's prediction (distft/scaling.py) for each worker
    count, `{"inputs": {...}, "rows": [{"workers", "compute_ms", "allreduce_ms", "step_ms",
    "samples_per_s", "efficiency"}, ...]}`, from `step_ms` (one worker's step) or, without it,
    a short timing of the train step here at `batch_size`."""
    _setup_logging(0, 1, False)
    from distft.model import unfreeze as unfreezing
    from distft.model.custom import import_modules
    from distft.model.prepare import prepare

    if workers is not None:
        scaling.check(workers, link, batch_size, compression, latency_ms, overlap)
    import_modules(import_)
    ft = prepare(model, num_classes, unfreeze, train_bn=train_bn, weights=weights,
                 input_shape=input_shape, unsafe_deserialization=unsafe_deserialization, head=head,
                 file_objective=False)  # layers only: the file's loss need not be rebuilt
    rows = [{"index": i, "name": l.name, "type": type(l).__name__,
             "params": unfreezing.count_params(l.weights), "trainable": bool(l.trainable and l.weights)}
            for i, l in enumerate(unfreezing.flatten(ft.model))]
    if workers is None:
        return rows
    measured = step_ms is None
    compute = scaling.measure_compute_ms(ft.model, batch_size) if measured else step_ms
    inputs = {"model": model, "trainable_params": ft.trainable_params, "compute_ms": compute,
              "compute_measured": measured, "batch_size": batch_size, "link": link,
              "compression": compression, "latency_ms": latency_ms, "overlap": overlap}
    return {"inputs": inputs, "rows": scaling.predict(workers, compute, ft.trainable_params, link,
                                                      batch_size, compression, latency_ms, overlap)}


def doctor(hosts: Optional[str] = None, data: Optional[str] = None,
           output_dir: Optional[str] = None, network_interface: Optional[str] = None) -> "Report":
    """Check the hosts a job would run on, in seconds: on each, the Python, TensorFlow, Keras,
    Horovod and distft versions, Horovod's built-in ops, the network interface (`network_interface`,
    else the one that routes to the first host) and whether every other host reaches it, the
    throughput between each pair, `data` (files matched and readable), `output_dir` (writable),
    and the GPUs. `hosts`: horovodrun's `h1:2,h2:2` (default: this Slurm allocation's nodes,
    else localhost); other hosts are reached by ssh, or srun in an allocation.

    Returns a `distft.doctor.Report`: `.problems` (one line each, naming the host and the fix;
    empty when healthy), `.table()`, and the probes' reports.

    Example:
        report = distft.doctor(hosts="n1:4,n2:4", data="shards/*.tfrecord", output_dir="runs")
        print(report.table())
        assert report.healthy, report.problems
    """
    from distft.doctor import run

    return run(hosts, data, output_dir, network_interface)


def shard(input: Optional[str], output_dir: str, num_shards: int = 0, compression: str = "",
          label: str = "label", seed: int = 0, workers: int = 1, overwrite: bool = False,
          verify: bool = False, x_key: Optional[str] = None, y_key: Optional[str] = None,
          text: TextOptions = TextOptions(), model: Optional[str] = None) -> str:
    """Write `num_shards` balanced TFRecord shards of `input` and a manifest.json; return its path.

    `input`: a folder of class subfolders of JPEG/PNG images, or TFRecord, .npz or .csv files,
    or text (.jsonl, .txt; `text`: where records hold it), written as TFRecord strings; with
    `model` (a Keras Hub task saved with its preprocessor), text tokenized once by that
    preprocessor (`text.sequence_length` tokens a record, default its own) and written as the
    token ids the model takes (data/formats/tokens.py).
    `verify`: instead, check the shards in `output_dir` against their manifest (sizes, sha256).
    """
    _setup_logging(0, 1, False)

    from distft.data.manifest import Manifest
    from distft.data.writer import write

    if verify:
        m = Manifest.load(output_dir)
        m.verify(full=True)
        log.info("%s: %d shards, %d records: sizes and sha256 match the manifest", output_dir,
                 len(m.shards), sum(m.counts()))
    else:
        if not input:
            raise DistftError("--input is required: pass --input=SRC (or --verify to check shards)")
        m = write(input, output_dir, num_shards, compression, label, seed, workers, overwrite,
                  x_key, y_key, text, _tokenizing(model, text))
    return os.path.join(m.folder, "manifest.json")


def _tokenizing(model: Optional[str], text: TextOptions) -> Any:
    """The preprocessor of `model` that `distft shard --model` tokenizes with (None: no model)."""
    if model is None:
        if text.sequence_length is not None:
            raise DistftError("--sequence_length is for token ids (--model): text shards take it "
                              "when they train; leave it out, or pass --model")
        return None
    from distft.data.own_preprocessor import text_preprocessor
    from distft.model import loading

    preprocessor = text_preprocessor(loading.load(model))
    if preprocessor is None:
        raise DistftError(f"--model={model} has no preprocessor to tokenize text with: pass a Keras "
                          "Hub task saved with its preprocessor")
    return preprocessor


def _flags(values: dict[str, Any], defaults: dict[str, Any], skip: tuple = ()) -> list[str]:
    """The flags that reproduce `values` in a worker (defaults and `skip` left out)."""
    flags = []
    for key, value in values.items():
        if key in skip or value == defaults[key]:
            continue
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        flags.append(f"--{key}={json.dumps(value) if isinstance(value, str) else value}")
    return flags


def _setup_logging(rank: int, size: int, debug: bool, tensorflow: bool = True) -> None:
    log.quiet_tensorflow(debug)
    log.setup(rank, size, debug)
    if tensorflow:
        log.import_tensorflow(debug)

"""The report's contenders: one training run each, in a fresh process, printing one JSON line.

- `distft`: `distft.train(...)`: in-process for 1 worker, `--np=2` (horovodrun) for 2.
- `keras`: a bare Keras 3 `model.fit` script (1 worker).
- `mwms`: the same script under `tf.distribute.MultiWorkerMirroredStrategy`, 2 processes on
  localhost with `TF_CONFIG`, on **tf_keras** (Keras 2 on the same TensorFlow, with
  `TF_USE_LEGACY_KERAS=1`): Keras 3 has no working multi-worker `fit` on TensorFlow (Keras
  issue #20585). It loads the workload's tf_keras twin of the base model (same weights).
- `mwms-keras3`: one attempt of the same with Keras 3; it records how it fails (`failed`,
  `error`: the exception's first line) instead of a figure.
- `horovod`: the bare Keras 3 script on Horovod's core ops (`horovod.tensorflow`), under
  `horovodrun --gloo` (the "stock Horovod job" of the tuning benchmark): its `train_step`
  averages the gradients with one `hvd.grouped_allreduce`, and every variable starts from rank
  0's (`hvd.broadcast`). Horovod's Keras layer (`horovod.tensorflow.keras`, with its
  `DistributedOptimizer`) does not work on Keras 3.

Every contender runs one compute thread per worker (`--threads`), each worker pinned to its
own core (`--pin`, the default; distft pins its workers itself; a 1-worker run takes core
`--core`, so that two can run side by side), the same per-worker batch, the same files split
the same way, and reports steady-state samples/s over all workers (epochs after the first) and
`first_step_at`, the time.time() at which its first step ended. The bare scripts run
`--inter` inter-op threads (2, their best here; distft's own default is 1). All start from the
same weights: the base from the workload's file, the new head as distft makes it (see
benchmarks/workloads.py).

Example (from the repository root):
    python -m benchmarks.contenders --contender=mwms --workers=2 --spec=/tmp/w/mobilenet-2048/workload.json
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional

CONTENDERS = ("distft", "keras", "mwms", "mwms-keras3", "horovod")
LR = 1e-3
SEED = 42  # distft's default --seed
SHUFFLE = 10000  # distft's default --shuffle_buffer
LOG_EVERY = 50  # distft's default --log_every
ATTEMPT_TIMEOUT = 300  # seconds: mwms-keras3 is expected to fail, not to hang


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.contenders", description=__doc__.split("\n")[0])
    p.add_argument("--contender", choices=CONTENDERS, required=True)
    p.add_argument("--spec", required=True, help="a workload.json written by benchmarks.workloads")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per worker (0: TF default)")
    p.add_argument("--pin", type=int, default=1, help="pin each worker to its own core (0: no)")
    p.add_argument("--core", type=int, default=0, help="1 worker: the core to pin it to (an index)")
    p.add_argument("--inter", type=int, default=2, help="the bare scripts' inter-op threads")
    p.add_argument("--index", type=int, default=-1, help=argparse.SUPPRESS)  # a worker of mwms
    p.add_argument("--extra", default="", help="distft: more options as JSON, e.g. '{\"compression\": \"fp16\"}'")
    a = p.parse_args(argv)
    with open(a.spec) as f:
        spec = json.load(f)
    if a.contender == "distft":
        result = run_distft(spec, a.workers, a.epochs, a.batch_size, a.threads, a.pin,
                            json.loads(a.extra or "{}"), a.core)
    elif a.contender == "keras" or a.index >= 0:
        mode = a.contender if a.index >= 0 else "keras"
        try:
            result = keras_fit(spec, a.epochs, a.batch_size, (a.threads, a.inter), a.pin, mode,
                               a.workers, max(0, a.index), a.core)
        except Exception as e:  # the attempt's failure is its result
            if mode != "mwms-keras3":
                raise
            import keras

            result = None if a.index else {"failed": True, "error": first_line(e), "keras": keras.__version__}
    elif a.contender == "horovod" and "HOROVOD_RANK" in os.environ:
        rank = int(os.environ["HOROVOD_LOCAL_RANK"])
        result = keras_fit(spec, a.epochs, a.batch_size, (a.threads, a.inter), a.pin, "horovod",
                           a.workers, rank)
    else:
        result = _launch(a.contender, argv, a.workers)
    if result is not None:
        core = {"core": a.core} if a.workers == 1 else {}
        print(json.dumps({"contender": a.contender, "workers": a.workers, **core, **result}), flush=True)
    return 0


# --- distft ------------------------------------------------------------------------------------

def run_distft(spec: dict, workers: int, epochs: int, batch_size: int, threads: int, pin: int,
               extra: dict, core: int = 0) -> dict[str, Any]:
    """`distft train` on `workers` workers; its own steady-state samples/s."""
    if pin and workers == 1:
        _pin(core)
    import distft

    with tempfile.TemporaryDirectory(prefix="distft-bench-run-") as out:
        m = distft.train(model=spec["model"], data=spec["data"], output_dir=out,
                         num_classes=spec["classes"], unfreeze=spec["unfreeze"], epochs=epochs,
                         batch_size=batch_size, lr=LR, threads=threads, log_every=LOG_EVERY,
                         overwrite=True, np=workers if workers > 1 else None, **extra)
    return {"samples_per_sec": m["samples_per_sec"], "steps_per_epoch": m["steps_per_epoch"],
            "trainable_params": m["params"]["trainable"], "loss": m["train"]["loss"],
            "first_step_at": m["first_step_at"]}


# --- the bare Keras script, alone, under MWMS, or with Horovod ---------------------------------

def keras_fit(spec: dict, epochs: int, batch_size: int, threads: tuple[int, int], pin: int, mode: str,
              workers: int = 1, index: int = 0, core: int = 0) -> Optional[dict[str, Any]]:
    """Fine-tune as a plain Keras script would: load, new head, freeze, compile, fit.
    `mode`: keras, horovod (Keras 3), mwms (tf_keras) or mwms-keras3 (an attempt: returns how it
    failed). Worker `index` of `workers` reads files index::workers; worker 0 returns the result.
    `threads` is (intra-op, inter-op); intra-op 0 leaves both at TensorFlow's default."""
    if pin:
        _pin(core + index)
    legacy = mode == "mwms"
    if legacy:  # tf.keras is tf_keras then, for TensorFlow's own uses of it
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf

    if legacy:
        import tf_keras as K
    else:
        import keras as K
    if threads[0]:  # 0: TensorFlow's default (all cores), as a stock script has
        tf.config.threading.set_intra_op_parallelism_threads(threads[0])
        tf.config.threading.set_inter_op_parallelism_threads(threads[1])
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if mode.startswith("mwms") else None
    if mode == "horovod":
        import horovod.tensorflow as hvd

        hvd.init()
    K.utils.set_random_seed(SEED)

    def build():
        base = K.models.load_model(spec["model_tf_keras" if legacy else "model"], compile=False)
        # The new head as distft makes it (GlorotUniform(seed=42)); tf_keras draws other
        # numbers from that seed, so it takes the same values from the workload's file.
        init = K.initializers.GlorotUniform(seed=SEED)
        if legacy:
            values = np.load(spec["head_init"])
            init = K.initializers.Constant(values["kernel"])
        head = K.layers.Dense(spec["classes"], activation="softmax", name="head", kernel_initializer=init)
        model = K.Model(base.inputs, head(base.layers[-2].output))
        first = [l.name for l in model.layers].index(spec["first_trainable"])
        for i, layer in enumerate(model.layers):
            layer.trainable = i >= first and not isinstance(layer, K.layers.BatchNormalization)
        optimizer = K.optimizers.Adam(learning_rate=LR * workers)
        # Horovod's ops have no XLA kernel; on CPUs Keras 3's default "auto" is no XLA anyway.
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                      **({"jit_compile": False} if mode == "horovod" else {}))
        if mode == "horovod":
            _horovod_step(model, hvd)
        return model

    shape = tuple(spec["input"])
    features = {"x": tf.io.FixedLenFeature([math.prod(shape)], tf.float32),
                "y": tf.io.FixedLenFeature([], tf.int64)}
    files = sorted(glob.glob(spec["data"]))[index::workers]

    def dataset(_context=None):
        def parse(batch):
            parsed = tf.io.parse_example(batch, features)
            return tf.reshape(parsed["x"], (-1, *shape)), parsed["y"]

        return (tf.data.TFRecordDataset(files)
                .shuffle(SHUFFLE, seed=SEED + index, reshuffle_each_iteration=True)
                .repeat()
                .batch(batch_size, drop_remainder=True)
                .map(parse, num_parallel_calls=tf.data.AUTOTUNE)
                .prefetch(tf.data.AUTOTUNE))

    if strategy:
        with strategy.scope():
            model = build()
        data = (K.utils.experimental.DatasetCreator(dataset) if legacy
                else strategy.distribute_datasets_from_function(dataset))
    else:
        model, data = build(), dataset()
    if mode == "horovod":  # every variable from rank 0, as BroadcastGlobalVariablesCallback(0) did
        model.optimizer.build(model.trainable_variables)
        for v in model.variables + list(model.optimizer.variables):
            v.assign(hvd.broadcast(v.value, 0))
    timer = EpochTimer(K)
    steps = max(1, spec["records"] // (workers * batch_size))  # as distft: the remainder dropped
    history = model.fit(data, steps_per_epoch=steps, epochs=epochs, callbacks=[timer], verbose=0)
    if index:
        return None
    timed = timer.seconds[1:] or timer.seconds
    return {"samples_per_sec": workers * batch_size * steps * len(timed) / sum(timed),
            "steps_per_epoch": steps,
            "trainable_params": int(sum(math.prod(tuple(w.shape)) for w in model.trainable_weights)),
            "loss": float(history.history["loss"][-1]), "first_step_at": timer.first_step_at,
            "keras": K.__version__, **({"failed": False} if mode == "mwms-keras3" else {})}


def _horovod_step(model, hvd) -> None:
    """Replace Keras 3's `train_step` of compiled `model` with the same step (keras/src/backend/
    tensorflow/trainer.py) whose gradients are averaged over the workers in one group."""
    import keras
    import tensorflow as tf

    loss_tracker = next(m for m in model.metrics if m.name == "loss")

    def step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = model(x, training=True)
            loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            loss_tracker.update_state(loss, sample_weight=tf.shape(x)[0])
        variables = model.trainable_variables
        grads = hvd.grouped_allreduce(tape.gradient(loss, variables), op=hvd.Average)
        model.optimizer.apply(grads, variables)
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    model.train_step = step


def first_line(error: BaseException) -> str:
    """`Type: message` of `error` on one line, tensor values left out, at most 300 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    text = re.sub(r"numpy= ?array\(.*?\)>", "numpy=...>", text)
    return text if len(text) <= 300 else f"{text[:200]} ... {text[-95:]}"


def _launch(contender: str, argv: list[str], workers: int) -> dict[str, Any]:
    """Start the workers of `mwms`/`mwms-keras3` (TF_CONFIG, one process each) or `horovod`
    (horovodrun) and return worker 0's result."""
    me = [sys.executable, "-m", "benchmarks.contenders", *argv]
    if contender == "horovod":
        launcher = os.path.join(os.path.dirname(sys.executable), "horovodrun")
        out = subprocess.run([launcher, "-np", str(workers), "-H", f"localhost:{workers}", "--gloo", *me],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
        return _result(out.returncode, out.stdout)
    ports = [_free_port() for _ in range(workers)]
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    legacy = "1" if contender == "mwms" else "0"
    procs = []
    for i in range(workers):
        env = dict(os.environ, TF_USE_LEGACY_KERAS=legacy,
                   TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}}))
        procs.append(subprocess.Popen([*me, f"--index={i}"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = _communicate(procs, ATTEMPT_TIMEOUT if contender == "mwms-keras3" else None)
    if outputs is None:  # only an attempt may time out
        return {"failed": True, "error": f"no result within {ATTEMPT_TIMEOUT} s (workers killed)"}
    return _result(max(p.returncode for p in procs), outputs[0] + "".join(outputs[1:]))


def _communicate(procs: list[subprocess.Popen], timeout: Optional[float]) -> Optional[list[str]]:
    """Every process's output; None (all killed) if they have not ended within `timeout` s."""
    deadline = None if timeout is None else time.monotonic() + timeout
    outputs = []
    try:
        for p in procs:
            left = None if deadline is None else max(1.0, deadline - time.monotonic())
            outputs.append(p.communicate(timeout=left)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
            p.communicate()
        return None
    return outputs


def _result(code: int, output: str) -> dict[str, Any]:
    lines = [re.sub(r"^\[\d+\]<stdout>:", "", l) for l in output.splitlines()]
    found = [l for l in lines if l.startswith('{"contender"')]
    if code or not found:
        raise RuntimeError(f"workers failed ({code}):\n{output[-3000:]}")
    return {k: v for k, v in json.loads(found[0]).items() if k not in ("contender", "workers")}


class EpochTimer:
    """Seconds of each epoch (a callback of Keras module `K`, Keras 3's `keras` or `tf_keras`;
    built lazily so that TF loads after pinning)."""

    def __new__(cls, K):
        class _Timer(K.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.seconds: list[float] = []
                self.first_step_at: Optional[float] = None
                self._supports_tf_logs = True  # tf_keras: no per-step conversion of the logs to numpy

            def on_epoch_begin(self, epoch, logs=None):
                self.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                if self.first_step_at is None:
                    self.first_step_at = time.time()

            def on_epoch_end(self, epoch, logs=None):
                self.seconds.append(time.perf_counter() - self.start)

        return _Timer()


def _pin(core_index: int) -> None:
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[core_index % len(cores)]})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""What every benchmark shares: fresh child processes, its own command line, the machine's
description, and the results folder.

Result files are named after the TensorFlow they were measured on (`result_file("overhead.json")`
is `benchmarks/results/overhead-tf221.json` on TF 2.21), so a run does not overwrite the figures
of another TensorFlow: the files without a tag are the TF 2.15 / Keras 2 figures.

Example:
    result = child([python(), "-m", "benchmarks.overhead", "--contender=keras", ...])
    save({"benchmark": "overhead", "command": invocation(), "environment": environment(), ...},
         result_file("overhead.json"))
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
import time
from importlib import metadata
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
CHILD_TIMEOUT = 900


def version(*distributions: str) -> Optional[str]:
    """The installed version of the first of `distributions` that is installed, or None."""
    for name in distributions:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return None


TENSORFLOW = version("tensorflow", "tensorflow-cpu", "tensorflow-intel", "tensorflow-macos") or "0.0"
TAG = "tf" + "".join(TENSORFLOW.split(".")[:2])  # e.g. tf221


def result_file(name: str) -> str:
    """`benchmarks/results/NAME-TAG.EXT` for `name` NAME.EXT: this TensorFlow's result file."""
    base, ext = os.path.splitext(name)
    return os.path.join(RESULTS, f"{base}-{TAG}{ext}")


def child(cmd: list[str], env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run one step in a fresh process (TF quiet, `env` added); its last output line is its
    JSON result (`--prepare` steps print `{}`)."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=CHILD_TIMEOUT)
    if proc.returncode:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    lines = proc.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        raise RuntimeError(f"{shlex.join(cmd)} printed no JSON result:\n{proc.stdout[-3000:]}")
    return json.loads(lines[-1])


def alternate(commands: dict[str, list[str]], rounds: int, unit: str) -> list[dict[str, Any]]:
    """Run every contender's command once per round, in turn, each in a fresh process, so that
    drift of the machine hits all alike; rows of {round, load, CONTENDER: its JSON result}."""
    rows = []
    for r in range(1, rounds + 1):
        row: dict[str, Any] = {"round": r, "load": os.getloadavg()[0]}
        for name, cmd in commands.items():
            started = time.time()
            row[name] = child(cmd)
            row[name]["seconds"] = round(time.time() - started, 1)
            print(f"  round {r}/{rounds} {name:8s}: {row[name][unit]:8.1f} {unit.replace('_per_sec', '/s')} "
                  f"({row[name]['seconds']:.0f}s)", file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def save_mobilenet(path: str, shape: tuple, classes: int) -> None:
    """MobileNetV2 (alpha 0.35, no weights, average pooling) with a `classes`-way softmax head,
    saved as a .keras file: the image benchmarks' base model."""
    import keras

    base = keras.applications.MobileNetV2(alpha=0.35, input_shape=shape, include_top=False,
                                          weights=None, pooling="avg")
    keras.Model(base.inputs, keras.layers.Dense(classes, activation="softmax")(base.output)).save(path)


def python() -> str:
    """This interpreter, relative to the repository root when inside it (e.g. .venv/bin/python)."""
    rel = os.path.relpath(sys.executable, ROOT)
    return sys.executable if rel.startswith("..") else rel


def invocation() -> str:
    """The command that started this benchmark, to print and record beside its figures."""
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    module = spec.name.removesuffix(".__main__") if spec else "benchmarks"
    return shlex.join([python(), "-m", module, *sys.argv[1:]])


def environment() -> dict[str, Any]:
    """Python, CPUs and the versions of TensorFlow, Keras 3, tf_keras (Keras 2) and Horovod."""
    return {"python": platform.python_version(), "cpus": os.cpu_count(), "tensorflow": TENSORFLOW,
            "keras": version("keras"), "tf_keras": version("tf-keras"), "horovod": version("horovod")}


def save(result: dict[str, Any], path: str) -> str:
    """Write `result` as JSON to `path`, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(f"{path}.tmp", path)
    print(f"\nwritten: {os.path.relpath(path)}")
    return path

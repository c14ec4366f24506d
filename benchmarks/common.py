"""What every benchmark shares: fresh child processes, its own command line, the machine's
description, and the results folder.

Example:
    result = child([python(), "-m", "benchmarks.overhead", "--contender=keras", ...])
    save({"benchmark": "overhead", "command": invocation(), "environment": environment(), ...},
         os.path.join(RESULTS, "overhead.json"))
"""
from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
CHILD_TIMEOUT = 900


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
    return {"python": platform.python_version(), "cpus": os.cpu_count(),
            **{p: metadata.version(p) for p in ("tensorflow", "horovod")}}


def save(result: dict[str, Any], path: str) -> str:
    """Write `result` as JSON to `path`, atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        json.dump(result, f, indent=2)
    os.replace(f"{path}.tmp", path)
    print(f"\nwritten: {os.path.relpath(path)}")
    return path

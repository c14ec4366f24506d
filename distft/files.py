"""Files written whole or not at all: a reader sees the old file or the new one, never a part.

Example:
    write_json("runs/a/metrics.json", {"loss": 0.1})
    atomic_write("model.keras", lambda tmp: model.save(tmp), suffix=".keras")
    load_yaml("sweep.yaml")                  # {"epochs": 5, ...}; one error line if it is not one
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable

import yaml

from distft.errors import DistftError


def atomic_write(path: str, write: Callable[[str], object], suffix: str = "") -> None:
    """Call `write(tmp)` on a temporary path beside `path`, then rename it into place."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; others (and containers) read it
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, data: dict, indent: int = 2) -> None:
    def dump(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=indent)

    atomic_write(path, dump)


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML mapping of option names to values."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise DistftError(f"config file {path} does not exist: check --config") from None
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise DistftError(f"config file {path} is not valid YAML{line}: fix its syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DistftError(f"config file {path} must be a mapping of option: value")
    return data

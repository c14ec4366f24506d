"""`horovodrun`, without its per-launch build check.

On every launch Horovod's launcher asks whether its extension was built with Gloo and with
MPI, each time by forking a process that imports TensorFlow and Horovod's ops: seconds of CPU
and of delay before a worker starts, and TensorFlow's start-up lines in the launcher's output.
The answers change only when Horovod is rebuilt, so this runs Horovod's own launcher with them
read from a cache file, keyed by the extension file's path, size and modification time (a
cache that cannot be written or read just means Horovod's own check runs).

Example:
    python -m distft.launch.horovodrun -np 2 -H localhost:2 --gloo python train.py
"""
from __future__ import annotations

import json
import os
import sys
from typing import Callable, Optional

from distft.horovod_install import cache_dir, ops_library, require

CACHE = "horovod-built.json"


def built() -> dict[str, bool]:
    """{"gloo": ..., "mpi": ...}: what Horovod's extension was built with, checked by Horovod's
    own functions once per build of the extension."""
    def check() -> dict[str, bool]:
        from horovod.common import util

        return {"gloo": bool(util.gloo_built()), "mpi": bool(util.mpi_built())}

    return cached(CACHE, check)


def cached(name: str, compute: Callable[[], dict]) -> dict:
    """`compute()`, kept in the cache file `name` for as long as Horovod's extension is not
    rebuilt (keyed by its path, size and modification time).

    Example:
        cached("horovod-built.json", lambda: {"gloo": bool(util.gloo_built())})
    """
    path = ops_library()  # there: the callers call require() first
    st = os.stat(path)
    key = f"{os.path.realpath(path)}:{st.st_size}:{st.st_mtime_ns}"
    cache = os.path.join(cache_dir(), name)
    try:
        with open(cache) as f:
            kept = json.load(f)
        if kept.get("key") == key:
            return kept["built"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    found = compute()
    try:
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        partial = f"{cache}.{os.getpid()}"
        with open(partial, "w") as f:
            json.dump({"key": key, "built": found}, f)
        os.replace(partial, cache)  # atomic: concurrent launches never read half a file
    except OSError:
        pass
    return found


def main(argv: Optional[list[str]] = None) -> int:
    """Run horovodrun with `argv` (default: this process's arguments); its exit status."""
    require()
    from horovod.runner import launch

    found = built()
    launch.gloo_built = lambda verbose=False: found["gloo"]
    launch.mpi_built = lambda verbose=False: found["mpi"]
    sys.argv = ["horovodrun", *(sys.argv[1:] if argv is None else argv)]
    return launch.run_commandline() or 0


if __name__ == "__main__":
    sys.exit(main())

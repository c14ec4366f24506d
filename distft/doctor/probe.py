"""What one host reports to `distft doctor`; run there as `python -m distft.doctor.probe`.

It prints one JSON line (versions, Horovod's built-in ops, network interfaces, the interface it
would use with a TCP listener on its address, the data and output paths, GPUs), then answers the
doctor's requests, a JSON line each on stdin, until stdin closes:
    {"reach": ["10.0.0.3:40011", ...]}  ->  {"reach": {"10.0.0.3:40011": null, or why not}}
    {"measure": "10.0.0.3:40011"}       ->  {"measure": bits per second, or null, "error": ...}

Example:
    python -m distft.doctor.probe --first=node1 --data='shards/*' --output_dir=runs
"""
from __future__ import annotations

import argparse
import glob
import importlib.metadata
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import distft
from distft import horovod_install, log
from distft.doctor import network
from distft.errors import DistftError
from distft.launch.horovodrun import cached

# horovod.tensorflow's NAME_built() functions, and how the report names each.
OPS = {"mpi": "MPI", "gloo": "Gloo", "nccl": "NCCL", "ddl": "DDL", "ccl": "oneCCL", "cuda": "CUDA",
       "rocm": "ROCm"}
OPS_CACHE = "horovod-ops.json"
CHECKED = 1000  # data files opened to check they are readable (the rest are counted only)


def versions() -> dict[str, Optional[str]]:
    """Python's version and the installed TensorFlow's, Keras's and Horovod's (None: not
    installed), read from the packages' metadata without importing them; distft's own."""
    owners = importlib.metadata.packages_distributions()  # tensorflow: tensorflow-cpu, ...
    found: dict[str, Optional[str]] = {"python": platform.python_version()}
    for module in ("tensorflow", "keras", "horovod"):
        try:
            found[module] = importlib.metadata.version(owners[module][0])
        except (KeyError, importlib.metadata.PackageNotFoundError):
            found[module] = None
    found["distft"] = distft.__version__
    return found


def horovod_ops() -> list[str]:
    """The ops Horovod's TensorFlow extension has built in (MPI, Gloo, NCCL, ...), from
    horovod.tensorflow's *_built() functions: once per build of the extension (that import
    takes seconds), then from the cache. Raises DistftError when Horovod cannot run here."""
    def check() -> dict[str, bool]:
        log.quiet_tensorflow()
        hvd = horovod_install.load()
        return {name: bool(getattr(hvd, f"{name}_built")()) for name in OPS}

    horovod_install.require()
    built = cached(OPS_CACHE, check)
    return [label for name, label in OPS.items() if built.get(name)]


def data_files(pattern: str) -> list[str]:
    """The files `pattern` names: a file, a glob, or a folder (every file below it)."""
    found = []
    for match in sorted(glob.glob(os.path.expanduser(pattern))):
        if os.path.isdir(match):
            found += sorted(os.path.join(root, f) for root, _, files in os.walk(match) for f in files)
        elif os.path.isfile(match):
            found.append(match)
    return found


def check_data(pattern: str) -> dict:
    """{"pattern", "files": how many match, "unreadable": ["PATH: why", ...]} (the first CHECKED
    files are opened and a byte read)."""
    files = data_files(pattern)
    unreadable = []
    for path in files[:CHECKED]:
        try:
            with open(path, "rb") as f:
                f.read(1)
        except OSError as e:
            unreadable.append(f"{path}: {e.strerror}")
    return {"pattern": pattern, "files": len(files), "unreadable": unreadable}


def check_output(folder: str) -> dict:
    """{"dir", "error": None when a file can be written in `folder`, else why not}. A temporary
    file is created there and removed. A folder that does not exist yet is not made: its
    nearest existing parent must take a (temporary) folder of the same depth, so that hosts
    sharing the file system check it side by side and nothing is left behind."""
    folder = os.path.abspath(os.path.expanduser(folder))
    if os.path.exists(folder) and not os.path.isdir(folder):
        return {"dir": folder, "error": "a file is there, not a folder"}
    base = folder
    while not os.path.isdir(base):
        base = os.path.dirname(base)
    try:
        if base == folder:
            fd, tmp = tempfile.mkstemp(prefix=".distft-doctor-", dir=folder)
            os.close(fd)
            os.remove(tmp)
        else:
            tmp = tempfile.mkdtemp(prefix=".distft-doctor-", dir=base)
            try:
                os.makedirs(os.path.join(tmp, os.path.relpath(folder, base)))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        error = None
    except OSError as e:
        error = f"{e.strerror}: {e.filename or folder}"
    return {"dir": folder, "error": error}


def gpus() -> list[str]:
    """The GPUs `nvidia-smi -L` lists (none without nvidia-smi): not TensorFlow's view, which
    takes seconds to import."""
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in out.splitlines() if line.startswith("GPU ")]


def report(first: str, interface: Optional[str] = None, data: Optional[str] = None,
           output_dir: Optional[str] = None) -> dict:
    """This host's report, with a listener started on the chosen interface's address.

    Example:
        report("node1", data="shards/*")["interface"]    # "eth0"
    """
    found = network.interfaces()
    name, address, problem = network.interface_for(first, interface, found)
    try:
        ops, ops_error = horovod_ops(), None
    except DistftError as e:
        ops, ops_error = None, str(e)
    return {"host": socket.gethostname(), "python_executable": sys.executable,
            "versions": versions(), "ops": ops, "ops_error": ops_error, "interfaces": found,
            "interface": name, "address": address, "interface_error": problem,
            "listen": network.listen(address) if address and not problem else None,
            "data": check_data(data) if data else None,
            "output": check_output(output_dir) if output_dir else None, "gpus": gpus()}


def answer(request: dict) -> dict:
    """The reply to one of the doctor's requests (see the module's docstring)."""
    if "reach" in request:
        peers = request["reach"]
        with ThreadPoolExecutor(max(1, len(peers))) as pool:
            return {"reach": dict(zip(peers, pool.map(network.reach, peers)))}
    try:
        return {"measure": network.throughput(request["measure"]), "error": None}
    except OSError as e:
        return {"measure": None, "error": str(e) if not isinstance(e, socket.timeout)
                else f"timed out after {network.TIMEOUT:g} s"}


def main(argv: Optional[list[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m distft.doctor.probe")
    parser.add_argument("--first", required=True, help="the first host: the route to it chooses the interface")
    parser.add_argument("--interface")
    parser.add_argument("--data")
    parser.add_argument("--output_dir")
    args = parser.parse_args(argv)
    print(json.dumps(report(args.first, args.interface, args.data, args.output_dir)), flush=True)
    for line in sys.stdin:
        print(json.dumps(answer(json.loads(line))), flush=True)


if __name__ == "__main__":
    main()

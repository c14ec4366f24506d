"""Shared fixtures: real data and a real base model (the demo's), and a runner for real
multi-worker jobs (horovodrun over Gloo or MPI, or distft --np) with a hard time-out."""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

BIN = os.path.dirname(sys.executable)
DISTFT = os.path.join(BIN, "distft")
HOROVODRUN = os.path.join(BIN, "horovodrun")


@dataclass
class Result:
    code: int
    out: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def run(cmd: list[str], timeout: float = 300, cwd: str | None = None, env: dict | None = None) -> Result:
    """Run a command; a hang fails the test (the whole process group is killed)."""
    full_env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                    PYTHONUNBUFFERED="1", **(env or {}))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=cwd, env=full_env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout}s: {' '.join(cmd)}\n{out[-4000:]}")
    return Result(proc.returncode, out)


def horovodrun(args: list[str], np: int = 2, controller: str = "gloo", **kw) -> Result:
    return run([HOROVODRUN, "-np", str(np), "-H", f"localhost:{np}", f"--{controller}",
                DISTFT, *args], **kw)


def distft(args: list[str], **kw) -> Result:
    return run([DISTFT, *args], **kw)


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    """The demo's base model (CNN on digits 0-4) and TFRecord shards of digits 5-9."""
    from distft.demo import make_demo_data

    folder = str(tmp_path_factory.mktemp("demo"))
    paths = make_demo_data(folder)
    paths["folder"] = folder
    return paths

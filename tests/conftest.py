"""Shared fixtures: real data and a real base model (the demo's), and a runner for real
multi-worker jobs (horovodrun over Gloo or MPI, or distft --np) with a hard time-out."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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


def one_line(out: str, prefix: str) -> str:
    """The one line of `out` that contains `prefix` (fails unless there is exactly one)."""
    lines = [l for l in out.splitlines() if prefix in l]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


class Job:
    """A job started in the background, its output collected in a file, for fault tests."""

    def __init__(self, cmd: list[str], log_path: str, cwd: str | None = None):
        self.log_path = log_path
        self.log = open(log_path, "w")
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=env, start_new_session=True)

    @property
    def out(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, text: str, timeout: float = 180) -> None:
        deadline = time.time() + timeout
        while text not in self.out:
            if self.proc.poll() is not None or time.time() > deadline:
                self.kill()
                pytest.fail(f"never saw {text!r}:\n{self.out[-3000:]}")
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"still running after {timeout}s (a hang):\n{self.out[-3000:]}")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def _descends(self, pid: int) -> bool:
        while pid > 1:
            if pid == self.proc.pid:
                return True
            try:
                with open(f"/proc/{pid}/stat") as f:
                    pid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                return False
        return False

    def worker_pid(self, rank: int) -> int:
        """The pid of the worker of `rank` among this job's processes (Gloo or MPI)."""
        keys = (f"HOROVOD_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode())
        for pid in os.listdir("/proc"):
            if not pid.isdigit():
                continue
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
                with open(f"/proc/{pid}/environ", "rb") as f:
                    environ = f.read().split(b"\0")
            except OSError:
                continue
            if b"distft" in cmd and b"horovodrun" not in cmd and any(k in environ for k in keys) \
                    and self._descends(int(pid)):
                return int(pid)
        raise AssertionError(f"no worker of rank {rank} found")

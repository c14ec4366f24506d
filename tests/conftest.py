"""Shared fixtures: real data and a real base model (the demo's), the local Slurm cluster, and a
runner for real multi-worker jobs (horovodrun over Gloo or MPI, or distft --np) with a hard
time-out."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import pytest

# Open MPI's ranks poll busily while they wait in a collective: on this suite's 2 cores, shared by
# 2-4 workers and the other tests, they take the CPU from the very workers they wait for (a
# 2-worker MPI run here: ~1 CPU-s less when idle ranks yield, more under load). Open MPI yields on
# its own only when it knows a node is oversubscribed.
os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")

# In-process tests import TensorFlow as a worker does: its objects then stay out of the garbage
# collector's scans (distft.log.import_tensorflow).
from distft import log  # noqa: E402

log.import_tensorflow()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM = os.path.join(ROOT, "slurm")
BIN = os.path.dirname(sys.executable)
DISTFT = os.path.join(BIN, "distft")
HOROVODRUN = os.path.join(BIN, "horovodrun")
# Horovod's own launcher less its per-launch build check (distft/launch/horovodrun.py), as
# `distft --np` runs it: for the harness launches that run many distft commands at once.
LAUNCHER = [sys.executable, "-m", "distft.launch.horovodrun"]


@dataclass
class Result:
    code: int
    out: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


class Started:
    """A command started in the background, its output going to a temporary file (not a pipe,
    so that several can run side by side); `result()` waits for it, and a hang fails the test
    (the whole process group is killed)."""

    def __init__(self, cmd: list[str], timeout: float = 300, cwd: str | None = None, env: dict | None = None):
        full_env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                        PYTHONUNBUFFERED="1", **(env or {}))
        self.cmd, self.timeout, self.deadline = cmd, timeout, time.time() + timeout
        self.ended: float | None = None  # when poll() first saw it done
        self.log = tempfile.TemporaryFile("w+")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, text=True,
                                     cwd=cwd, env=full_env, start_new_session=True)

    def poll(self) -> bool:
        """Whether it ended (or its time is up)."""
        if self.ended is None and self.proc.poll() is not None:
            self.ended = time.time()
        return self.ended is not None or time.time() > self.deadline

    def result(self) -> Result:
        try:
            self.proc.wait(timeout=max(0.0, self.deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()
            pytest.fail(f"timed out after {self.timeout}s: {' '.join(self.cmd)}\n{self._out()[-4000:]}")
        return Result(self.proc.returncode, self._out())

    def _out(self) -> str:
        self.log.seek(0)
        return self.log.read()


def run(cmd: list[str], timeout: float = 300, cwd: str | None = None, env: dict | None = None) -> Result:
    """Run a command; a hang fails the test (the whole process group is killed)."""
    return Started(cmd, timeout, cwd, env).result()


def horovodrun_command(args: list[str], np: int = 2, controller: str = "gloo",
                       stock: bool = False) -> list[str]:
    """`distft ARGS` on `np` workers under horovodrun: Horovod's own launcher code less its
    per-launch build check (LAUNCHER), or with `stock` the `horovodrun` command a user types."""
    launcher = [HOROVODRUN] if stock else LAUNCHER
    return [*launcher, "-np", str(np), "-H", f"localhost:{np}", f"--{controller}", DISTFT, *args]


def horovodrun(args: list[str], np: int = 2, controller: str = "gloo", stock: bool = False,
               **kw) -> Result:
    return run(horovodrun_command(args, np, controller, stock), **kw)


def distft(args: list[str], **kw) -> Result:
    return run([DISTFT, *args], **kw)


def remove_cgroup(folder: str) -> None:
    """Remove a cgroup a test made, once its processes have left it (as they end)."""
    for _ in range(50):
        try:
            os.rmdir(folder)
            return
        except OSError:
            time.sleep(0.2)


# The test module of user callbacks that jobs load with --import (tests/test_user_callbacks.py).
USER_CALLBACKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "user_callbacks.py")
CLI_RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cli_runner.py")


class SharedLaunch:
    """Several `distft` commands, each as `distft ARGV` would run it, in a 2-worker launch under
    horovodrun (tests/cli_runner.py): the tests of a module assert on the runs of one launch
    instead of starting workers, TensorFlow and Horovod for each. `runs`: a list of
    {"name", "argv", optional "cwd", optional "launch"}. Runs of another `launch` number go to
    another launch, started at the same time (a launch leaves the cores idle much of the time:
    start-up, rank 0 alone, saving); a launch runs its runs one after another, in order."""

    def __init__(self, folder: str, runs: list[dict], timeout: float = 900):
        from cli_runner import segments

        started, launches = time.time(), []
        for number in sorted({r.get("launch", 0) for r in runs}):
            listing = os.path.join(folder, f"runs-{number}.json")
            status = os.path.join(folder, f"status-{number}.json")
            with open(listing, "w") as f:
                json.dump([r for r in runs if r.get("launch", 0) == number], f)
            launches.append((status, Started([*LAUNCHER, "-np", "2", "-H", "localhost:2", "--gloo",
                                              sys.executable, CLI_RUNNER, listing, status], timeout=timeout)))
        results = [(status, launch.result()) for status, launch in launches]
        self.seconds = time.time() - started
        self.status, self.outputs, self.every_rank = {}, {}, {}
        for status, result in results:
            if os.path.exists(status):
                with open(status) as f:
                    self.status.update(json.load(f))
            self.outputs.update(segments(result.out))
            self.every_rank.update(segments(result.out, every_rank=True))
        self.out = "\n".join(result.out for _, result in results)

    def output(self, name: str) -> str:
        """The output of run `name`, which must have ended with exit code 0."""
        code, out = self.ended(name)
        assert code == 0, f"{name}: exit {code}\n{out[-3000:]}"
        return out

    def ended(self, name: str, every_rank: bool = False) -> tuple[int, str]:
        """Run `name`'s exit code and output (rank 0's, or with `every_rank` every rank's lines
        with their `[RANK]<stdout|stderr>:` prefixes)."""
        if name not in self.status:
            pytest.fail(f"the shared launch did not finish {name}:\n{self.out[-4000:]}")
        return self.status[name]["code"], (self.every_rank if every_rank else self.outputs).get(name, "")


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> dict:
    """The demo's base model (CNN on digits 0-4) and TFRecord shards of digits 5-9."""
    from distft.demo import make_demo_data

    folder = str(tmp_path_factory.mktemp("demo"))
    paths = make_demo_data(folder)
    paths["folder"] = folder
    return paths


SLURM_DAEMONS = ("munged", "slurmctld", "slurmd")


def pids(name: str) -> set[int]:
    """The processes of that exact name on this machine (a zombie, exited but not yet reaped,
    does not count)."""
    import psutil

    return {p.pid for p in psutil.process_iter(["name", "status"])
            if p.info["name"] == name and p.info["status"] != psutil.STATUS_ZOMBIE}


def running(name: str) -> bool:
    return bool(pids(name))


@pytest.fixture(scope="session")
def cluster():
    """The real two-node Slurm cluster of slurm/local-cluster.sh, started once for the session
    and brought down at its end (daemons and munge) unless it was already up before."""
    before = {name for name in SLURM_DAEMONS if running(name)}
    result = run(["bash", os.path.join(SLURM, "local-cluster.sh"), "up"], timeout=600)
    assert result.code == 0, f"the local Slurm cluster did not start:\n{result.out}"
    ours = pids("slurmctld")
    yield True
    if before & {"slurmctld", "slurmd"} or pids("slurmctld") != ours:
        return  # someone's cluster (up before, or started again since): left as found
    down = run(["bash", os.path.join(SLURM, "local-cluster.sh"), "down",
                *(["--keep-munge"] if "munged" in before else [])], timeout=120)
    assert down.code == 0, f"the local Slurm cluster did not stop:\n{down.out}"
    left = [name for name in SLURM_DAEMONS if name not in before and running(name)]
    assert not left, f"still running after local-cluster.sh down: {left}\n{down.out}"


# The acceptance command (run from the demo's folder), and the shared runs of it.
ACCEPTANCE = ["train", "--model=base_model.keras", "--data=shards/train-*.tfrecord", "--num_classes=5",
              "--unfreeze=last:2", "--epochs=3"]


@dataclass
class Launch:
    """A finished launch shared between tests: its run folder, output and wall time."""
    run_dir: str
    result: Result
    wall: float


@pytest.fixture(scope="session")
def acceptance(demo_data):
    """`acceptance(how, controller)`: the acceptance command on 2 workers, under horovodrun
    (`how="horovodrun"`) or `distft --np=2` (`how="np"`), over Gloo or MPI; each launched once,
    by the first test that asks for it, and shared by the tests that assert on it."""
    launches: dict[tuple[str, str], Launch] = {}

    def get(how: str, controller: str = "gloo") -> Launch:
        if (how, controller) not in launches:
            folder = demo_data["folder"]
            run_dir = os.path.join(folder, "runs", f"acceptance-{how}-{controller}")
            args = [*ACCEPTANCE, f"--output_dir={run_dir}"]
            started = time.time()
            if how == "horovodrun":
                result = horovodrun(args, controller=controller, stock=True, cwd=folder)
            else:
                result = distft([*args, "--np=2", f"--controller={controller}"], cwd=folder)
            launches[how, controller] = Launch(run_dir, result, time.time() - started)
        return launches[how, controller]

    return get


def one_line(out: str, prefix: str) -> str:
    """The one line of `out` that contains `prefix` (fails unless there is exactly one)."""
    lines = [l for l in out.splitlines() if prefix in l]
    assert len(lines) == 1, out[-3000:]
    return lines[0]


class Job:
    """A job started in the background, its output collected in a file, for fault tests."""

    def __init__(self, cmd: list[str], log_path: str, cwd: str | None = None, env: dict | None = None):
        self.log_path = log_path
        self.log = open(log_path, "w")
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   PYTHONUNBUFFERED="1", **(env or {}))
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env=env, start_new_session=True)

    @property
    def out(self) -> str:
        with open(self.log_path) as f:
            return f.read()

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while text not in self.out:
            if self.proc.poll() is not None or time.time() > deadline:
                self.dump_stacks()
                self.kill()
                pytest.fail(f"never saw {text!r}:\n{self.out[-6000:]}")
            time.sleep(0.2)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.dump_stacks()
            self.kill()
            pytest.fail(f"still running after {timeout}s (a hang):\n{self.out[-6000:]}")

    def dump_stacks(self) -> None:
        """Each live worker's Python stacks into the job's output (SIGQUIT: distft's workers
        print them), for the failure message of a job that hangs."""
        pids = self.worker_pids()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass
        if pids:  # their stacks reach the log
            time.sleep(2)

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
        """The pid of the worker that started as `rank` among this job's processes (Gloo or
        MPI; in elastic mode a reset may have given it another rank since)."""
        found = self.worker_pids(rank)
        if not found:
            raise AssertionError(f"no worker of rank {rank} found")
        return found[0]

    def worker_pids(self, rank: int | None = None) -> list[int]:
        """This job's distft workers (of the rank they started as, if given)."""
        keys = tuple(f"{name}={'' if rank is None else rank}".encode()
                     for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK"))
        matches = (lambda v: v.startswith(keys)) if rank is None else (lambda v: v in keys)
        found = []
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
            if b"distft" in cmd and b"horovodrun" not in cmd and any(map(matches, environ)) \
                    and self._descends(int(pid)):
                found.append(int(pid))
        return found

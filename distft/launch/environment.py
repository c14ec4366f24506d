"""Detect how this process was started and read its rank, size and local rank.

One small class per launcher, each knowing how to recognise itself from the environment,
in the manner of Lightning's cluster environments. This is read *before* Horovod starts,
so that logging, errors and device pinning know the rank early; Horovod's own view
(`hvd.rank()`) is authoritative once it is initialised.

Example:
    env = detect()
    if env.rank == 0:
        print(f"{env.size} workers started by {env.name}{' (elastic)' if env.elastic else ''}")
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, replace

LAUNCHED_AT = "DISTFT_LAUNCHED_AT"  # set by `distft --np` for its workers
# A worker of `distft --np` says the code it exits with on a line of its own, so that the job
# ends with the code of the rank whose error line the launcher prints, not that of a rank which
# failed in turn and exited first.
EXIT_CODE_LINE = "distft: exit code "


def tell_exit_code(code: int) -> None:
    """Tell `distft --np`, if it started this worker, that this worker exits with `code`."""
    if os.environ.get(LAUNCHED_AT):
        sys.stderr.write(f"{EXIT_CODE_LINE}{code}\n")  # one write: mpirun tags each write
        sys.stderr.flush()


def launched_at() -> float:
    """When the job started, as time.time(): `distft --np`'s own start for its workers,
    else this process's start (read from /proc)."""
    if os.environ.get(LAUNCHED_AT):
        return float(os.environ[LAUNCHED_AT])
    with open("/proc/self/stat") as f:  # field 22: start, in clock ticks after boot
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))


def _int(name: str, default: int = 0) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


@dataclass(frozen=True)
class Environment:
    """A single process started directly (no launcher)."""

    name: str = "local"
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    node_rank: int = 0
    elastic: bool = False  # started by an elastic horovodrun: rank and size change on a reset

    @property
    def is_launched(self) -> bool:
        """True when a launcher started this process as one of its workers."""
        return self.name != "local"

    @classmethod
    def detect(cls) -> Environment | None:
        return cls()


class _FromVariables(Environment):
    """A launcher that exports rank, size, local rank, local size and node rank as variables."""

    NAME = ""
    VARS: tuple = ()  # rank, size, local rank, local size, node rank

    @classmethod
    def detect(cls) -> Environment | None:
        rank, size, local_rank, local_size, node_rank = cls.VARS
        if rank not in os.environ or size not in os.environ:
            return None
        return Environment(cls.NAME, _int(rank), _int(size, 1), _int(local_rank),
                           _int(local_size, 1), _int(node_rank))


class HorovodRunEnvironment(_FromVariables):
    """`horovodrun` with the Gloo controller (or Horovod's Python launcher)."""

    NAME = "horovodrun"
    VARS = ("HOROVOD_RANK", "HOROVOD_SIZE", "HOROVOD_LOCAL_RANK", "HOROVOD_LOCAL_SIZE",
            "HOROVOD_CROSS_RANK")

    @classmethod
    def detect(cls) -> Environment | None:
        env = super().detect()
        # Set by horovodrun's elastic driver only (--min-np, --max-np, --host-discovery-script).
        return env and replace(env, elastic=os.environ.get("HOROVOD_ELASTIC") == "1")


class MPIEnvironment(_FromVariables):
    """`mpirun` (Open MPI), also what `horovodrun --mpi` uses underneath."""

    NAME = "mpirun"
    VARS = ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
            "OMPI_COMM_WORLD_LOCAL_SIZE", "OMPI_COMM_WORLD_NODE_RANK")


class SlurmEnvironment(Environment):
    """A task of a Slurm job step started by `srun` (for example `srun --mpi=pmix`)."""

    @classmethod
    def detect(cls) -> Environment | None:
        # The batch script itself also has SLURM_PROCID; only a step started by srun
        # has SLURM_STEP_ID other than the batch step.
        step = os.environ.get("SLURM_STEP_ID", os.environ.get("SLURM_STEPID"))
        if "SLURM_PROCID" not in os.environ or step in (None, "", "batch", "4294967294"):
            return None
        return Environment(
            name="srun",
            rank=_int("SLURM_PROCID"),
            size=_int("SLURM_NTASKS", _int("SLURM_STEP_NUM_TASKS", 1)),
            local_rank=_int("SLURM_LOCALID"),
            local_size=_local_tasks_slurm(),
            node_rank=_int("SLURM_NODEID"),
        )


def _local_tasks_slurm() -> int:
    # SLURM_STEP_TASKS_PER_NODE looks like "2(x3),1"; the entry for our node is by node id.
    spec = os.environ.get("SLURM_STEP_TASKS_PER_NODE") or os.environ.get("SLURM_TASKS_PER_NODE", "1")
    counts: list[int] = []
    for part in spec.split(","):
        number, _, repeat = part.partition("(x")
        counts += [int(number)] * (int(repeat.rstrip(")")) if repeat else 1)
    node = _int("SLURM_NODEID")
    return counts[node] if node < len(counts) else counts[-1]


# Most specific first: horovodrun --mpi also sets OMPI_*, srun --mpi=pmix may set both.
ENVIRONMENTS: tuple[type[Environment], ...] = (
    HorovodRunEnvironment,
    MPIEnvironment,
    SlurmEnvironment,
    Environment,
)


def detect() -> Environment:
    """Return the environment of the first launcher that recognises itself."""
    for cls in ENVIRONMENTS:
        env = cls.detect()
        if env is not None:
            return env
    raise AssertionError("the local environment always matches")

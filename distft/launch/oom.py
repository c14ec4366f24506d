"""Whether the kernel's out-of-memory killer ended a process of this machine's part of a job:
the `oom_kill` counter of a process's memory cgroup, which counts the processes of that cgroup
that any OOM killer ended (the cgroup's own limit, or the whole machine's memory). Workers that
a launcher starts on its machine share its cgroup (a Slurm job step's included).

cgroup v1 keeps it in `memory.oom_control`, v2 in `memory.events` (with the cgroups below).

Example:
    before = oom_kills()
    ...                                  # a worker dies of SIGKILL
    if killed_since(before): ...         # "out of memory"
"""
from __future__ import annotations

import os
from typing import Optional

ROOT = "/sys/fs/cgroup"


def memory_cgroup(pid: str = "self") -> Optional[tuple[str, int]]:
    """(folder, cgroup version) of the memory cgroup of `pid`, or None where none is mounted
    or readable (not Linux, a container without /sys/fs/cgroup)."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return None
    for _, controllers, path in lines:  # v1's memory controller first: hybrid hosts mount both
        folder = os.path.join(ROOT, "memory", path.lstrip("/"))
        if "memory" in controllers.split(",") and os.path.exists(os.path.join(folder, "memory.oom_control")):
            return folder, 1
    for _, controllers, path in lines:
        folder = os.path.join(ROOT, path.lstrip("/"))
        if controllers == "" and os.path.exists(os.path.join(folder, "memory.events")):
            return folder, 2
    return None


def oom_kills(pid: str = "self") -> Optional[int]:
    """Processes of `pid`'s memory cgroup that an OOM killer ended so far, or None if unknown."""
    found = memory_cgroup(pid)
    if found is None:
        return None
    folder, version = found
    try:
        with open(os.path.join(folder, "memory.oom_control" if version == 1 else "memory.events")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def killed_since(before: Optional[int], pid: str = "self") -> bool:
    """Whether an OOM killer ended a process of `pid`'s memory cgroup since it counted `before`."""
    now = oom_kills(pid)
    return before is not None and now is not None and now > before

"""The launcher side of elastic training: horovodrun's elastic options for `distft train --np`.

Horovod's elastic driver (Gloo only) asks a discovery script for the usable hosts; a host whose
worker dies is blacklisted, and the survivors go on while at least `min_np` workers are left.
A fixed `--hosts` list becomes such a script too, so horovodrun always gets one.

Example:
    elastic = Elastic.of(cfg)  # None unless --min_np, --max_np or --host_discovery is given
    with elastic.resolved(cfg.hosts) as ready:
        cmd = ["horovodrun", "-np", "3", *ready.horovodrun_args(), "python", "train.py"]
"""
from __future__ import annotations

import contextlib
import os
import shlex
import tempfile
from dataclasses import dataclass, replace
from typing import Iterator, Optional

from distft.config import STALL_MARGIN
from distft.errors import DistftError


@dataclass(frozen=True)
class Elastic:
    """What `distft train --min_np/--max_np/--host_discovery` asks of horovodrun."""

    min_np: Optional[int] = None
    max_np: Optional[int] = None
    host_discovery: Optional[str] = None
    timeout: Optional[int] = None  # seconds to wait for workers (Horovod's 600 s if None)
    stall_timeout: int = 0  # the stall watchdog's (--stall_timeout), which Gloo's must follow

    @classmethod
    def of(cls, cfg) -> Optional[Elastic]:
        """The elastic options of a TrainConfig for the workers that `--np` starts, checked
        (one error line for options no launch could use), or None for a fixed-size job."""
        if not cfg.elastic:
            return None
        if cfg.np is None:
            raise DistftError("--min_np, --max_np and --host_discovery make an --np job elastic: "
                              "pass --np=N too")
        low = cfg.np if cfg.min_np is None else cfg.min_np
        high = cfg.np if cfg.max_np is None else cfg.max_np
        if not 1 <= low <= cfg.np <= high:
            raise DistftError(f"elastic workers need --min_np <= --np <= --max_np, got {low} <= "
                              f"{cfg.np} <= {high}: pass e.g. --min_np={max(1, cfg.np - 1)}")
        if cfg.controller != "gloo":
            raise DistftError("elastic mode (--min_np/--max_np/--host_discovery) runs on Gloo "
                              "only: pass --controller=gloo")
        if cfg.hosts and cfg.host_discovery:
            raise DistftError("--hosts and --host_discovery exclude each other: pass one")
        if cfg.host_discovery:
            if not os.path.isfile(cfg.host_discovery):
                raise DistftError(f"--host_discovery={cfg.host_discovery} does not exist: pass "
                                  "the path of a script that prints host:slots lines")
            if not os.access(cfg.host_discovery, os.X_OK):
                raise DistftError(f"--host_discovery={cfg.host_discovery} is not executable: "
                                  f"chmod +x {cfg.host_discovery}")
        elif len({h.split(":")[0] for h in (cfg.hosts or "").split(",")}) < 2:
            raise DistftError("elastic mode needs at least 2 hosts (a lost worker takes its whole "
                              "host out of the job): pass --hosts=h1:N,h2:N,... or "
                              "--host_discovery=SCRIPT")
        return cls(cfg.min_np, cfg.max_np, cfg.host_discovery, cfg.elastic_timeout, cfg.stall_timeout)

    @contextlib.contextmanager
    def resolved(self, hosts: Optional[str]) -> Iterator[Elastic]:
        """These options with a discovery script: the user's, or one that prints `hosts`
        (written to a temporary folder that lives as long as the job)."""
        if self.host_discovery:
            yield self
            return
        with tempfile.TemporaryDirectory(prefix="distft-hosts-") as folder:
            yield replace(self, host_discovery=write_discovery_script(hosts or "", folder))

    def horovodrun_args(self) -> list[str]:
        """horovodrun's elastic flags (needs a discovery script: see `resolved`)."""
        args = ["--host-discovery-script", os.path.abspath(self.host_discovery)]
        if self.min_np is not None:
            args += ["--min-np", str(self.min_np)]
        if self.max_np is not None:
            args += ["--max-np", str(self.max_np)]
        if self.timeout is not None:
            args += ["--elastic-timeout", str(self.timeout)]
        # Gloo's time-out bounds the rendezvous after a reset, where the others wait for a
        # joining worker's whole start (a new node takes 10-30 s; a loaded one longer). A lost
        # worker does not wait on it: a survivor whose collective failed shuts its connections
        # down (Worker.break_links), so the survivors blocked on it fail over at once too.
        # A stalled worker is the watchdog's to evict: Gloo's time-out (a collective's too)
        # comes after it.
        wait = max(self.timeout or 600, self.stall_timeout + STALL_MARGIN if self.stall_timeout else 0)
        gloo_timeout = os.environ.get("HOROVOD_GLOO_TIMEOUT_SECONDS", str(wait))
        return args + ["--gloo-timeout-seconds", gloo_timeout]


def write_discovery_script(hosts: str, folder: str) -> str:
    """An executable in `folder` that prints `h1:2,h2:2` as horovodrun's `host:slots` lines."""
    path = os.path.join(folder, "discover_hosts.sh")
    entries = [h.strip() if ":" in h else f"{h.strip()}:1" for h in hosts.split(",") if h.strip()]
    lines = "".join(f"echo {shlex.quote(h)}\n" for h in entries)
    with open(path, "w") as f:
        f.write(f"#!/bin/sh\n{lines}")
    os.chmod(path, 0o755)
    return path

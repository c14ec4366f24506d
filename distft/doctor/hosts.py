"""Which hosts `distft doctor` checks, and its probe on each: started directly on this machine,
through ssh (as horovodrun starts workers: the same Python, in the same folder), or with srun
inside a Slurm allocation; then talked to in JSON lines, every wait bounded.

Example:
    names, slurm = hosts_of("node1:4,node2:4")                  # ["node1", "node2"], False
    probe = Probe("node2", command("node2", slurm, ["--first=node1"]))
    probe.receive(timeout=60)                                     # its report
    probe.send({"measure": "10.0.0.1:40011"})
    probe.receive(timeout=15)                                     # {"measure": 9.4e8, ...}
    probe.close()
"""
from __future__ import annotations

import json
import os
import queue
import shlex
import socket
import subprocess
import sys
import threading
from typing import Optional

from distft.errors import DistftError

SSH_TIMEOUT = 5  # seconds for ssh to connect
# What a remote probe needs from this environment (ssh passes none of it): where distft is
# imported from when it is not installed, and TensorFlow's log level.
PASSED_ON = ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")


class ProbeFailed(Exception):
    """A probe that gave no answer: ssh's or the probe's last error line, or the time waited."""


def hosts_of(hosts: Optional[str]) -> tuple[list[str], bool]:
    """(host names, whether to start the probes with srun): those of `hosts` (horovodrun's
    `h1:2,h2:2`), else the nodes of this Slurm allocation, else localhost."""
    if hosts:
        names = [h.strip().rsplit(":", 1)[0] for h in hosts.split(",") if h.strip()]
        return list(dict.fromkeys(names)), False
    if os.environ.get("SLURM_JOB_NODELIST"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", os.environ["SLURM_JOB_NODELIST"]],
                                 capture_output=True, text=True, check=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError) as e:
            raise DistftError(f"cannot list this Slurm allocation's nodes ({e}): pass --hosts") from None
        return out.split(), True
    return ["localhost"], False


def is_local(host: str) -> bool:
    return host in ("localhost", "127.0.0.1", socket.gethostname(), socket.getfqdn())


def command(host: str, slurm: bool, args: list[str]) -> list[str]:
    """The command line that runs the probe with `args` on `host`."""
    probe = [sys.executable, "-m", "distft.doctor.probe", *args]
    if slurm:
        return ["srun", "--nodes=1", "--ntasks=1", f"--nodelist={host}", "--overlap", "--unbuffered",
                *probe]
    if is_local(host):
        return probe
    env = [f"{k}={os.environ[k]}" for k in PASSED_ON if k in os.environ]
    remote = f"cd {shlex.quote(os.getcwd())} && {shlex.join(['env', *env, *probe])}"
    return ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
            "-o", f"ConnectTimeout={SSH_TIMEOUT}", host, remote]


class Probe:
    """One host's probe process: its JSON lines as they come, its last error line kept."""

    def __init__(self, host: str, cmd: list[str]):
        self.host = host
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     start_new_session=True)
        self.lines: queue.Queue[Optional[str]] = queue.Queue()
        self.errors: list[str] = []
        self._err = threading.Thread(target=self._keep_errors, daemon=True)
        self._err.start()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            if line.startswith("{"):  # a login shell's chatter is not the probe's
                self.lines.put(line)
        self.lines.put(None)

    def _keep_errors(self) -> None:
        for line in self.proc.stderr:
            if line.strip():
                self.errors.append(line.strip())

    def receive(self, timeout: float) -> dict:
        """The probe's next JSON line; ProbeFailed when it ends or says nothing for `timeout` s."""
        try:
            line = self.lines.get(timeout=max(0.0, timeout))
        except queue.Empty:
            raise ProbeFailed(f"no answer within {timeout:.0f} s") from None
        if line is None:
            self._err.join(timeout=2)
            code = self.proc.wait()
            raise ProbeFailed(self.errors[-1] if self.errors else f"the probe exited with code {code}")
        return json.loads(line)

    def send(self, request: dict) -> None:
        try:
            self.proc.stdin.write(json.dumps(request) + "\n")
            self.proc.stdin.flush()
        except OSError:
            pass  # it has ended: receive() says why

    def close(self) -> None:
        """End the probe: its stdin closed, then killed if it lingers."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

"""Start N workers through Horovod's own launcher (`horovodrun`) and relay one clean log.

Example:
    exit_code = spawn(["train", "--config=run.yaml"], np=2, hosts=None, controller="gloo")
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

from distft.errors import DistftError, Stopped

# horovodrun prefixes worker lines: "[1]<stdout>:" (Gloo) or "[1,0]<stdout>:" (MPI).
_PREFIX = re.compile(r"^\[(\d+)(?:,(\d+))?\]<(stdout|stderr)>:")
# What the launcher itself says when a worker fails; our workers already said why.
_LAUNCHER_NOISE = re.compile(r"Traceback|^\s+File |^\s+raise |^\s|RuntimeError: Horovod detected|"
                             r"^Process \d+ exit with status code|^Terminating remaining|"
                             r"^Terminated$|^Process name: |^Exit code: |^Primary job|^mpirun|^-{5,}|^Exception|horovod\.runner")


def horovodrun_command(args: list[str], np: int, hosts: str | None, controller: str) -> list[str]:
    launcher = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    if not os.path.exists(launcher):
        launcher = shutil.which("horovodrun") or "horovodrun"
    return [launcher, "-np", str(np), "-H", hosts or f"localhost:{np}", f"--{controller}",
            sys.executable, "-m", "distft", *args]


def spawn(args: list[str], np: int, hosts: str | None = None, controller: str = "gloo",
          debug: bool = False) -> None:
    """Run `distft ARGS` on `np` workers; raise DistftError if the job fails."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
               PYTHONUNBUFFERED="1")
    if controller == "mpi" and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = horovodrun_command(args, np, hosts, controller)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            text=True, bufsize=1)
    # Forward a stop request: horovodrun (Gloo) relays SIGTERM to its workers, mpirun SIGUSR1.
    relay = signal.SIGUSR1 if controller == "mpi" else signal.SIGTERM
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, lambda *_: proc.send_signal(relay))
    launcher_lines: list[str] = []
    worker_failed = stopped = False
    try:
        for line in proc.stdout:
            m = _PREFIX.match(line)
            if m:
                text = line[m.end():]
                worker_failed |= text.startswith("distft: error:")
                stopped |= text.startswith("distft: stopped:")
                (sys.stderr if m.group(3) == "stderr" else sys.stdout).write(text)
            elif debug or not _LAUNCHER_NOISE.search(line):
                sys.stdout.write(line)
            else:
                launcher_lines.append(line.rstrip())
    except KeyboardInterrupt:
        proc.terminate()
    code = proc.wait()
    if stopped:
        raise Stopped("the workers stopped on a signal; see above", reported=True)
    if code:
        died = [l.rstrip(".") for l in launcher_lines if l.startswith("Process ")]
        detail = "; ".join(died) if died else "see the workers' output above"
        # A worker that reported a DistftError exited 2 (bad input); the launcher says 1.
        raise DistftError(f"a worker failed ({detail}); the job was stopped",
                          exit_code=2 if worker_failed else code, reported=worker_failed)

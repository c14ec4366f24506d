"""Start N workers through Horovod's own launcher (`horovodrun`, less its per-launch build check:
see launch/horovodrun.py) and relay one clean log.

Example:
    spawn(["train", "--config=run.yaml"], np=2, hosts=None, controller="gloo")
    spawn(["train", "--config=run.yaml"], np=3, hosts="n1:1,n2:1,n3:1", elastic=Elastic(min_np=2))
"""
from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import psutil  # Horovod's own dependency; imported now, not inside a signal handler

from distft.errors import DistftError, Stopped
from distft.horovod_install import require
from distft.launch.elastic import Elastic
from distft.launch.environment import EXIT_CODE_LINE, LAUNCHED_AT, launched_at
from distft.launch.oom import killed_since, oom_kills

# horovodrun prefixes worker lines: "[1]<stdout>:" (Gloo) or "[1,0]<stdout>:" (MPI).
_PREFIX = re.compile(r"^\[(\d+)(?:,(\d+))?\]<(stdout|stderr)>:")
# What the launcher itself says when a worker fails; the summary line says it once.
_LAUNCHER_NOISE = re.compile(r"Traceback|^\s+File |^\s+raise |^\s|RuntimeError: Horovod detected|"
                             r"^Terminat|^Killed$|^Process name: |^Exit code: |^Primary job|"
                             r"^mpirun|^-{5,}|^Exception|horovod\.runner|^Process \d+ exit|"
                             r"^a non-zero exit code|^the job to be terminated|^ERROR:root:|"
                             # TensorFlow's C++ start-up lines, from the launcher's own imports
                             r"^WARNING: All log messages before absl|^[IWE]\d{4} [\d:.]+\s+\d+ \S+\.cc:\d+\]")
# A worker's own reaction to a dead peer: Horovod's background loop reporting the lost link.
_WORKER_NOISE = re.compile(r"Horovod background loop uncaught exception|^(Terminated|Killed)$")
# horovodrun's elastic driver giving up when fewer than --min-np workers are left.
_BELOW_MIN = re.compile(r"at least (\d+) Horovod processes\. Timeout after (\d+) seconds")
_TOLD = re.compile(re.escape(EXIT_CODE_LINE) + r"(\d+)")
_TEARDOWN = re.compile(r"^Terminating remaining workers after failure of Process \d+")
_GLOO_EXIT = re.compile(r"^Process (\d+) exit with status code (\d+)")
_MPI_SIGNAL = re.compile(r"process rank (\d+) with PID \d+ on node \S+ exited on signal (\d+)")


def horovodrun_command(args: list[str], np: int, hosts: str | None, controller: str,
                       elastic: Elastic | None = None) -> list[str]:
    """horovodrun's command line for `distft ARGS` on `np` workers; an elastic job's hosts
    come from its discovery script (see `Elastic.resolved`)."""
    where = elastic.horovodrun_args() if elastic else ["-H", hosts or f"localhost:{np}"]
    return [sys.executable, "-m", "distft.launch.horovodrun", "-np", str(np), *where, f"--{controller}",
            sys.executable, "-m", "distft", *args]


def spawn(args: list[str], np: int, hosts: str | None = None, controller: str = "gloo",
          debug: bool = False, elastic: Elastic | None = None) -> None:
    """Run `distft ARGS` on `np` workers; raise DistftError if the job fails.

    Worker lines are relayed without the launcher's prefixes. Error lines are held back to
    the end, so that the one line printed names the cause: a worker that died (killed, out of
    memory) rather than the errors it caused in the others, or else the first worker error.
    An elastic job goes on when a worker dies, and fails only when fewer than its minimum
    are left.
    """
    require()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"),
               PYTHONUNBUFFERED="1", **{LAUNCHED_AT: str(launched_at())})
    if controller == "mpi" and os.geteuid() == 0:
        env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    oom_before = oom_kills()  # this machine's workers share this process's memory cgroup
    with elastic.resolved(hosts) if elastic else contextlib.nullcontext() as ready:
        cmd = horovodrun_command(args, np, hosts, controller, ready)
        # Its own session: a Ctrl-C at the terminal reaches this process alone, which turns it
        # into a stop request, instead of horovodrun tearing the workers down (SIGKILL after 5 s).
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                text=True, bufsize=1, start_new_session=True)
        stop = _StopRelay(proc, relay=signal.SIGUSR1 if controller == "mpi" else signal.SIGTERM)
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(sig, stop.handle)
        log = JobLog(debug)
        for line in proc.stdout:
            log.relay(line)
            if log.teardown and not stop.reaping:
                stop.reap_stopped()
        code = proc.wait()
    if stop.killed:
        raise Stopped("Ctrl-C (SIGINT) twice: the workers were killed at once, without a "
                      "checkpoint; --resume continues from the last one written", exit_code=130)
    log.finish(code, out_of_memory=killed_since(oom_before))


class JobLog:
    """horovodrun's output made one clean log: worker lines without their prefixes, launcher
    noise dropped, and at the end (`finish`) one line for a failed job."""

    def __init__(self, debug: bool = False):
        self.debug = debug
        self.errors: list[str] = []
        self.deaths: list[str] = []
        self.stopped = False
        # horovodrun (Gloo) is stopping the others after a failure: their deaths are its doing
        # (SIGTERM, then SIGKILL 5 s later for a worker in its set-up, which defers a stop).
        self.teardown = False
        self.below_min: tuple[int, int] | None = None  # elastic: (min_np, seconds waited)
        self.told: dict[int, int] = {}  # the exit code each rank said it exits with
        self._error_rank: int | None = None  # the rank of the first error line

    def relay(self, line: str) -> None:
        m = _PREFIX.match(line)
        text = line[m.end():] if m else line
        self.teardown |= bool(_TEARDOWN.match(line))
        death = _death(text)
        if death and not self.teardown:
            self.deaths.append(death)
        below = _BELOW_MIN.search(line)
        if below:
            self.below_min = int(below.group(1)), int(below.group(2))
        rank = int(m.group(2) or m.group(1)) if m else None
        told = _TOLD.match(text) if m else None
        if told:
            self.told[rank] = int(told.group(1))
        elif m and text.startswith("distft: error:"):
            if not self.errors:
                self._error_rank = rank
            self.errors.append(text.rstrip())
        elif m and not (_WORKER_NOISE.search(text) and not self.debug):
            self.stopped |= text.startswith("distft: stopped:")
            (sys.stderr if m.group(3) == "stderr" else sys.stdout).write(text)
        elif self.debug or not (m or _LAUNCHER_NOISE.search(line)):
            sys.stdout.write(line)

    def finish(self, code: int, out_of_memory: bool = False) -> None:
        """Raise the job's outcome for horovodrun's exit code `code`; `out_of_memory`: the
        kernel's OOM killer ended a process of this machine's part of the job."""
        if self.stopped:
            raise Stopped("the workers stopped on a signal; see above", reported=True)
        if not code:
            return
        # The launcher SIGTERMs the survivors once one worker exits (an elastic one, once too
        # few are left): those deaths are consequences.
        killed = [d for d in self.deaths if "SIGTERM" not in d]
        if self.below_min and not self.errors:
            least, waited = self.below_min
            lost = f" ({', '.join(killed)})" if killed else ""
            raise DistftError(f"the job stopped: fewer than --min_np={least} workers left{lost} "
                              f"and no new host within {waited} s; continue from the last "
                              "checkpoint with --resume", exit_code=Stopped.EXIT_CODE)
        if killed or (self.deaths and not self.errors):
            death = (killed or self.deaths)[0]
            if out_of_memory and "SIGKILL" in death:
                death += (f": out of memory (the kernel's OOM killer, on host {socket.gethostname()}); "
                          "give the job more memory or lower --batch_size")
            raise DistftError(f"{death}; the job was stopped", exit_code=code)
        if self.errors:
            print(self.errors[0], file=sys.stderr, flush=True)
            # The code of the rank that said it (2: bad input; 75: resume later), not the
            # launcher's 1 nor that of a rank which failed in turn and exited first.
            raise DistftError(self.errors[0], exit_code=self.told.get(self._error_rank, 2), reported=True)
        raise DistftError("a worker failed (see its output above); the job was stopped",
                          exit_code=code)


class _StopRelay:
    """Turns a signal to `distft --np` into a stop request to the workers on this machine (sent
    to them directly, so the launcher cannot kill them while they write the checkpoint; to the
    launcher, which relays `relay`, when none runs here). Ctrl-C is sent on as SIGINT, which
    workers name in their `stopped:` line; a second Ctrl-C kills the whole job at once."""

    def __init__(self, proc: subprocess.Popen, relay: signal.Signals):
        self.proc, self.relay = proc, relay
        self.interrupts, self.killed, self.reaping = 0, False, False

    def handle(self, signum: int, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                self.kill()
                return
            print("\ndistft: Ctrl-C: the workers stop at their next agreed step and write a "
                  "checkpoint (Ctrl-C again to stop at once)", file=sys.stderr, flush=True)
        workers = _local_workers(self.proc.pid)
        for pid in workers:
            _signal(pid, signum)
        if not workers:
            self.proc.send_signal(self.relay)

    def kill(self) -> None:
        """SIGKILL the launcher and everything it started on this machine."""
        self.killed = True
        for p in self._family():
            _signal(p.pid, signal.SIGKILL)

    def reap_stopped(self) -> None:
        """While the launcher tears the job down, SIGKILL its stopped processes on this machine
        at once: a stopped worker (SIGSTOP, named by the stall watchdog) cannot take the SIGTERM
        that horovodrun sends first, nor can the process horovodrun freezes before killing it,
        and horovodrun waits 5 s for each before its SIGKILL."""
        self.reaping = True

        def reap() -> None:
            while self.proc.poll() is None:
                for p in self._family():
                    try:
                        if p.status() == psutil.STATUS_STOPPED:
                            _signal(p.pid, signal.SIGKILL)
                    except psutil.NoSuchProcess:
                        continue
                time.sleep(0.2)

        threading.Thread(target=reap, name="distft-reaper", daemon=True).start()

    def _family(self) -> list[psutil.Process]:
        """The launcher and everything it started on this machine."""
        try:
            family = [psutil.Process(self.proc.pid)]
            return family + family[0].children(recursive=True)
        except psutil.NoSuchProcess:
            return []


def _local_workers(launcher: int) -> list[int]:
    """Pids of the distft workers (Python processes with a Horovod or Open MPI rank) below
    `launcher` on this machine."""
    found = []
    try:
        children = psutil.Process(launcher).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    for p in children:
        try:
            if p.name().startswith("python") and "distft" in " ".join(p.cmdline()) and \
                    any(k in p.environ() for k in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK")):
                found.append(p.pid)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass


def _death(line: str) -> str | None:
    """'rank N died (...)' when the launcher reports a worker ended by a signal."""
    m = _GLOO_EXIT.search(line)
    if m and int(m.group(2)) > 128:
        rank, sig = m.group(1), int(m.group(2)) - 128
    else:
        m = _MPI_SIGNAL.search(line)
        if not m:
            return None
        rank, sig = m.group(1), int(m.group(2))
    name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else f"signal {sig}"
    return f"rank {rank} died ({name}, exit code {128 + sig})"

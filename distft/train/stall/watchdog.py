"""The stall watchdog (`--stall_timeout`): a rank that keeps the others waiting is named in one
line, and every live rank's Python stack and last phases and collectives go to
`stall-report.txt` in the run folder. A fixed-size job then exits with code 75 (resume later)
from its last checkpoint, which is intact (checkpoints are renamed into place whole); an
elastic job evicts the named rank (SIGKILL, over ssh on another host), so that the others fail
over to their last commit and go on without it.

Rank 0 judges (train/stall/verdict.py) what every rank's heartbeat says, each second; the
other ranks judge rank 0 by its answers, so a stalled rank 0 is named too (by rank 1 first,
the others a little later). Horovod's own stall warning and Gloo's time-out are moved past the
watchdog's (`horovod_settings`; an elastic launch's Gloo time-out in launch/elastic.py), so its
line comes first. Off with --stall_timeout=0 and on one worker.

Example (on every rank; in elastic mode around each attempt):
    worker = Worker.start(threads, horovod=horovod_settings(cfg.stall_timeout))
    with watching(worker, cfg.stall_timeout, RunFolder("runs/a")):
        train()
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator, Optional, TypeVar

from distft import log
from distft.config import STALL_MARGIN
from distft.errors import Stopped
from distft.launch.environment import tell_exit_code
from distft.train.output import RunFolder
from distft.train.runtime import Worker
from distft.train.stall import proc
from distft.train.stall.channel import INTERVAL, Hub, Link, stack
from distft.train.stall.progress import PROGRESS
from distft.train.stall.verdict import RankView, Verdict, judge

REPORT = "stall-report.txt"
ANSWER_WAIT = 5.0  # seconds to wait for the live ranks' stacks, and for the run folder
T = TypeVar("T")


def horovod_settings(timeout: int) -> dict[str, str]:
    """Horovod's settings (for `hvd.init()`) that leave a stall to the watchdog: Gloo's
    collective time-out (30 s by default, whose raw error would end the job first) and
    Horovod's stall warning (60 s) after it. None at --stall_timeout=0."""
    if not timeout:
        return {}
    later = str(timeout + STALL_MARGIN)
    return {"HOROVOD_GLOO_TIMEOUT_SECONDS": later, "HOROVOD_STALL_CHECK_TIME_SECONDS": later}


@contextmanager
def watching(worker: Worker, timeout: int, folder: RunFolder) -> Iterator[None]:
    """The watchdog on this rank for the block (off at `timeout` 0 or alone)."""
    dog = Watchdog.start(worker, timeout, folder) if timeout and worker.size > 1 else None
    try:
        yield
    finally:
        if dog:
            dog.stop()


class Watchdog:
    """One rank's watchdog: its link to rank 0's hub, and the thread that judges (rank 0: every
    rank; the others: rank 0). In elastic mode it evicts the ranks it names."""

    def __init__(self, worker: Worker, timeout: int, folder: RunFolder, hub: Optional[Hub], link: Link,
                 peers: list[tuple[str, str, int]]):
        self.rank, self.timeout, self.folder, self.hub, self.link = worker.rank, timeout, folder, hub, link
        self.peers = peers  # each rank's (node name, host name, pid)
        self.evict = worker.env.elastic
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="distft-stall-watchdog", daemon=True)
        self._thread.start()

    @classmethod
    def start(cls, worker: Worker, timeout: int, folder: RunFolder) -> Optional[Watchdog]:
        """Rank 0's hub up, every rank linked to it (its address travels by Horovod, while
        that still works); None, with a warning, if a rank cannot reach it."""
        hub = Hub() if worker.rank == 0 else None
        address = tuple(worker.broadcast((worker.address, hub.port) if hub else None))
        peers = worker.gather((worker.node_name, socket.gethostname(), os.getpid()))
        link, error = None, None
        try:
            link = Link(address, worker.rank, _beat, on_exit=_exit)
        except OSError as e:
            error = f"rank {worker.rank} cannot reach rank 0 at {address[0]}:{address[1]} ({e})"
        errors = [e for e in worker.gather(error) if e]
        if errors:
            log.warning("no stall watchdog (--stall_timeout): %s", errors[0])
            for end in (link, hub):
                if end:
                    end.close()
            return None
        return cls(worker, timeout, folder, hub, link, peers)

    def stop(self) -> None:
        """This rank's run ended: leave the hub (rank 0: close it)."""
        self._stop.set()
        self._thread.join()
        self.link.close()
        if self.hub:
            self.hub.close()

    def _watch(self) -> None:
        # Rank 0 names a silent rank first (for a lost link between two nodes, each side finds
        # the other silent: rank 0's view, which sees every rank, is the one to give); then
        # rank 1 names a stalled rank 0, the next ranks a little later.
        late = self.timeout + 2 * INTERVAL * self.rank
        while not self._stop.wait(INTERVAL):
            if self.hub:
                views = [self._view(rank, *self.hub.seen(rank)) for rank in range(len(self.peers))
                         if rank not in self.hub.left]
                verdict = judge(views, self.timeout)
            else:
                silent = time.monotonic() - self.link.answered
                if silent <= late:
                    continue
                last = {"phase": self.link.hub_phase} if self.link.hub_phase else {}
                views = [self._view(0, last, silent, silent), self._view(self.rank, _beat(), 0, 0)]
                verdict = judge(views[:1], self.timeout)
            if verdict:
                self._give(verdict, views)
                return

    def _view(self, rank: int, beat: dict, silent: float, still: float) -> RankView:
        node, host, pid = self.peers[rank]
        # Its process state only where it runs here (the lab's nodes share one host name).
        here = (node, host) == self.peers[self.rank][:2] and silent > 2 * INTERVAL
        return RankView(rank, node, pid, silent, still, beat, proc.state(pid) if here else None)

    def _give(self, verdict: Verdict, views: list[RankView]) -> None:
        """Name the stalled rank(s) and write the report; then evict them (elastic mode, when
        others are left), or tell the live ranks to exit and exit 75."""
        live = [v.rank for v in views if v.silent <= self.timeout]
        stacks = self._stacks(live)
        report = _within(ANSWER_WAIT, lambda: self._report(verdict, views, stacks),
                         f"no {REPORT}: the run folder {self.folder.path} does not answer")
        if self.evict and set(verdict.ranks) < {v.rank for v in views}:
            log.warning("%s; evicted: the others go on from their last commit; %s", verdict.line, report)
            failed = [why for why in map(self._kill, verdict.ranks) if why]
            if not failed:
                return
            log.warning("could not evict: %s", "; ".join(failed))
        hint = _within(ANSWER_WAIT, self._resume_hint, "the run folder does not answer, so which "
                       "checkpoint is intact is unknown; run the same command with --resume")
        tell_exit_code(Stopped.EXIT_CODE)
        print(f"distft: error: {verdict.line}; {hint}; {report}", file=sys.stderr, flush=True)
        others = [r for r in live if r != self.rank]
        if self.hub and others:  # they leave quietly, not with Horovod's error at this exit
            self.hub.ask(others, "exit")
            time.sleep(2 * INTERVAL)  # their next heartbeat
        _exit()

    def _kill(self, rank: int) -> Optional[str]:
        """SIGKILL `rank`'s process, here or over ssh on its node; why not, if it failed."""
        node, host, pid = self.peers[rank]
        if host == socket.gethostname():  # this host (the lab's nodes share one, and its pids)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # gone already
            except OSError as e:
                return f"kill {pid} on {host}: {e}"
            return None
        try:
            done = subprocess.run(["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", node,
                                   "kill", "-KILL", str(pid)], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"ssh {node} kill -KILL {pid}: {e}"
        return f"ssh {node} kill -KILL {pid}: {done.stderr.strip()}" if done.returncode else None

    def _stacks(self, live: list[int]) -> dict[int, str]:
        """Each live rank's Python stack (all threads); rank 0 asks over the hub."""
        if not self.hub:
            return {self.rank: stack()}
        self.hub.ask(live, "stack")
        deadline = time.monotonic() + ANSWER_WAIT
        while time.monotonic() < deadline and not set(live) <= set(self.hub.stacks):
            time.sleep(0.1)
        return dict(self.hub.stacks)

    def _resume_hint(self) -> str:
        store = self.folder.checkpoints
        latest = store.latest()
        then = f" to continue from {latest[1].position.next_step()}" if latest else ""
        return f"{store.intact()}; run the same command with --resume{then}"

    def _report(self, verdict: Verdict, views: list[RankView], stacks: dict[int, str]) -> str:
        """Write stall-report.txt; the line's mention of it."""
        path = self.folder.file(REPORT)
        parts = [f"distft stall report, {time.strftime('%Y-%m-%d %H:%M:%S')}, written by rank "
                 f"{self.rank} (--stall_timeout={self.timeout})", "", verdict.line]
        for v in views:
            beat = v.beat
            parts += ["", f"== {v.who}: last heartbeat {v.silent:.1f} s ago, progress last moved "
                          f"{v.still:.1f} s ago{f', {v.state}' if v.state else ''}",
                      f"phase: {v.phase}" + (f" ({beat['read']})" if beat.get("read") else ""),
                      f"last train step: {beat.get('last_step') or 'none'}",
                      f"last phases (oldest first): {' > '.join(beat.get('phases', [])) or 'unknown'}",
                      "last collectives (oldest first):",
                      *[f"  #{seq} {name}" for seq, name in beat.get("collectives", [])],
                      "Python stack:" if v.rank in stacks else "Python stack: none (it did not answer)",
                      stacks.get(v.rank, "").rstrip()]
        os.makedirs(self.folder.path, exist_ok=True)
        with open(path, "w") as f:
            f.write("\n".join(parts) + "\n")
        return f"every live rank's stack and last collectives are in {path}"


def _beat() -> dict:
    """This rank's heartbeat: its progress, and the file it is blocked reading, if any."""
    beat = PROGRESS.snapshot()
    beat["read"] = proc.blocked_read()
    return beat


def _exit() -> None:
    """Leave at once with exit code 75 (resume later): the main thread may be blocked in a
    collective that never returns."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(Stopped.EXIT_CODE)


def _within(seconds: float, fn: Callable[[], T], otherwise: T) -> T:
    """`fn()`, or `otherwise` if it does not return within `seconds` (a hung file system)."""
    result: list = []
    done = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    done.start()
    done.join(seconds)
    return result[0] if result else otherwise

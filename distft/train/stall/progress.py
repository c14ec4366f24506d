"""This rank's progress, recorded where it happens, for the stall watchdog to report: the phase
it is in (a train step, a callback's epoch end, an `agree`), a counter that moves with every
phase and step, and the Python-level collectives it entered, numbered in order (the same
numbers on every rank while the ranks take the same path).

Recording is a few attribute writes: no host sync, and no formatting per step.

Example:
    from distft.train.stall.progress import PROGRESS
    with PROGRESS.phase("callback Validation.on_epoch_end"):
        with PROGRESS.collective("gather from RankHealth.on_epoch_end"):
            hvd.allgather_object(x)
    PROGRESS.step(epoch=1, batch=37)      # in train step 38 of epoch 2 (its gradient allreduce)
    PROGRESS.snapshot()["phase"]          # "train step 38 of epoch 2"
"""
from __future__ import annotations

import os
import sys
import threading
import time
from collections import deque
from contextlib import contextmanager
from typing import Any, Iterator, Optional

HISTORY = 20  # phases and collectives kept for the stall report
HOROVOD = f"{os.sep}horovod{os.sep}"  # in the path of Horovod's own Python files
# Seconds without a move before a heartbeat looks into the main thread's frames for a collective
# of the user's own code: reading another thread's frames (sys._current_frames) while it runs
# Python is not free of risk (a full test run once saw a general protection fault in libpython
# in a worker thread), and a rank waiting in such a collective does not move.
STILL = 2.0


class Progress:
    """One process's (one rank's) progress; written by the main thread, read by the watchdog's."""

    def __init__(self, history: int = HISTORY):
        self.moves = 0  # grows with every phase, step and collective
        self.seq = 0  # Python-level collectives entered so far
        self._phase = "start-up"
        self._step: Optional[tuple[int, int]] = None  # (epoch, batch) of the last train step
        self._in_step = False
        self._inside: Optional[tuple[int, str]] = None  # the collective (seq, name) waited in
        self._phases: deque[str] = deque([self._phase], maxlen=history)
        self._collectives: deque[tuple[int, str]] = deque(maxlen=history)
        self._lock = threading.Lock()  # the histories, against the reader's copy
        self._main = threading.main_thread().ident  # the thread that trains
        self._seen: tuple[int, float] = (0, time.monotonic())  # (moves, when a snapshot saw them change)

    def enter(self, name: str) -> None:
        """This rank is now in phase `name` (out of any train step)."""
        self._phase, self._in_step = name, False
        self.moves += 1

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """In phase `name` for the block (kept in the history), then back in the phase before it."""
        before = self._phase
        with self._lock:
            self._phases.append(name)
        self.enter(name)
        try:
            yield
        finally:
            self.enter(before)

    def step(self, epoch: int, batch: int) -> None:
        """In the train step of `batch` (0-based) of `epoch`: its gradient allreduce waits for
        every rank."""
        self._step, self._in_step = (epoch, batch), True
        self.moves += 1

    @contextmanager
    def collective(self, name: str) -> Iterator[None]:
        """Inside the Horovod collective `name` (its number: `seq`) for the block."""
        with self._lock:
            self.seq += 1
            self._collectives.append((self.seq, name))
        self._inside = (self.seq, name)
        self.moves += 1
        try:
            yield
        finally:
            self._inside = None
            self.moves += 1

    def snapshot(self) -> dict[str, Any]:
        """What a heartbeat carries: where this rank is, whether it waits for the others there
        (`waiting`: in a collective or a train step), and the histories, oldest first."""
        inside, step, in_step = self._inside, self._step, self._in_step
        with self._lock:
            phases, collectives = list(self._phases), [list(c) for c in self._collectives]
        now = time.monotonic()
        if self._seen[0] != self.moves:
            self._seen = (self.moves, now)
        # A collective of the user's own code (a callback's)?
        if not inside and not in_step and now - self._seen[1] > STILL:
            call = horovod_call(self._main)
            inside = (None, f"Horovod {call}") if call else None
        if inside and inside[0] is None:
            where = f"{inside[1]} (not one of distft's collectives; in {self._phase})"
        elif inside:
            where = f"collective #{inside[0]} {inside[1]}"
        elif in_step and step:
            where = f"train step {step[1] + 1} of epoch {step[0] + 1}"
        else:
            where = self._phase
        return {"phase": where, "waiting": bool(inside) or in_step, "moves": self.moves,
                "seq": self.seq, "collective": list(inside) if inside else None,
                "last_step": f"epoch {step[0] + 1} step {step[1] + 1}" if step else None,
                "phases": phases, "collectives": collectives}


def horovod_call(thread: int) -> Optional[str]:
    """The Horovod function that `thread` is in, with the line that called it (e.g. "allreduce
    from callbacks.py:31 in on_epoch_end"), or None: a collective distft did not enter itself.
    Inside a train step Horovod's ops run in TensorFlow's graph, not in Python frames."""
    frame, found = sys._current_frames().get(thread), None
    while frame is not None:  # from the innermost frame out
        if HOROVOD in frame.f_code.co_filename:
            found = frame
        elif found is not None:
            code = frame.f_code
            return f"{found.f_code.co_name} from {os.path.basename(code.co_filename)}:{frame.f_lineno} in {code.co_name}"
        frame = frame.f_back
    return None


PROGRESS = Progress()  # this process's: one rank a process

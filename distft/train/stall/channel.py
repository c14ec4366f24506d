"""The watchdog's side channel: plain TCP, no Horovod (whose collectives a stall blocks).

Rank 0 runs a `Hub` (a small server in daemon threads); every rank, rank 0 included, keeps a
`Link` to it that sends a heartbeat every `interval` seconds (one JSON line) and reads the
answer: rank 0's phase, with nothing else, a request for this rank's Python stack (every
thread's, by faulthandler), or the order to exit. The hub keeps each rank's last heartbeat, when
it came and when that rank's progress last moved; a link keeps when the hub last answered, and
rank 0's phase then.

Example:
    hub = Hub()                                         # rank 0
    link = Link(("10.0.0.1", hub.port), rank=1, beat=PROGRESS.snapshot, on_exit=lambda: os._exit(75))
    hub.seen(1)        # (its last heartbeat, seconds since it came, seconds since its progress moved)
    hub.ask([1], "stack"); hub.stacks[1]
"""
from __future__ import annotations

import faulthandler
import json
import socket
import socketserver
import tempfile
import threading
import time
from typing import Any, Callable, Iterable, Optional

INTERVAL = 1.0  # seconds between heartbeats


def stack() -> str:
    """Every thread's Python stack in this process, as faulthandler writes it."""
    with tempfile.TemporaryFile("w+") as f:
        faulthandler.dump_traceback(f, all_threads=True)
        f.seek(0)
        return f.read()


class Hub:
    """Rank 0's end: every rank's heartbeats in, requests out (one per rank, sent as the answer
    to its next heartbeat)."""

    def __init__(self):
        self.started = time.monotonic()
        self.beats: dict[int, tuple[dict, float, float]] = {}  # rank: (beat, came, moved)
        self.stacks: dict[int, str] = {}
        self.left: set[int] = set()  # ranks that ended their run
        self._asked: dict[int, str] = {}
        self._lock = threading.Lock()
        hub = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    for line in self.rfile:
                        self.wfile.write((json.dumps(hub._heard(json.loads(line))) + "\n").encode())
                except (OSError, ValueError):  # the rank ended mid-line (its socket reset): no beats
                    pass

        self._server = socketserver.ThreadingTCPServer(("", 0), Handler, bind_and_activate=False)
        self._server.daemon_threads = True
        self._server.allow_reuse_address = True
        self._server.server_bind()
        self._server.server_activate()
        threading.Thread(target=self._server.serve_forever, name="distft-stall-hub", daemon=True).start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def _heard(self, message: dict[str, Any]) -> dict[str, Any]:
        rank, now = message["rank"], time.monotonic()
        with self._lock:
            if message.get("left"):
                self.left.add(rank)
            if "stack" in message:
                self.stacks[rank] = message["stack"]
            beat = message["beat"]
            _, _, moved = self.beats.get(rank, ({}, now, now))
            if rank not in self.beats or self.beats[rank][0].get("moves") != beat.get("moves"):
                moved = now
            self.beats[rank] = (beat, now, moved)
            return {"do": self._asked.pop(rank, None), "phase": self.beats.get(0, ({},))[0].get("phase")}

    def seen(self, rank: int) -> tuple[dict, float, float]:
        """`rank`'s last heartbeat ({} if none yet), seconds since it came and since its
        progress moved (since the hub started, before the first)."""
        now = time.monotonic()
        with self._lock:
            beat, came, moved = self.beats.get(rank, ({}, self.started, self.started))
        return beat, now - came, now - moved

    def ask(self, ranks: Iterable[int], what: str) -> None:
        """Ask each of `ranks` for `what` ("stack" or "exit") in answer to its next heartbeat."""
        with self._lock:
            self._asked.update({rank: what for rank in ranks})

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class Link:
    """A rank's end: a heartbeat (`beat()`) every `interval` seconds to the hub at `address`;
    a stack sent when asked; `on_exit()` when told to exit. `answered`: when the hub last
    answered (time.monotonic()), `hub_phase`: rank 0's phase then."""

    def __init__(self, address: tuple[str, int], rank: int, beat: Callable[[], dict],
                 on_exit: Callable[[], None], interval: float = INTERVAL):
        self.address, self.rank, self.beat, self.on_exit = address, rank, beat, on_exit
        self.interval = interval
        self.answered = time.monotonic()
        self.hub_phase: Optional[str] = None
        self._sock: Optional[socket.socket] = None
        self._buffer = b""
        self._stop = threading.Event()
        self._connect()  # at start-up: an unreachable hub is known at once (OSError)
        self._thread = threading.Thread(target=self._run, name="distft-stall-link", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Tell the hub this rank's run has ended, and stop."""
        self._stop.set()
        self._thread.join()
        if self._sock is None:  # the hub went first (its rank ended): nobody to tell
            return
        try:
            self._send({"left": True})
        except OSError:
            pass
        self._sock.close()

    def _connect(self) -> None:
        self._sock = socket.create_connection(self.address, timeout=self.interval)
        self._buffer = b""

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._sock is None:
                    self._connect()
                self._send({})
                answer = self._answer()
                if answer == "stack":
                    self._send({"stack": stack()})
                    self._answer()
                elif answer == "exit":
                    self.on_exit()
            except OSError:  # the hub is gone or unreachable: try again at the next beat
                if self._sock:
                    self._sock.close()
                self._sock = None
            self._stop.wait(self.interval)

    def _send(self, extra: dict[str, Any]) -> None:
        message = {"rank": self.rank, "beat": self.beat(), **extra}
        self._sock.sendall((json.dumps(message) + "\n").encode())

    def _answer(self) -> Optional[str]:
        """The hub's answer to the last heartbeat (a late one counts), None if none within the
        interval."""
        while b"\n" not in self._buffer:
            try:
                data = self._sock.recv(65536)
            except socket.timeout:
                return None
            if not data:
                raise ConnectionError("the hub closed the link")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        answer = json.loads(line)
        self.answered, self.hub_phase = time.monotonic(), answer["phase"]
        return answer["do"]

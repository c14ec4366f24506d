"""The network part of `distft doctor`: which interface a host would use, a TCP listener that
peers connect to, the connection and throughput checks, and which pairs measure when.

Every connect and read has a timeout (TIMEOUT), so a down link is named, never waited on.

Example:
    interface_for("node1", None)          # ("eth0", "10.0.0.2", None): routes to node1
    server = listen("10.0.0.2")            # "10.0.0.2:41235", answered in a thread
    reach("10.0.0.3:40011")                # None, or why it cannot connect
    throughput("10.0.0.3:40011")           # 9.4e8 (bits per second, one TCP stream)
    rounds(4)                              # [[(0, 3), (1, 2)], [(0, 2), (3, 1)], [(0, 1), (2, 3)]]
"""
from __future__ import annotations

import os
import socket
import threading
import time
from typing import Optional

import psutil  # Horovod's own dependency

TIMEOUT = 3.0  # seconds for a connect, and between two reads of one connection
MOST_BYTES = 32 << 20  # a throughput test's most: 0.27 s at 1 Gbit/s
BUDGET = 1.0  # seconds a throughput test sends for at most
# The sender's buffer is kept small, so that on a slow link the bytes still queued when the
# budget is spent drain quickly (1 MiB: 0.4 s at 20 Mbit/s).
SEND_BUFFER = 1 << 20


def interfaces() -> dict[str, dict]:
    """This host's network interfaces: {name: {"addresses": [IPv4, ...], "up": bool,
    "speed_mbit": the kernel's nominal rate (/sys/class/net/IF/speed) or None}}."""
    stats = psutil.net_if_stats()
    found = {}
    for name, addrs in psutil.net_if_addrs().items():
        found[name] = {"addresses": [a.address for a in addrs if a.family == socket.AF_INET],
                       "up": bool(stats[name].isup) if name in stats else False,
                       "speed_mbit": nominal_mbit(name)}
    return found


def nominal_mbit(name: str) -> Optional[int]:
    """The link rate the kernel reports for interface `name` in Mbit/s; None when it reports
    none (-1 or EINVAL) and for virtual interfaces (no /sys/class/net/IF/device: veths,
    bridges, loopback), whose rate is made up (a veth says 10000)."""
    if not os.path.exists(f"/sys/class/net/{name}/device"):
        return None
    try:
        with open(f"/sys/class/net/{name}/speed") as f:
            speed = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return speed if speed > 0 else None


def interface_for(first_host: str, name: Optional[str],
                  found: Optional[dict[str, dict]] = None) -> tuple[Optional[str], Optional[str], Optional[str]]:
    """(interface, its address, problem): `name` when given, else the interface holding the
    address this host's traffic to `first_host` leaves from. The problem (None when there is
    none) says what is wrong and the fix."""
    found = interfaces() if found is None else found
    if name:
        if name not in found:
            return None, None, (f"--network_interface={name} is missing here (interfaces: "
                                f"{', '.join(sorted(found))}): pass one that every host has")
        if not found[name]["addresses"]:
            return name, None, f"interface {name} has no IPv4 address: give it one, or pass another"
        return name, found[name]["addresses"][0], None
    try:
        target = socket.gethostbyname(first_host)
    except OSError as e:
        return None, None, (f"the first host's name {first_host} does not resolve here "
                            f"({e.strerror or e}): add it to DNS or /etc/hosts")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((target, 9))  # UDP: the kernel picks the route, nothing is sent
            source = s.getsockname()[0]
    except OSError as e:
        down = [n for n, i in found.items() if not i["up"] and i["addresses"]]
        return None, None, (f"unreachable: no route to {first_host} ({e.strerror or e})"
                            f"{'; down here: ' + ', '.join(down) if down else ''}: bring its link "
                            "up (ip link set IF up), or pass --network_interface")
    for iface, info in found.items():
        if source in info["addresses"]:
            return iface, source, None
    return None, source, f"the address {source} that routes to {first_host} is on no interface"


def listen(address: str) -> str:
    """Answer throughput tests on `address` (a port of the kernel's choosing) in a daemon
    thread: read until the peer stops sending, then send one byte back. Returns "address:port"."""
    server = socket.create_server((address, 0))

    def answer(conn: socket.socket) -> None:
        with conn:
            conn.settimeout(TIMEOUT)
            try:
                while conn.recv(1 << 16):
                    pass
                conn.sendall(b"k")
            except OSError:
                pass

    def serve() -> None:
        while True:
            conn, _ = server.accept()
            threading.Thread(target=answer, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, name="distft-doctor-listener", daemon=True).start()
    return f"{address}:{server.getsockname()[1]}"


def _split(peer: str) -> tuple[str, int]:
    host, _, port = peer.rpartition(":")
    return host, int(port)


def reach(peer: str) -> Optional[str]:
    """None when a TCP connection to `peer` ("address:port") opens within TIMEOUT, else why not."""
    try:
        socket.create_connection(_split(peer), timeout=TIMEOUT).close()
        return None
    except socket.timeout:
        return f"timed out after {TIMEOUT:g} s"
    except OSError as e:
        return e.strerror or str(e)


def throughput(peer: str) -> float:
    """Bits per second sent to `peer` over one TCP stream: MOST_BYTES, or what BUDGET seconds
    send, timed until the peer has read them all. Raises OSError when the link fails."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        s.settimeout(TIMEOUT)
        s.connect(_split(peer))
        chunk, sent = bytes(1 << 16), 0
        start = time.perf_counter()
        while sent < MOST_BYTES and time.perf_counter() - start < BUDGET:
            sent += s.send(chunk)
        s.shutdown(socket.SHUT_WR)
        if s.recv(1) != b"k":
            raise OSError(f"{peer} closed the connection before reading all")
        return sent * 8 / (time.perf_counter() - start)


def rounds(n: int) -> list[list[tuple[int, int]]]:
    """Every pair of `n` hosts once, in rounds of pairs that share no host (a round-robin
    tournament), so that tests run side by side without sharing a link: n - 1 rounds."""
    order: list[Optional[int]] = list(range(n)) + ([None] if n % 2 else [])
    m, found = len(order), []
    for _ in range(m - 1):
        found.append([(order[i], order[m - 1 - i]) for i in range(m // 2)
                      if order[i] is not None and order[m - 1 - i] is not None])
        order = [order[0], order[-1], *order[1:-1]]
    return found

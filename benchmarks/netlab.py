"""An emulated cluster on one machine: N "nodes" as Linux network namespaces, each joined by a
veth pair to a bridge in a switch namespace, every link shaped with `tc`: a token bucket (`tbf`)
for the rate and, where the kernel has it, `netem` for the delay (kernels built without netem,
as this project's VM, get the rate only: `Lab.delay_applied` says which). Needs root,
iproute2 (`ip`, `tc`) and `taskset`.

Names and addresses are all the lab's own: namespaces `distftlab-switch` and
`distftlab-node1..N`, bridge `distftlab-br`, switch ports `distftlab-pK`, and in every node one
interface `distftlab-eth` (the same name everywhere, as Horovod's common interface) with address
10.77.0.K/24, and a hosts file (/etc/netns/distftlab-nodeK/hosts) naming the nodes
`distftlab-nodeK`. Each direction of a link is shaped on its sending side (the node's interface and
its switch port) with half the delay, so a packet from node to node is delayed by `delay_ms`
once and limited to `rate` both ways. Leaving the `with` block (also on an error or Ctrl-C)
kills what still runs in the namespaces and deletes them, which removes their veths, the bridge
and the qdiscs. One lab runs at a time on a machine (the names are fixed): another `Lab` waits
on a lock for it to end.

Example (as root):
    with Lab(nodes=2, rate="1gbit") as lab:
        subprocess.run([*lab.run_in(2), "hostname", "-I"])      # 10.77.0.2
        lab.sent_bytes()                                         # per node: bytes sent on its link
        lab.delay_applied                                        # False where netem is missing
"""
from __future__ import annotations

import fcntl
import glob
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
from typing import Optional

PREFIX = "distftlab-"
SWITCH = PREFIX + "switch"
BRIDGE = PREFIX + "br"
IFACE = PREFIX + "eth"  # every node's link, the lab's network interface for Horovod and MPI
SUBNET = "10.77.0"
ETC = "/etc/netns"  # per-namespace files that `ip netns exec` mounts over /etc
# One lab at a time on a machine (its names are fixed): a second waits for the first to end.
LOCK = "/run/distftlab.lock"
# A fake `ssh HOST COMMAND` for horovodrun and mpirun: runs COMMAND in HOST's namespace, pinned
# to its core. Options before and after HOST (-o X, -p N, -i F, -x, ...; OpenSSH takes both,
# and horovodrun puts -o ConnectTimeout=N after HOST) are skipped.
SSH = """#!/bin/sh
host=
while [ $# -gt 0 ]; do
  case "$1" in
    -o|-p|-i|-l|-F) shift 2;;
    -*) shift;;
    *) if [ -n "$host" ]; then break; fi; host=$1; shift;;
  esac
done
case "$host" in
{cases}
  *) echo "distftlab ssh: unknown host $host" >&2; exit 255;;
esac
exec ip netns exec "$ns" taskset -c "$core" sh -c "$*"
"""


class LabError(RuntimeError):
    """The lab cannot run here (not root, no iproute2) or a command building it failed."""


def check() -> None:
    """Raise LabError (one line) unless this process is root and `ip` and `tc` are installed."""
    if os.geteuid() != 0:
        raise LabError("the cluster lab needs root (network namespaces and tc): run it as root")
    missing = [tool for tool in ("ip", "tc", "taskset") if not shutil.which(tool)]
    if missing:
        raise LabError(f"the cluster lab needs {' and '.join(missing)}: install iproute2 and util-linux")


def sh(*cmd: str) -> str:
    """Run one command; its output, or LabError with its error."""
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if done.returncode:
        raise LabError(f"{' '.join(cmd)}: {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    """The lab's namespaces that exist now (from this run or a killed one)."""
    listed = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True).stdout
    return [line.split()[0] for line in listed.splitlines() if line.startswith(PREFIX)]


def remove() -> list[str]:
    """Kill every process inside the lab's namespaces (only the lab starts any) and delete the
    namespaces: their veths, bridge and qdiscs go with them. Returns the namespaces removed."""
    found = namespaces()
    for ns in found:
        pids = subprocess.run(["ip", "netns", "pids", ns], stdout=subprocess.PIPE, text=True).stdout
        for pid in pids.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
    for ns in found:
        subprocess.run(["ip", "netns", "delete", ns], stderr=subprocess.DEVNULL)
    for folder in glob.glob(os.path.join(ETC, PREFIX + "*")):
        shutil.rmtree(folder, ignore_errors=True)
    return found


def has_netem() -> bool:
    """Whether this kernel has the netem qdisc (delay); some (e.g. small VMs) build only tbf/htb."""
    ns = PREFIX + "probe"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "-n", ns, "link", "add", PREFIX + "pa", "type", "veth", "peer", "name", PREFIX + "pb")
        sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", PREFIX + "pa", "root", "netem", "delay", "1ms")
        return True
    except LabError:
        return False
    finally:
        subprocess.run(["ip", "netns", "delete", ns], stderr=subprocess.DEVNULL)


def rate_bits(rate: str) -> int:
    """A tc rate such as 1gbit, 10gbit, 500mbit in bits per second."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmg]?)bit", rate.lower())
    if not m:
        raise LabError(f"rate {rate!r}: give a tc rate such as 1gbit, 10gbit, 500mbit")
    return int(float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "g": 1e9}[m.group(2)])


def address(node: int) -> str:
    """Node `node`'s address (nodes count from 1)."""
    return f"{SUBNET}.{node}"


def namespace(node: int) -> str:
    return f"{PREFIX}node{node}"


class Lab:
    """`nodes` namespaces on a bridge, links shaped to `rate` (a tc rate: 1gbit, 10gbit, ...)
    with `delay_ms` from node to node; node K runs on core (K-1) mod the usable cores."""

    def __init__(self, nodes: int, rate: str, delay_ms: float = 0.1, bin_dir: Optional[str] = None):
        self.nodes, self.rate, self.delay_ms = nodes, rate, delay_ms
        self.bin_dir = bin_dir  # where the fake ssh goes (put it first on PATH)
        self.home = os.path.join(bin_dir, "home") if bin_dir else None  # a HOME for launchers
        self.cores = sorted(os.sched_getaffinity(0))
        self.delay_applied = False  # set on entry: whether this kernel has netem
        self._lock: Optional[int] = None


    def __enter__(self) -> "Lab":
        check()
        self._lock = os.open(LOCK, os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self._lock, fcntl.LOCK_EX)  # released when this process ends, too
        remove()  # what a killed run left behind
        self.delay_applied = bool(self.delay_ms) and has_netem()
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            remove()
        finally:
            os.close(self._lock)  # the lock goes with it

    def core(self, node: int) -> int:
        return self.cores[(node - 1) % len(self.cores)]

    def run_in(self, node: int) -> list[str]:
        """The command prefix that runs a command inside `node`, pinned to its core."""
        return ["ip", "netns", "exec", namespace(node), "taskset", "-c", str(self.core(node))]

    def hosts(self, nodes: Optional[int] = None) -> str:
        """Horovod's `-H` for one worker per node on the first `nodes` (default all):
        distftlab-node1:1,distftlab-node2:1,..."""
        return ",".join(f"{namespace(k)}:1" for k in range(1, (nodes or self.nodes) + 1))

    def _build(self) -> None:
        sh("ip", "netns", "add", SWITCH)
        sh("ip", "-n", SWITCH, "link", "add", BRIDGE, "type", "bridge")
        sh("ip", "-n", SWITCH, "link", "set", BRIDGE, "up")
        for k in range(1, self.nodes + 1):
            ns, port = namespace(k), f"{PREFIX}p{k}"
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "add", port, "netns", SWITCH, "type", "veth", "peer", "name", IFACE, "netns", ns)
            sh("ip", "-n", SWITCH, "link", "set", port, "master", BRIDGE, "up")
            sh("ip", "-n", ns, "addr", "add", f"{address(k)}/24", "dev", IFACE)
            sh("ip", "-n", ns, "link", "set", IFACE, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            self._write_hosts(k)
            for where, dev in ((ns, IFACE), (SWITCH, port)):
                self._shape(where, dev)
        if self.bin_dir:
            self._write_ssh()
            shutil.rmtree(self.home, ignore_errors=True)
            os.makedirs(self.home)

    def _write_hosts(self, node: int) -> None:
        # `ip netns exec` mounts /etc/netns/NS/hosts over /etc/hosts. In node K this machine's
        # host name means 10.77.0.K, as a real node's own name means its address: Gloo binds
        # the devices of its local and cross contexts to that address.
        folder = os.path.join(ETC, namespace(node))
        os.makedirs(folder, exist_ok=True)
        lines = ["127.0.0.1 localhost", f"{address(node)} {socket.gethostname()}"]
        lines += [f"{address(k)} {namespace(k)}" for k in range(1, self.nodes + 1)]
        with open(os.path.join(folder, "hosts"), "w") as f:
            f.write("\n".join(lines) + "\n")

    def set_rate(self, node: int, rate: str) -> None:
        """Shape `node`'s link (both directions) to `rate` from now on, e.g. a slow link."""
        for ns, dev in ((namespace(node), IFACE), (SWITCH, f"{PREFIX}p{node}")):
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root")
            self._shape(ns, dev, rate)

    def _shape(self, ns: str, dev: str, rate: Optional[str] = None) -> None:
        rate = rate or self.rate
        tc = ["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev]
        parent = ["root"]
        if self.delay_applied:
            sh(*tc, "root", "handle", "1:", "netem", "delay", f"{self.delay_ms / 2}ms", "limit", "100000")
            parent = ["parent", "1:1"]
        # A bucket of 4 ms at the rate (at least 256 KiB: veths pass 64 KiB GSO packets).
        burst = max(262144, rate_bits(rate) // 2000)
        sh(*tc, *parent, "handle", "10:", "tbf", "rate", rate, "burst", str(burst), "latency", "20ms")

    def _write_ssh(self) -> None:
        cases = "\n".join(f"  {namespace(k)}|{address(k)}) ns={namespace(k)} core={self.core(k)};;"
                          for k in range(1, self.nodes + 1))
        path = os.path.join(self.bin_dir, "ssh")
        os.makedirs(self.bin_dir, exist_ok=True)
        with open(path, "w") as f:
            f.write(SSH.format(cases=cases))
        os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC)

    def sent_bytes(self) -> list[int]:
        """Bytes each node has sent on its link so far (its qdisc's counter)."""
        sent = []
        for k in range(1, self.nodes + 1):
            text = sh("ip", "netns", "exec", namespace(k), "tc", "-s", "qdisc", "show", "dev", IFACE)
            sent.append(int(re.search(r"Sent (\d+) bytes", text).group(1)))
        return sent

    def qdiscs(self) -> str:
        """`tc qdisc show` of every node's link, for the record."""
        return "".join(sh("ip", "netns", "exec", namespace(k), "tc", "qdisc", "show", "dev", IFACE)
                       for k in range(1, self.nodes + 1))

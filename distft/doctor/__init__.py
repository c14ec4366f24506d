"""`distft doctor`: a pre-flight check of the hosts a job would run on, in seconds.

One probe a host (probe.py) reports its versions, Horovod's ops, network interface, data and
output paths and GPUs, and listens on its interface's address; then every host connects to
every other, and each pair measures its throughput, pairs that share no host side by side
(network.py). problems.py names what is wrong.

Example:
    report = run(hosts="node1:4,node2:4", data="shards/*.tfrecord", output_dir="runs")
    print(report.table())
    report.problems     # [] when healthy; else "host node2: ...", one line each with its fix
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Optional

from distft.doctor import network, problems
from distft.doctor.hosts import Probe, ProbeFailed, command, hosts_of

START_TIMEOUT = 90.0  # seconds for every probe's report (a first run imports Horovod's ops once)
REPLY_TIMEOUT = network.TIMEOUT + 10  # seconds for an answer to one request


@dataclass
class Report:
    """What `run` found: each probe's report (probe.report), the hosts whose probe failed and
    why, the connections that failed ({"from", "to", "address", "error"}), the throughput of
    each pair ({"from", "to", "bits_per_s", "nominal_mbit", "error"}), and the problems."""

    hosts: list[str]
    probes: dict[str, dict] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    unreachable: list[dict] = field(default_factory=list)
    bandwidth: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    network_interface: Optional[str] = None
    slurm: bool = False
    python: str = sys.executable

    @property
    def healthy(self) -> bool:
        return not self.problems

    def table(self) -> str:
        """The hosts one a row, then the measured pairs, then the verdict."""
        head = ["host", "python", "tensorflow", "keras", "horovod", "distft", "horovod ops",
                "interface", "reached by", "GPUs", "data", "output"]
        rows = [head]
        peers = [h for h, p in self.probes.items() if p["listen"]]
        for h in self.hosts:
            p = self.probes.get(h)
            if p is None:  # the problems say why
                rows.append([h] + ["-"] * (len(head) - 1))
                continue
            v = p["versions"]
            speed = (p["interfaces"].get(p["interface"]) or {}).get("speed_mbit")
            rows.append([h, *(v[k] or "-" for k in ("python", "tensorflow", "keras", "horovod", "distft")),
                         "-" if p["ops"] is None else ",".join(p["ops"]) or "none",
                         f"{p['interface'] or '-'} {p['address'] or ''}".strip()
                         + (f" ({speed} Mbit/s)" if speed else ""),
                         f"{len(peers) - 1 - sum(m['to'] == h for m in self.unreachable)}/"
                         f"{len(peers) - 1}" if h in peers else "-",
                         str(len(p["gpus"])),
                         "-" if not p["data"] else f"{p['data']['files']} files",
                         "-" if not p["output"] else "writable" if not p["output"]["error"] else "NOT writable"])
        widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
        if self.bandwidth:
            lines += ["", "throughput (one TCP stream a pair, at most 1 s):"]
            for b in self.bandwidth:
                shown = problems.rate(b["bits_per_s"]) if b["bits_per_s"] else f"failed: {b['error']}"
                nominal = f" (nominal {b['nominal_mbit']} Mbit/s)" if b["nominal_mbit"] else ""
                lines.append(f"  {b['from']} -> {b['to']}: {shown}{nominal}")
        lines += ["", f"{len(self.hosts)} host(s): " + ("healthy" if self.healthy else
                                                        f"{len(self.problems)} problem(s)")]
        return "\n".join(lines)


def run(hosts: Optional[str] = None, data: Optional[str] = None, output_dir: Optional[str] = None,
        network_interface: Optional[str] = None) -> Report:
    """Probe `hosts` (horovodrun's `h1:2,h2:2`; default: this Slurm allocation's nodes, else
    localhost) and return the Report; see distft.api.doctor."""
    names, slurm = hosts_of(hosts)
    report = Report(names, network_interface=network_interface, slurm=slurm)
    args = [f"--first={names[0]}", *(f"--{k}={v}" for k, v in
                                     (("interface", network_interface), ("data", data),
                                      ("output_dir", output_dir)) if v)]
    probes: dict[str, Probe] = {}
    try:
        for h in names:
            cmd = command(h, slurm, args)
            try:
                probes[h] = Probe(h, cmd)
            except OSError as e:  # no ssh or srun here
                report.failed[h] = f"cannot run {cmd[0]}: {e.strerror}"
        deadline = time.monotonic() + START_TIMEOUT
        for h, probe in probes.items():
            try:
                report.probes[h] = probe.receive(deadline - time.monotonic())
            except ProbeFailed as e:
                report.failed[h] = str(e)
        _connect(report, probes)
        _measure(report, probes)
    finally:
        for probe in probes.values():
            probe.close()
    report.problems = problems.find(report)
    return report


def _ask_all(report: Report, probes: dict[str, Probe], requests: dict[str, dict]) -> dict[str, dict]:
    """Send each host its request at once, then collect the answers; a probe that fails here is
    recorded as failed and left out from then on."""
    for h, request in requests.items():
        probes[h].send(request)
    answers = {}
    for h in requests:
        try:
            answers[h] = probes[h].receive(REPLY_TIMEOUT)
        except ProbeFailed as e:
            report.failed[h] = str(e)
            report.probes.pop(h, None)
    return answers


def _listening(report: Report) -> dict[str, str]:
    return {h: p["listen"] for h, p in report.probes.items() if p["listen"]}


def _connect(report: Report, probes: dict[str, Probe]) -> None:
    """Every host with an interface connects to every other host's listener (a host without
    one has its own problem line)."""
    listening = _listening(report)
    requests = {h: {"reach": [a for g, a in listening.items() if g != h]} for h in listening}
    for h, answer in _ask_all(report, probes, requests).items():
        for target, address in listening.items():
            error = answer["reach"].get(address) if target != h else None
            if error:
                report.unreachable.append({"from": h, "to": target, "address": address, "error": error})


def _measure(report: Report, probes: dict[str, Probe]) -> None:
    """The throughput of each pair that connected both ways, pairs sharing no host at once."""
    missed = {(m["from"], m["to"]) for m in report.unreachable}
    names = list(report.hosts)
    for pairs in network.rounds(len(names)):
        listening = _listening(report)
        ready = [(names[i], names[j]) for i, j in pairs
                 if names[i] in listening and names[j] in listening
                 and not {(names[i], names[j]), (names[j], names[i])} & missed]
        answers = _ask_all(report, probes, {a: {"measure": listening[b]} for a, b in ready})
        for a, b in ready:
            if a in answers:
                speeds = [report.probes[h]["interfaces"][report.probes[h]["interface"]]["speed_mbit"]
                          for h in (a, b)]
                report.bandwidth.append({"from": a, "to": b, "bits_per_s": answers[a]["measure"],
                                         "error": answers[a]["error"],
                                         "nominal_mbit": min(speeds) if all(speeds) else None})

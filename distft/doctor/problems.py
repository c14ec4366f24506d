"""What `distft doctor` finds wrong in the probes' reports: one line each, naming the host, the
problem and its fix.

Example:
    find(report)    # ["host node3: slow link: 19.6 Mbit/s to node1, ... : check its link ..."]
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from distft.doctor import Report

LABELS = {"python": "Python", "tensorflow": "TensorFlow", "keras": "Keras", "horovod": "Horovod",
          "distft": "distft"}
SLOW_VS_BEST = 1 / 3  # a pair below a third of the best pair's rate is slow
SLOW_VS_NOMINAL = 1 / 4  # ... and so is one below a quarter of the link's nominal rate,
# up to 10 Gbit/s: one Python TCP stream does not fill faster links, whatever they are worth.
NOMINAL_CHECKED_UP_TO_MBIT = 10_000


def find(report: "Report") -> list[str]:
    """Every problem in `report`, host by host in the order of the checks."""
    probes = report.probes
    found = [f"host {h}: no report: {why}: {_reach_fix(report, h)}" for h, why in report.failed.items()]
    for key, label in LABELS.items():
        found += _odd_ones(probes, lambda p: p["versions"].get(key), label,
                           "install the same version on every host")
    for h, p in probes.items():
        if p["ops_error"]:
            found.append(f"host {h}: {p['ops_error']}")
    found += _odd_ones({h: p for h, p in probes.items() if p["ops"] is not None},
                       lambda p: ",".join(p["ops"]) or "no ops", "Horovod built with",
                       "build Horovod alike everywhere (distft install-horovod --rebuild)")
    found += [f"host {h}: {p['interface_error']}" for h, p in probes.items() if p["interface_error"]]
    found += _unreachable(report)
    found += _slow(report)
    found += _data(probes)
    for h, p in probes.items():
        if p["output"] and p["output"]["error"]:
            found.append(f"host {h}: --output_dir={p['output']['dir']} is not writable "
                         f"({p['output']['error']}): choose a folder every host can write")
    found += _odd_ones(probes, lambda p: len(p["gpus"]), "GPUs:", "give every host the same GPUs")
    return found


def _odd_ones(probes: dict[str, dict], value: Callable[[dict], Any], label: str, fix: str) -> list[str]:
    """A line for each host whose `value` differs from the most hosts' (the first host's on a
    tie), naming the hosts that have that."""
    values = {h: value(p) for h, p in probes.items()}
    if len(set(values.values())) < 2:
        return []
    counts = Counter(values.values())
    usual = max(counts, key=lambda v: (counts[v], v == next(iter(values.values()))))
    others = ", ".join(h for h, v in values.items() if v == usual)
    return [f"host {h}: {label} {_shown(v)} where {others} {'has' if counts[usual] == 1 else 'have'} "
            f"{_shown(usual)}: {fix}" for h, v in values.items() if v != usual]


def _shown(value: Any) -> str:
    return "not installed" if value is None else str(value)


def _reach_fix(report: "Report", host: str) -> str:
    if report.slurm:
        return f"check that `srun --nodelist={host}` starts {report.python} there"
    return (f"check that `ssh {host}` works without a password and that {report.python} exists "
            "there (the same Python path on every host, as horovodrun needs)")


def _unreachable(report: "Report") -> list[str]:
    """A host that no other host reaches and that reaches none (of three or more) is named
    alone; other failed connections are named by the host that was not reached."""
    peers = len([p for p in report.probes.values() if p["listen"]]) - 1
    isolated = {h for h in report.probes if peers > 1
                and sum(m["from"] == h for m in report.unreachable) == peers
                and sum(m["to"] == h for m in report.unreachable) == peers}
    found = []
    for h in isolated:
        miss = next(m for m in report.unreachable if m["to"] == h)
        found.append(f"host {h}: unreachable: no connection to or from any other host on "
                     f"{report.probes[h]['interface']} ({miss['error']}): check its link and "
                     "firewall, or pass --network_interface")
    by_target: dict[str, list[dict]] = {}
    for miss in report.unreachable:
        if not isolated & {miss["from"], miss["to"]}:
            by_target.setdefault(miss["to"], []).append(miss)
    for target, misses in by_target.items():
        sources = ", ".join(m["from"] for m in misses)
        found.append(f"host {target}: unreachable on {report.probes[target]['interface']} at "
                     f"{misses[0]['address']} from {sources} ({misses[0]['error']}): check its "
                     "link and firewall, or pass --network_interface")
    return found


def _slow(report: "Report") -> list[str]:
    measured = [b for b in report.bandwidth if b["bits_per_s"]]
    found = [f"host {b['from']}: the throughput test to {b['to']} failed ({b['error']}): check "
             "the link between them" for b in report.bandwidth if not b["bits_per_s"]]
    if not measured:
        return found
    best = max(measured, key=lambda b: b["bits_per_s"])

    def slow(b: dict) -> bool:
        nominal = b["nominal_mbit"]
        return b["bits_per_s"] < best["bits_per_s"] * SLOW_VS_BEST or bool(
            nominal and nominal <= NOMINAL_CHECKED_UP_TO_MBIT
            and b["bits_per_s"] < nominal * 1e6 * SLOW_VS_NOMINAL)

    slow_pairs = [b for b in measured if slow(b)]
    against = (f" against {rate(best['bits_per_s'])} between {best['from']} and {best['to']}"
               if len(measured) > 1 else "")
    named = set()
    for h in report.probes:
        mine = [b for b in measured if h in (b["from"], b["to"])]
        if len(report.probes) > 2 and mine and all(b in slow_pairs for b in mine):
            named.add(h)
            rates = ", ".join(f"{rate(b['bits_per_s'])} to {b['to'] if b['from'] == h else b['from']}"
                              for b in mine)
            found.append(f"host {h}: slow link: {rates}{against}{_nominal(mine[0])}: check its "
                         f"link ({report.probes[h]['interface']}: ethtool, cabling, switch port)")
    for b in slow_pairs:
        if not named & {b["from"], b["to"]}:
            found.append(f"host {b['from']}: slow link to {b['to']}: {rate(b['bits_per_s'])}"
                         f"{against}{_nominal(b)}: check the link between them")
    return found


def _nominal(pair: dict) -> str:
    return f" (nominal {pair['nominal_mbit']} Mbit/s)" if pair["nominal_mbit"] else ""


def rate(bits_per_s: float) -> str:
    """A rate for people: 941 Mbit/s, 9.41 Gbit/s."""
    if bits_per_s >= 1e9:
        return f"{bits_per_s / 1e9:.3g} Gbit/s"
    return f"{bits_per_s / 1e6:.3g} Mbit/s"


def _data(probes: dict[str, dict]) -> list[str]:
    checked = {h: p["data"] for h, p in probes.items() if p["data"]}
    found = []
    for h, d in checked.items():
        if not d["files"]:
            found.append(f"host {h}: --data={d['pattern']} matches no file here: make the data "
                         "visible on every host (a shared file system, or a copy at the same path)")
        elif d["unreadable"]:
            found.append(f"host {h}: {len(d['unreadable'])} data file(s) unreadable "
                         f"({d['unreadable'][0]}): fix their permissions")
    most = max((d["files"] for d in checked.values()), default=0)
    found += [f"host {h}: --data={d['pattern']} matches {d['files']} files here but {most} on "
              f"{', '.join(g for g, e in checked.items() if e['files'] == most)}: copy the "
              "missing files" for h, d in checked.items() if 0 < d["files"] < most]
    return found

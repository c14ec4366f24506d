"""Which rank stalls the job, decided from what every rank last reported: a pure function.

In the order tried:
1. a rank whose heartbeat stopped for longer than the timeout (stopped, hung hard, unreachable);
2. once no rank's progress moved for longer than the timeout:
   a. a rank blocked reading a file;
   b. a rank busy elsewhere (a callback, a checkpoint, rank 0's part of an `agree`) while the
      others wait in a collective;
   c. a rank that entered a different collective from the others (the divergence of a
      callback that calls a collective on one rank only, or of an uneven loop): the rank in a
      Horovod call of its own code (not one of distft's collectives) while the others are not,
      else the odd one out, else the rank in a collective that no other rank ever entered, else
      the one in a collective while the others are in a train step;
   d. every rank waiting at the same place: all are named.
While no rank waits (all compute, however long), nothing is decided.

Example:
    views = [RankView(0, "n1", 11, silent=0.5, still=70, beat={"phase": "collective #9 gather", ...}),
             RankView(1, "n2", 22, silent=70, still=70, beat={...}, state="stopped (state T)")]
    judge(views, timeout=60).line   # "rank 1 (host n2, pid 22) made no progress for 70 s: stopped (state T); ..."
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class RankView:
    """One rank as the judging rank sees it: seconds since its last heartbeat (`silent`) and
    since its progress last moved (`still`), its last heartbeat (`beat`: progress.Progress's
    snapshot, with `read` when blocked in one; {} before the first), and its process state when
    it runs on the judging rank's host."""

    rank: int
    host: str
    pid: int
    silent: float
    still: float
    beat: dict = field(default_factory=dict)
    state: Optional[str] = None

    @property
    def who(self) -> str:
        return f"rank {self.rank} (host {self.host}, pid {self.pid})"

    @property
    def phase(self) -> str:
        return self.beat.get("phase") or "an unknown phase"

    @property
    def place(self) -> str:
        """Where it waits: its collective's name (not its number), or 'a train step'."""
        inside = self.beat.get("collective")
        return inside[1] if inside else "a train step"


@dataclass(frozen=True)
class Verdict:
    """The ranks named, and the line that names them (the caller adds what happens next)."""

    ranks: tuple[int, ...]
    line: str


def judge(views: list[RankView], timeout: float) -> Optional[Verdict]:
    """The verdict on `views` (the ranks still running) after `timeout` seconds, or None."""
    silent = [v for v in views if v.silent > timeout]
    if silent:
        return _named(silent, lambda v: f"made no progress for {max(v.silent, v.still):.0f} s: "
                      f"{v.state or 'no heartbeat (hung hard, or unreachable)'}; last seen in {v.phase}")
    if not views or min(v.still for v in views) <= timeout:
        return None
    still = lambda v: f"made no progress for {v.still:.0f} s"
    reading = [v for v in views if v.beat.get("read")]
    if reading:
        return _named(reading, lambda v: f"{still(v)}: {v.beat['read']} (in {v.phase})")
    waiting = [v for v in views if v.beat.get("waiting")]
    if not waiting:
        return None
    busy = [v for v in views if not v.beat.get("waiting")]
    if busy:
        return _named(busy, lambda v: f"{still(v)}: in {v.phase}, while {_ranks(waiting)} wait"
                      f" in {_places(waiting)}")
    odd = _odd(views)
    if odd:
        others = [v for v in views if v not in odd]
        return _named(odd, lambda v: f"entered a different collective from the others: {v.phase}, "
                      f"while {_ranks(others)} {'is' if len(others) == 1 else 'are'} in "
                      f"{_places(others)}; no progress for {v.still:.0f} s")
    return _named(views, lambda v: f"{still(v)}: in {v.phase}")


def _odd(views: list[RankView]) -> list[RankView]:
    """The ranks whose place (or collective number) differs from the others', [] if none."""
    foreign = [v for v in views if v.beat.get("collective") and v.beat["collective"][0] is None]
    if 0 < len(foreign) < len(views):  # a user's callback called Horovod on these ranks only
        return foreign
    for key in (lambda v: v.place, lambda v: v.beat.get("seq")):
        groups = Counter(key(v) for v in views)
        if len(groups) == 1:
            continue
        (_, most), (_, next_most) = groups.most_common(2)
        if most > next_most:  # a majority place: the others are odd
            common = groups.most_common(1)[0][0]
            return [v for v in views if key(v) != common]
        entered = lambda v: {name for _, name in v.beat.get("collectives", [])}
        unseen = [v for v in views if v.beat.get("collective") and
                  not any(v.place in entered(o) for o in views if o is not v)]
        if unseen and len(unseen) < len(views):
            return unseen
        in_python = [v for v in views if v.beat.get("collective")]
        if 0 < len(in_python) < len(views):
            return in_python
        return list(views)
    return []


def _named(views: list[RankView], why) -> Verdict:
    return Verdict(tuple(v.rank for v in views), "; ".join(f"{v.who} {why(v)}" for v in views))


def _ranks(views: list[RankView]) -> str:
    return ("rank " if len(views) == 1 else "ranks ") + ", ".join(str(v.rank) for v in views)


def _places(views: list[RankView]) -> str:
    return " / ".join(dict.fromkeys(v.phase for v in views))

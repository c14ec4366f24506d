"""Which records each worker reads, and how many steps an epoch has. Pure Python.

With at least as many files as workers, whole files go to workers, balanced by record
count (largest first to the least-loaded worker). Given an `epoch`, files and workers are
first put in an order seeded by (seed, epoch), the same on every worker, so each epoch gives
each worker other files. With fewer files, every worker reads
all files and keeps every `size`-th record. Either way every worker runs the same number
of steps per epoch, so uneven shards never leave a worker waiting in an allreduce. An epoch
is floor(records / global batch) steps, as one worker on the global batch drops the same
remainder.

Example:
    share = assign([100, 80, 30, 10, 5], rank=1, size=2)
    share.files, share.records       # ([1, 2], 110)
    steps_per_epoch([100, 80, 30, 10, 5], size=2, batch_size=32)   # 3 (225 // 64)
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Share:
    """One worker's part of a data set: file indices, and record stride when split by record."""

    files: tuple[int, ...]
    records: int
    stride: int = 1  # >1: keep records offset, offset+stride, ... of the files' concatenation
    offset: int = 0


def assign(counts: list[int], rank: int, size: int, by_record: bool = False,
           epoch: Optional[int] = None, seed: int = 0) -> Share:
    """The share of worker `rank` of `size`, given each file's record count.

    `by_record` forces the record split, whose order interleaves back to the files' order.
    `epoch` (with `seed`) permutes the files before the balanced assignment.
    """
    total = sum(counts)
    nonempty = [i for i, c in enumerate(counts) if c > 0]
    if len(nonempty) >= size and not by_record:
        files, workers = list(range(len(counts))), list(range(size))
        if epoch is not None:
            rng = random.Random(seed * 1000003 + epoch)
            rng.shuffle(files)
            rng.shuffle(workers)
        file_pos = {f: k for k, f in enumerate(files)}
        load = [0] * size
        owned: list[list[int]] = [[] for _ in range(size)]
        for i in sorted(nonempty, key=lambda i: (-counts[i], file_pos[i])):
            w = min(workers, key=lambda w: load[w])
            owned[w].append(i)
            load[w] += counts[i]
        return Share(tuple(sorted(owned[rank])), load[rank])
    return Share(tuple(nonempty), len(range(rank, total, size)), stride=size, offset=rank)


def steps_per_epoch(counts: list[int], size: int, batch_size: int) -> int:
    """Full global batches in one pass over all records (at least one): the last partial
    batch is dropped, as one worker on a `size` times larger batch drops it."""
    return max(1, sum(counts) // (size * batch_size))

import itertools

import pytest

from distft.data.sharding import assign, steps_per_epoch


def covered(counts, size):
    """Each record (file, index) is read by exactly one worker."""
    seen = []
    for rank in range(size):
        share = assign(counts, rank, size)
        stream = [(f, i) for f in share.files for i in range(counts[f])]
        if share.stride > 1:
            stream = stream[share.offset::share.stride]
        assert len(stream) == share.records
        seen += stream
    return sorted(seen)


@pytest.mark.parametrize("counts, size", [
    ([100, 80, 30, 10, 5], 2), ([7], 2), ([3, 0, 4], 4), ([10] * 8, 3), ([1, 2], 2), ([5, 0], 2),
])
def test_every_record_read_exactly_once(counts, size):
    assert covered(counts, size) == sorted((f, i) for f, c in enumerate(counts) for i in range(c))


def test_five_files_on_two_workers_are_balanced_by_records():
    counts = [100, 80, 30, 10, 5]
    a, b = (assign(counts, r, 2) for r in range(2))
    assert sorted(a.files + b.files) == [0, 1, 2, 3, 4]
    assert abs(a.records - b.records) <= 45  # greedy: 100+10 vs 80+30+5
    assert (a.records, b.records) == (110, 115) or (a.records, b.records) == (115, 110)


def test_fewer_files_than_workers_split_by_record():
    shares = [assign([7], r, 3) for r in range(3)]
    assert [s.records for s in shares] == [3, 2, 2]
    assert all(s.stride == 3 and s.files == (0,) for s in shares)


def test_steps_are_the_same_for_every_worker_whatever_the_shares():
    counts = [100, 80, 30, 10, 5]
    assert steps_per_epoch(counts, 2, 32) == 3  # 225 // 64: the partial batch is dropped
    assert steps_per_epoch(counts, 1, 64) == 3  # as one worker on the doubled batch drops it
    assert steps_per_epoch([64, 64], 2, 32) == 2
    assert steps_per_epoch([1], 2, 32) == 1


def test_by_record_split_interleaves_back_in_file_order():
    counts = [3, 4]
    order = [(f, i) for f, c in enumerate(counts) for i in range(c)]
    parts = []
    for r in range(2):
        s = assign(counts, r, 2, by_record=True)
        parts.append(order[s.offset::s.stride])
    merged = [None] * len(order)
    for r, part in enumerate(parts):
        merged[r::2] = part
    assert merged == order
    assert list(itertools.chain(*parts)) != order  # a real split, not a copy


@pytest.mark.parametrize("counts, size", [([5, 5, 4, 4, 4, 4, 4], 2), ([100, 80, 30, 10, 5], 2),
                                          ([9] * 12, 4)])
def test_epoch_assignment_changes_but_covers_every_file_each_epoch(counts, size):
    per_epoch = []
    for epoch in range(6):
        shares = [assign(counts, r, size, epoch=epoch, seed=7) for r in range(size)]
        assert sorted(f for s in shares for f in s.files) == list(range(len(counts)))
        assert shares == [assign(counts, r, size, epoch=epoch, seed=7) for r in range(size)]
        loads = [s.records for s in shares]
        assert max(loads) - min(loads) <= max(counts)  # still balanced by the greedy
        per_epoch.append(tuple(s.files for s in shares))
    assert len(set(per_epoch)) > 1  # each worker sees other files over the epochs

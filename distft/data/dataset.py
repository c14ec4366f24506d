"""A data set on disk, counted once by all workers together, and each worker's tf.data stream.

Example:
    ds = DataSet.open("shards/*.tfrecord")
    ds.count(gather=hvd.allgather_object, rank=hvd.rank(), size=hvd.size())
    train = ds.stream(rank, size, batch_size=32, input_shape=(8, 8, 1), training=True, seed=0)
"""
from __future__ import annotations

import functools
import glob
import os
from dataclasses import dataclass, field
from typing import Callable, Optional

import tensorflow as tf

from distft.data import sharding
from distft.data.formats import FORMATS, Schema, decode_batch, format_of, infer_schema, label_of, \
    read_records
from distft.errors import DistftError

AUTOTUNE = tf.data.AUTOTUNE
HOLDOUT_BASE = 10000  # --val_split resolution: 1/10000


@dataclass
class Counts:
    """Per-file record counts (train part and held-out part) and the label range."""

    train: list[int]
    held_out: list[int]
    y_min: float
    y_max: float


@dataclass
class DataSet:
    """Files of one format and schema; `holdout` > 0 splits off a deterministic fraction."""

    files: list[str]
    schema: Schema
    holdout: float = 0.0
    part: str = "all"  # all | train | held_out (of the holdout split)
    counts: Optional[Counts] = field(default=None, repr=False)

    @classmethod
    def open(cls, pattern: str, label: str = "label", holdout: float = 0.0) -> DataSet:
        """Resolve a file, folder or glob; check the files share one format and schema."""
        files = resolve_files(pattern)
        formats = {format_of(f) for f in files}
        if len(formats) > 1:
            raise DistftError(f"--data={pattern} mixes formats {sorted(formats)}: use one format")
        schema = infer_schema(files[0], label)
        return cls(files, schema, holdout, "train" if holdout else "all")

    def held_out(self) -> DataSet:
        """The held-out fraction of this data set (for --val_split)."""
        return DataSet(self.files, self.schema, self.holdout, "held_out", self.counts)

    def count(self, rank: int = 0, size: int = 1,
              gather: Callable[[object], list] = lambda x: [x]) -> Counts:
        """Count records per file; worker `rank` reads every `size`-th file, `gather` shares.

        Each worker reports its results or its error, so every worker sees a bad file at
        the same moment and they stop together instead of leaving the others waiting.
        """
        mine: dict[int, tuple] = {}
        error = None
        for i in range(rank, len(self.files), size):
            try:
                mine[i] = self._count_file(i)
            except DistftError as e:
                error = str(e)
                break
        results = gather((mine, error))
        errors = [e for _, e in results if e]
        if errors:
            raise DistftError(errors[0])
        merged: dict[int, tuple] = {}
        for part, _ in results:
            merged.update(part)
        per_file = [merged[i] for i in range(len(self.files))]
        y = [(lo, hi) for n, k, lo, hi in per_file if n + k]
        self.counts = Counts([p[0] for p in per_file], [p[1] for p in per_file],
                             min(lo for lo, _ in y) if y else 0.0, max(hi for _, hi in y) if y else 0.0)
        return self.counts

    def _count_file(self, index: int) -> tuple[int, int, float, float]:
        path = self.files[index]
        try:
            n, k, lo, hi = _counter(self.schema, self.holdout)(tf.constant(path),
                                                               tf.constant(index, tf.int64))
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError, tf.errors.OutOfRangeError,
                tf.errors.UnknownError, tf.errors.NotFoundError) as e:
            first = (e.message or type(e).__name__).splitlines()[0]
            raise DistftError(f"{path}: corrupt or unreadable {self.schema.format} data ({first}): "
                              "regenerate or remove this file") from None
        return int(n), int(k), float(lo), float(hi)

    def _enumerated(self, path: tf.Tensor, index: tf.Tensor) -> tf.data.Dataset:
        """(is_held_out, record) for each record of one file."""
        fraction = int(round(self.holdout * HOLDOUT_BASE))

        @tf.autograph.experimental.do_not_convert
        def tag(i, record):
            # A stride coprime with the base spreads the held-out records evenly.
            bucket = tf.math.floormod(i * 7919 + index * 104729, HOLDOUT_BASE)
            return bucket < fraction, record

        return read_records(path, self.schema).enumerate().map(tag)

    def _records(self, path: tf.Tensor, index: tf.Tensor) -> tf.data.Dataset:
        if self.part == "all":  # no holdout: no per-record tagging on the hot path
            return read_records(path, self.schema)
        want = self.part == "held_out"
        return self._enumerated(path, index).filter(
            lambda held, _: tf.equal(held, want)).map(lambda _, record: record)

    def part_counts(self) -> list[int]:
        if self.counts is None:
            raise RuntimeError("count() first")
        return self.counts.held_out if self.part == "held_out" else self.counts.train

    def share(self, rank: int, size: int, by_record: bool = False) -> sharding.Share:
        return sharding.assign(self.part_counts(), rank, size, by_record)

    def stream(self, rank: int, size: int, batch_size: int, input_shape: tuple,
               training: bool, seed: int = 0, shuffle_buffer: int = 10000,
               by_record: bool = False) -> tf.data.Dataset:
        """Worker `rank`'s batches of (x, y).

        Training streams repeat forever (Keras runs a fixed number of steps per epoch, the
        same on every worker) and shuffle in a bounded buffer; evaluation streams are
        finite and keep every record of the worker's share exactly once.
        """
        share = self.share(rank, size, by_record)
        paths = tf.constant([self.files[i] for i in share.files] or [""], tf.string)
        idx = tf.constant(list(share.files) or [0], tf.int64)
        files = tf.data.Dataset.from_tensor_slices((paths, idx)).take(len(share.files))
        # Plain TF ops: autograph's conversion would add seconds to every start.
        records = tf.autograph.experimental.do_not_convert(self._records)
        if share.stride > 1 or by_record:  # files in order, then every stride-th record
            ds = files.flat_map(records).shard(share.stride, share.offset)
        else:
            ds = files.interleave(records, cycle_length=min(4, max(1, len(share.files))),
                                  num_parallel_calls=AUTOTUNE, deterministic=True)
        if training:
            if shuffle_buffer > 1:
                ds = ds.shuffle(shuffle_buffer, seed=seed + rank, reshuffle_each_iteration=True)
            ds = ds.repeat()
        ds = ds.batch(batch_size, drop_remainder=training)
        schema = self.schema
        decode = tf.autograph.experimental.do_not_convert(
            lambda *b: decode_batch(b[0] if len(b) == 1 else b, schema, tuple(input_shape)))
        ds = ds.map(decode, num_parallel_calls=AUTOTUNE, deterministic=True)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
        return ds.with_options(options).prefetch(AUTOTUNE)


def resolve_files(pattern: str) -> list[str]:
    """A file, a folder (its data files), or a glob; sorted; error if nothing matches."""
    if os.path.isdir(pattern):
        files = [os.path.join(pattern, f) for f in os.listdir(pattern)
                 if os.path.splitext(f)[1].lower() in FORMATS]
    else:
        files = glob.glob(os.path.expanduser(pattern))
    files = sorted(f for f in files if os.path.isfile(f))
    if not files:
        raise DistftError(f"--data={pattern} matches no data file: check the path or glob "
                          "(quote globs so the shell does not expand them)")
    return files


@functools.lru_cache(maxsize=None)
def _counter(schema: Schema, holdout: float) -> Callable:
    """(records, held-out records, lowest label, highest label) of one file, as a function
    traced once and run for every file (tracing it per file cost ~0.5 s a file)."""
    data = DataSet([], schema, holdout)

    @tf.autograph.experimental.do_not_convert  # plain TF ops: converting costs seconds
    def step(acc, item):
        n, k, lo, hi = acc
        held, record = item
        y = label_of(record, schema)
        return (n + tf.cast(~held, tf.int64), k + tf.cast(held, tf.int64),
                tf.minimum(lo, y), tf.maximum(hi, y))

    @tf.function(input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64)],
                 autograph=False)
    def count(path, index):
        init = (tf.constant(0, tf.int64), tf.constant(0, tf.int64),
                tf.constant(float("inf")), tf.constant(float("-inf")))
        return data._enumerated(path, index).reduce(init, step)

    return count

"""TFRecord files of tf.train.Examples: `x`/`y` features (or other tools' keys), or named fields."""
from __future__ import annotations

import gzip
import math
import os
import struct
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from distft.data import named
from distft.data.formats.base import Layout, Named, XY, X_KEYS
from distft.errors import DistftError


class _TFRecordFile:
    """What the TFRecord layouts share: reading, counting and checking files of Examples (each
    by its `check_example`)."""

    format = "tfrecord"
    compression: str

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        return tf.data.TFRecordDataset(path, compression_type=self.compression, buffer_size=1 << 20)

    def count(self, path: str) -> int:
        opener = gzip.open if self.compression == "GZIP" else open
        n = 0
        with opener(path, "rb") as f:  # TFRecord framing: length (8), crc (4), data, crc (4)
            while header := f.read(8):
                if len(header) < 8:
                    raise DistftError(f"{path}: truncated TFRecord file: regenerate it")
                f.seek(struct.unpack("<Q", header)[0] + 8, os.SEEK_CUR)
                n += 1
        return n

    def misfit(self, path: str) -> None:
        for n, record in enumerate(tf.data.TFRecordDataset(path, self.compression)):
            problem = self.check_example(record.numpy())
            if problem:
                raise DistftError(f"{path}: record {n} {problem} (the first file's records fit "
                                  f"{self.reads} as read): write every record with the same features")

    def examples(self, path: str, classes: list, chunk: int) -> Iterator[tuple[list[bytes], np.ndarray]]:
        for batch in tf.data.TFRecordDataset(path, self.compression, 1 << 20).batch(chunk):
            yield list(batch.numpy()), self.labels(batch)  # kept as they are

    def shards(self) -> Layout:
        return self


def _first_features(path: str):
    """(compression, the first record's features) of a TFRecord file."""
    with open(path, "rb") as f:
        compression = "GZIP" if f.read(2) == b"\x1f\x8b" else ""
    first = next(iter(tf.data.TFRecordDataset(path, compression_type=compression).take(1)), None)
    if first is None:
        raise DistftError(f"{path}: TFRecord file has no records: remove it or regenerate it")
    return compression, tf.train.Example.FromString(first.numpy()).features.feature


@dataclass(frozen=True)
class TFRecordLayout(_TFRecordFile, XY):
    """Examples of features (`x`: float list, or `image`: encoded PNG/JPEG bytes, or raw uint8
    pixels from `distft shard`) and a target (`y`: int64 or float, one value or a fixed-length
    list). Other tools' feature names are read with `x_key`/`y_key` (e.g. `image/encoded`,
    `image/class/label`). GZIP-compressed files are recognised."""

    compression: str = ""  # "" or GZIP
    x_key: str = "x"
    y_key: str = "y"

    @classmethod
    def infer(cls, path: str, label: str, x_key: Optional[str], y_key: Optional[str],
              allow_named: bool) -> Layout:
        compression, feats = _first_features(path)
        xk = x_key or next((k for k in X_KEYS if k in feats), None)
        yk = y_key or "y"
        if allow_named and not (x_key or y_key) and (xk is None or yk not in feats):
            return NamedTFRecordLayout(fields=named.example_fields(feats), compression=compression)
        if xk is None or xk not in feats or yk not in feats:
            missing = [f"'{k}'" for k, given in ((xk or "x", x_key), (yk, y_key)) if k not in feats]
            raise DistftError(f"{path}: records have no feature {' or '.join(missing)}; they have "
                              f"{_describe_features(feats)}: pass {_suggest_keys(feats)}")
        kind = feats[xk].WhichOneof("kind")
        if kind == "bytes_list":
            x_kind, x_shape = "image", ()
        elif kind == "float_list":
            x_kind, x_shape = "float", (len(feats[xk].float_list.value),)
        else:
            raise DistftError(f"{path}: feature '{xk}' is {kind}, expected float_list (features) or "
                              "bytes_list (encoded images): pass --x_key=FEATURE naming one of "
                              f"{_describe_features(feats)}")
        y = feats[yk]
        if y.WhichOneof("kind") not in ("int64_list", "float_list"):
            raise DistftError(f"{path}: feature '{yk}' is {y.WhichOneof('kind')}, expected int64_list "
                              "or float_list targets: pass --y_key=FEATURE naming the target")
        values = getattr(y, y.WhichOneof("kind")).value
        return cls(x_kind, x_shape, () if len(values) == 1 else (len(values),),
                   y.WhichOneof("kind") == "float_list", compression=compression, x_key=xk, y_key=yk)

    @classmethod
    def named(cls, path: str) -> Named:
        compression, feats = _first_features(path)
        return NamedTFRecordLayout(fields=named.example_fields(feats), compression=compression)

    @property
    def x_is_bytes(self) -> bool:
        """`x` is bytes: encoded images, or uint8 pixels (as `distft shard` writes them)."""
        return self.x_kind == "image" or (self.x_kind == "pixels" and self.x_dtype == "uint8")

    @property
    def reads(self) -> str:
        return f"{self.x_key}/{self.y_key}"

    def spec(self, with_x: bool = True) -> dict:
        """tf.io.parse_example's spec."""
        spec = {self.y_key: tf.io.FixedLenFeature(self.y_shape, tf.float32 if self.y_float else tf.int64)}
        if with_x:
            spec[self.x_key] = (tf.io.FixedLenFeature([], tf.string) if self.x_is_bytes
                                else tf.io.FixedLenFeature(self.x_shape, tf.float32))
        return spec

    def split(self, record: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        parsed = tf.io.parse_example(record, self.spec())
        return parsed[self.x_key], parsed[self.y_key]

    def y_of(self, record: tf.Tensor) -> tf.Tensor:
        return tf.io.parse_example(record, self.spec(with_x=False))[self.y_key]

    def labels(self, batch: tf.Tensor) -> np.ndarray:
        return self.y_of(batch).numpy()

    def check_example(self, record: bytes) -> Optional[str]:
        """What in one serialized record does not fit (None if it fits)."""
        feats = tf.train.Example.FromString(record).features.feature
        for key, kinds, size in ((self.x_key, ("bytes_list",) if self.x_is_bytes else ("float_list",),
                                  None if self.x_is_bytes else self.x_size),
                                 (self.y_key, ("float_list",) if self.y_float else ("int64_list",),
                                  math.prod(self.y_shape))):
            if key not in feats:
                return f"has no feature '{key}' (it has {_describe_features(feats)})"
            kind = feats[key].WhichOneof("kind")
            if kind not in kinds:
                return f"feature '{key}' is {kind}, expected {kinds[0]}"
            n = len(getattr(feats[key], kind).value)
            if size is not None and n != size:
                return f"feature '{key}' has {n} values, expected {size}"
        return None

    def features(self) -> dict:
        """The records' features, for the manifest: {name: {dtype, shape}}."""
        x = {"dtype": "string", "shape": []} if self.x_is_bytes else {"dtype": "float32", "shape": list(self.x_shape)}
        return {self.x_key: x, self.y_key: {"dtype": "float32" if self.y_float else "int64",
                                            "shape": list(self.y_shape)}}

    def serialize(self, x: np.ndarray, y: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """Rows of `x` and `y` as serialized Examples, and the targets as written."""
        y = y.astype(np.float32 if self.y_float else np.int64).reshape(len(y), *self.y_shape)
        if self.x_is_bytes:
            rows = [row.tobytes() for row in x.reshape(len(x), *self.x_shape)]
        else:
            rows = list(x.reshape(len(x), -1).astype(np.float32))
        return [self.example(row, label) for row, label in zip(rows, y)], y

    def example(self, x, y: np.ndarray) -> bytes:
        """A serialized Example of `x` (float row, or bytes) and target `y` (one value or a row)."""
        f = tf.train.Feature
        y = np.atleast_1d(y)
        feats = {self.y_key: f(float_list=tf.train.FloatList(value=y)) if y.dtype.kind == "f"
                 else f(int64_list=tf.train.Int64List(value=y))}
        feats[self.x_key] = f(bytes_list=tf.train.BytesList(value=[x])) if isinstance(x, bytes) \
            else f(float_list=tf.train.FloatList(value=x))
        return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


@dataclass(frozen=True)
class NamedTFRecordLayout(_TFRecordFile, Named):
    """Examples of features named as a model's inputs and outputs."""

    compression: str = ""  # "" or GZIP
    item = "feature"

    @property
    def reads(self) -> str:
        return ", ".join(self.used())

    def values(self, record, names: tuple[str, ...]) -> dict:
        return tf.io.parse_example(record, named.parse_spec(self.fields, names))

    def labels(self, batch: tf.Tensor) -> np.ndarray:
        return np.zeros(len(batch))  # no one target

    def check_example(self, record: bytes) -> Optional[str]:
        return named.check_example(tf.train.Example.FromString(record).features.feature, self.fields,
                                   self.used())

    def features(self) -> dict:
        return {f.name: {"dtype": "string" if f.raw_bytes else f.dtype, "shape": list(f.shape)}
                for f in self.fields}


def _describe_features(feats) -> str:
    return ", ".join(f"{k} ({feats[k].WhichOneof('kind')}[{len(getattr(feats[k], feats[k].WhichOneof('kind')).value)}])"
                     for k in sorted(feats))


def _suggest_keys(feats) -> str:
    """A ready-to-paste --x_key/--y_key guess from the features a record has."""
    def pick(kinds: tuple, hints: tuple) -> str:
        names = [k for k in sorted(feats) if feats[k].WhichOneof("kind") in kinds]
        return next((k for h in hints for k in names if h in k.lower()), names[0] if names else "FEATURE")
    return (f"--x_key={pick(('bytes_list', 'float_list'), ('encoded', 'image', 'x'))} "
            f"--y_key={pick(('int64_list', 'float_list'), ('label', 'target', 'class', 'y'))}")


class ShardedAsTFRecords:
    """For the one-input layouts of other files: `distft shard` writes their records as
    TFRecords of `x` and `y` (`chunks`: a file's (x, y) rows, class names as ids)."""

    def shards(self) -> Layout:
        return TFRecordLayout(self.x_kind, self.x_shape, self.y_shape, self.y_float, self.x_dtype,
                              self.pixel_scale)

    def examples(self, path: str, classes: list, chunk: int) -> Iterator[tuple[list[bytes], np.ndarray]]:
        shards = self.shards()
        for x, y in self.chunks(path, classes, chunk):
            yield shards.serialize(x, y)

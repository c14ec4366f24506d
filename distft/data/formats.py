"""Record formats: how to find a file set's schema, count it, and read it with tf.data.

Supported: TFRecord (`x`: float list or `image`: encoded PNG/JPEG bytes; `y`: int64 or
float; GZIP-compressed files are recognised), `.npz` (arrays `x`, `y`) and `.csv`
(a header, one label column, the other columns numeric).

Example:
    schema = infer_schema("shards/part-0.tfrecord", label="label")
    ds = read_records(tf.constant(path), schema)   # raw records
    x, y = decode_batch(ds.batch(32).take(1).get_single_element(), schema, (8, 8, 1))
"""
from __future__ import annotations

import csv
import gzip
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from distft.errors import DistftError

FORMATS = {".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".tfrec": "tfrecord",
           ".gz": "tfrecord", ".npz": "npz", ".csv": "csv"}


@dataclass(frozen=True)
class Schema:
    """What a record holds; the same for every file of a data set."""

    format: str  # tfrecord | npz | csv
    x_kind: str  # float | image
    x_size: int  # floats per record (0 for images)
    y_float: bool  # regression target rather than class index
    compression: str = ""  # "" or GZIP (TFRecord)
    columns: tuple = ()  # CSV: all column names, in file order
    label_index: int = -1  # CSV: position of the label column


def format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise DistftError(f"{path}: unknown data format '{ext}': use .tfrecord, .npz or .csv files")
    return FORMATS[ext]


def infer_schema(path: str, label: str = "label") -> Schema:
    """Read the first record of `path` to learn the schema."""
    fmt = format_of(path)
    try:
        if fmt == "tfrecord":
            return _tfrecord_schema(path)
        if fmt == "npz":
            return _npz_schema(path)
        return _csv_schema(path, label)
    except DistftError:
        raise
    except Exception as e:  # a reader's own error: name the file and the problem
        raise DistftError(f"{path}: cannot read as {fmt} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else 'corrupt'}): check the file") from e


def _tfrecord_schema(path: str) -> Schema:
    with open(path, "rb") as f:
        compression = "GZIP" if f.read(2) == b"\x1f\x8b" else ""
    first = next(iter(tf.data.TFRecordDataset(path, compression_type=compression).take(1)), None)
    if first is None:
        raise DistftError(f"{path}: TFRecord file has no records: remove it or regenerate it")
    example = tf.train.Example.FromString(first.numpy())
    feats = example.features.feature
    if "y" not in feats:
        raise DistftError(f"{path}: records have no 'y' feature (found {sorted(feats)}): "
                          "write labels as feature 'y'")
    y_float = feats["y"].WhichOneof("kind") == "float_list"
    if "image" in feats:
        return Schema("tfrecord", "image", 0, y_float, compression)
    if "x" not in feats or feats["x"].WhichOneof("kind") != "float_list":
        raise DistftError(f"{path}: records need feature 'x' (float list) or 'image' (bytes), "
                          f"found {sorted(feats)}")
    return Schema("tfrecord", "float", len(feats["x"].float_list.value), y_float, compression)


def _npz_schema(path: str) -> Schema:
    with np.load(path) as z:
        if "x" not in z.files or "y" not in z.files:
            raise DistftError(f"{path}: .npz needs arrays 'x' and 'y' (found {z.files})")
        x, y = z["x"], z["y"]
    if len(x) != len(y):
        raise DistftError(f"{path}: 'x' has {len(x)} rows but 'y' has {len(y)}: they must match")
    if not (np.issubdtype(x.dtype, np.number) and np.issubdtype(y.dtype, np.number)):
        raise DistftError(f"{path}: 'x' and 'y' must be numeric arrays (got {x.dtype}, {y.dtype})")
    return Schema("npz", "float", int(np.prod(x.shape[1:])), bool(np.issubdtype(y.dtype, np.floating)
                                                                   and not np.all(y == np.round(y))))


def _csv_schema(path: str, label: str) -> Schema:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = [r for _, r in zip(range(100), reader)]
    if not header:
        raise DistftError(f"{path}: CSV file is empty: it needs a header row")
    if label not in header:
        raise DistftError(f"{path}: no label column '{label}' (columns: {', '.join(header)}): "
                          "pass --label=COLUMN")
    li = header.index(label)
    y_float = False
    for n, row in enumerate(rows, start=2):
        for name, value in zip(header, row):
            try:
                v = float(value)
            except ValueError:
                raise DistftError(f"{path}:{n}: column '{name}' is not numeric ({value!r}): "
                                  "CSV features and labels must be numbers") from None
            if name == label and v != int(v):
                y_float = True
    return Schema("csv", "float", len(header) - 1, y_float, columns=tuple(header), label_index=li)


def read_records(path: tf.Tensor, schema: Schema) -> tf.data.Dataset:
    """The records of one file, undecoded (TFRecord: serialized Examples; else (x, y))."""
    if schema.format == "tfrecord":
        return tf.data.TFRecordDataset(path, compression_type=schema.compression,
                                       buffer_size=1 << 20)
    if schema.format == "csv":
        n = len(schema.columns)
        ds = tf.data.experimental.CsvDataset(path, [tf.float32] * n, header=True)
        li = schema.label_index
        return ds.map(lambda *cols: (tf.stack([c for i, c in enumerate(cols) if i != li]),
                                     cols[li]))
    return tf.data.Dataset.from_generator(
        _npz_rows, args=(path,),
        output_signature=(tf.TensorSpec([schema.x_size], tf.float32), tf.TensorSpec([], tf.float32)))


def _npz_rows(path: bytes, chunk: int = 4096):
    with np.load(path.decode()) as z:
        x, y = z["x"], z["y"]
        for i in range(0, len(y), chunk):
            xs = x[i:i + chunk].reshape(len(x[i:i + chunk]), -1).astype(np.float32)
            yield from zip(xs, y[i:i + chunk].astype(np.float32))


def label_of(record, schema: Schema) -> tf.Tensor:
    """The label of one raw record, as float32 (cheap: TFRecord images are not decoded)."""
    if schema.format == "tfrecord":
        dtype = tf.float32 if schema.y_float else tf.int64
        y = tf.io.parse_single_example(record, {"y": tf.io.FixedLenFeature([], dtype)})["y"]
        return tf.cast(y, tf.float32)
    return tf.cast(record[1], tf.float32)


def decode_batch(batch, schema: Schema, input_shape: tuple) -> tuple[tf.Tensor, tf.Tensor]:
    """Turn a batch of raw float records into model inputs `x` (float32, input_shape) and
    labels. (Image records are decoded one by one: see data/images.py.)"""
    y_dtype = tf.float32 if schema.y_float else tf.int64
    if schema.format == "tfrecord":
        spec = {"y": tf.io.FixedLenFeature([], y_dtype), "x": tf.io.FixedLenFeature([schema.x_size], tf.float32)}
        parsed = tf.io.parse_example(batch, spec)
        x, y = parsed["x"], parsed["y"]
    else:
        x, y = batch
        y = tf.cast(y, y_dtype)
    return tf.reshape(x, (-1, *input_shape)), y

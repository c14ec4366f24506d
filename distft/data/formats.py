"""Record layouts: one small type for each way files hold records (see `Layout`), which
learns itself from a file, reads a file with tf.data, counts and checks it, and decodes its
records for a model. `infer_layout` picks the type by the file's extension (FORMATS), then
reads the file's start: distft's one-input layouts (`XY`: TFRecordLayout, NpzLayout,
CsvLayout, ImageFolderLayout) or, for models with several inputs or outputs, named fields
(`Named`: NamedTFRecordLayout, NamedNpzLayout, NamedCsvLayout). A new file layout is a
subclass and its extensions in FORMATS.
"""
from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Optional

import numpy as np
import tensorflow as tf

from distft.data import columns, images, named
from distft.errors import DistftError, root_cause

X_KEYS = ("x", "image")  # the features distft looks for by default, in this order
CHUNK = 4096  # .npz rows per read
Decoder = Optional[Callable]


@dataclass(frozen=True)
class Layout:
    """What every record of a data set holds, and how to read, count, check and decode its files.

    Example:
        layout = infer_layout("train.npz")                # NpzLayout(x_kind='pixels', ...)
        records = layout.read(tf.constant("train.npz"))   # raw records
        per_record, per_batch = layout.decoders((8, 8, 1), classes=())   # (x, y) for a model
    """

    format: ClassVar[str]  # as errors name it: tfrecord | npz | csv | folder

    @property
    def has_images(self) -> bool:
        """Records hold images: as x, or (named, bound to a model) for an image input."""
        raise NotImplementedError

    @property
    def pixel_scales(self) -> tuple[float, ...]:
        """Each image's factor to [0, 255] (0: not pixel values, fed as they are)."""
        raise NotImplementedError

    @property
    def target_shape(self):
        """The targets' shape per record; named: each field's, by name."""
        raise NotImplementedError

    @property
    def width(self) -> int:
        """How many targets `bounds` bounds a record."""
        raise NotImplementedError

    @property
    def output_classes(self) -> dict[str, tuple]:
        """Named CSV: the class names of each output that reads them, in id order."""
        return {}

    def describe_y(self) -> str:
        return "(N,)"

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        """The records of one file, undecoded; `known`: this file's row of `locate`."""
        raise NotImplementedError

    def locate(self, files: tuple[str, ...]) -> Optional[np.ndarray]:
        """Per file, what `read` needs beyond its path (None: nothing)."""
        return None

    def count(self, path: str) -> int:
        """Records in one file, without decoding them."""
        raise NotImplementedError

    def count_cheaply(self, path: str, first: str) -> Optional[tuple[int, list[np.ndarray]]]:
        """(records, each target array) when the targets can be read without the records
        (after checking the file is laid out as `first`); None: count by reading the records."""
        return None

    def bounds(self, record) -> tuple[tf.Tensor, tf.Tensor]:
        """The lowest and highest value of each of a raw record's targets (float32 vectors)."""
        raise NotImplementedError

    def class_names(self, path: str) -> tuple[tuple[str, ...], ...]:
        """The class names of each target that holds names, in one file."""
        return ()

    def misfit(self, path: str) -> None:
        """Raise the DistftError naming what in a file that reads does not fit (if found)."""

    def check_input(self, shape: tuple) -> None:
        """The records must fit a model input of `shape`; one error line otherwise."""

    def decoders(self, input_shape: tuple, classes: tuple) -> tuple[Decoder, Decoder]:
        """(record decoder, batch decoder): to (x, y) for the model, either may be None."""
        raise NotImplementedError

    def on_images(self, x, fn: Callable[[tf.Tensor], tf.Tensor]):
        """A decoded record's `x` with `fn` applied to its image(s)."""
        raise NotImplementedError

    def shards(self) -> Layout:
        """The layout of the records `distft shard` writes of this one."""
        raise NotImplementedError

    def examples(self, path: str, classes: list, chunk: int) -> Iterator[tuple[list[bytes], np.ndarray]]:
        """A file's records as serialized shard Examples and their labels, `chunk` at a time."""
        raise NotImplementedError


@dataclass(frozen=True)
class XY(Layout):
    """distft's one-input layouts: features or an image `x`, and a target `y`, a record."""

    x_kind: str = "float"  # float (features) | image (encoded PNG/JPEG) | pixels (an H,W,C array)
    x_shape: tuple = ()  # float: (F,); pixels: (H, W, C); image: ()
    y_shape: tuple = ()  # () for one value a record, (K,) for K
    y_float: bool = False  # float targets (regression, soft labels) rather than integers
    x_dtype: str = "float32"  # pixels: uint8 or float32
    pixel_scale: float = 1.0  # pixels: factor to [0, 255]; 0: not pixel values (--preprocess=none)

    @property
    def x_size(self) -> int:
        return math.prod(self.x_shape)

    @property
    def has_images(self) -> bool:
        return self.x_kind in ("image", "pixels")

    @property
    def pixel_scales(self) -> tuple[float, ...]:
        return (self.pixel_scale,)

    @property
    def target_shape(self) -> tuple:
        return self.y_shape

    width = 1

    def describe_y(self) -> str:
        return f"(N, {', '.join(map(str, self.y_shape))})" if self.y_shape else "(N,)"

    def split(self, *record) -> tuple[tf.Tensor, tf.Tensor]:
        """(x, y) of a raw record, or of a batch of them."""
        return record

    def y_of(self, record) -> tf.Tensor:
        """The target of a raw record (cheap: images are not decoded)."""
        return record[1]

    def bounds(self, record) -> tuple[tf.Tensor, tf.Tensor]:
        y = tf.cast(self.y_of(record), tf.float32)
        return tf.reduce_min(y)[None], tf.reduce_max(y)[None]

    def target(self, y: tf.Tensor, classes: tuple) -> tf.Tensor:
        """Targets as the model takes them: int64 ids or float32 values."""
        return tf.cast(y, tf.float32 if self.y_float else tf.int64)

    def check_input(self, shape: tuple) -> None:
        if self.x_kind == "float" and math.prod(shape) != self.x_size:
            raise DistftError(f"--data records have {self.x_size} features but the model's input "
                              f"{shape} needs {math.prod(shape)}: use data made for this model")
        if self.has_images and len(shape) != 3:
            raise DistftError(f"--data holds images but the model's input is {shape}: "
                              "use an image model (H,W,C input)")
        if self.x_kind == "pixels" and {self.x_shape[-1], shape[-1]} not in ({1, 3}, {shape[-1]}):
            raise DistftError(f"--data images have {self.x_shape[-1]} channels but the model's input "
                              f"{shape} has {shape[-1]}: use images with 1 or 3 channels")

    def decoders(self, input_shape: tuple, classes: tuple) -> tuple[Decoder, Decoder]:
        """Images: record -> (float32 image in [0, 255] of `input_shape`, target), one by one,
        so that augmentation and `--preprocess` follow; features: a batch at a time."""
        def image(x: tf.Tensor) -> tf.Tensor:
            if self.x_kind == "image":
                return images.decode(x, input_shape)
            if x.dtype == tf.string:  # raw pixels in a TFRecord
                x = tf.reshape(tf.io.decode_raw(x, tf.uint8), self.x_shape)
            return images.from_pixels(x, input_shape, self.pixel_scale)

        def record(*raw):
            x, y = self.split(*raw)
            return image(x), self.target(y, classes)

        def batch(*raw):
            x, y = self.split(*raw)
            return tf.reshape(x, (-1, *input_shape)), self.target(y, classes)

        return (record, None) if self.has_images else (None, batch)

    def on_images(self, x, fn: Callable[[tf.Tensor], tf.Tensor]):
        return fn(x)

    def shards(self) -> Layout:
        return TFRecordLayout(self.x_kind, self.x_shape, self.y_shape, self.y_float, self.x_dtype,
                              self.pixel_scale)

    def examples(self, path: str, classes: list, chunk: int) -> Iterator[tuple[list[bytes], np.ndarray]]:
        """.npz and CSV: from their `chunks`, (x, y) rows with class names as ids."""
        shards = self.shards()
        for x, y in self.chunks(path, classes, chunk):
            yield shards.serialize(x, y)


@dataclass(frozen=True)
class Named(Layout):
    """Named fields, for models with several inputs or outputs (see data/named.py); `bind`
    matches them to a model."""

    fields: tuple = ()  # every array, feature or column group, as named.Field
    inputs: tuple = ()  # bound to a model: its inputs, as named.Port
    outputs: tuple = ()  # bound to a model: the outputs that read a target
    item: ClassVar[str]  # what a field is, in errors: array | feature | column

    @property
    def has_images(self) -> bool:
        return any(p.image for p in self.inputs)

    @property
    def pixel_scales(self) -> tuple[float, ...]:
        image_inputs = {p.name for p in self.inputs if p.image}
        return tuple(f.pixel_scale for f in self.fields if f.name in image_inputs)

    @property
    def target_shape(self) -> dict[str, tuple]:
        return named.target_shapes(self.fields)

    @property
    def width(self) -> int:
        return len(self.outputs)

    @property
    def output_classes(self) -> dict[str, tuple]:
        return {f.name: f.classes for f in self.fields if f.classes and f.name in self.outputs}

    @property
    def text_outputs(self) -> list[str]:
        """The outputs read whose field holds class names."""
        return [f.name for f in self.fields if f.dtype == columns.TEXT and f.name in self.outputs]

    def used(self) -> tuple[str, ...]:
        """The fields the bound model reads, inputs first."""
        return tuple(p.name for p in self.inputs) + self.outputs

    def bind(self, ports: tuple, targets: bool, data: str) -> Named:
        """Bound to a model's `ports` (see named.model_ports, named.bind)."""
        inputs, outputs = named.bind(self.fields, *ports, targets, data, self.item)
        return dataclasses.replace(self, inputs=inputs, outputs=outputs)

    def with_classes(self, classes: dict[str, tuple]) -> Named:
        """The fields named in `classes` with those class names."""
        return dataclasses.replace(self, fields=tuple(
            dataclasses.replace(f, classes=tuple(classes[f.name])) if f.name in classes else f
            for f in self.fields))

    def values(self, record, names: tuple[str, ...]) -> dict:
        """{name: value} of a raw record's fields `names`."""
        return record

    def bounds(self, record) -> tuple[tf.Tensor, tf.Tensor]:
        return named.target_bounds(self.values(record, self.outputs), self.fields, self.outputs)

    def decoders(self, input_shape: tuple, classes: tuple) -> tuple[Decoder, Decoder]:
        decode = named.record_decoder(self.fields, self.inputs, self.outputs,
                                      lambda r: self.values(r, self.used()))
        return decode, None

    def on_images(self, x, fn: Callable[[tf.Tensor], tf.Tensor]):
        return named.on_images(self.inputs, x, fn)


# What reading a file's bytes raises when they cannot be parsed (a damaged file).
UNREADABLE = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def damaged(path: str, fmt: str, error: BaseException) -> DistftError:
    """The error for a file whose bytes cannot be parsed at all."""
    text = root_cause(getattr(error, "message", None) or str(error))
    return DistftError(f"{path}: damaged {fmt} file ({type(error).__name__}: {text}): "
                       "regenerate or remove this file")


# --- TFRecord ---------------------------------------------------------------------------------

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


# --- .npz -------------------------------------------------------------------------------------

class _NpzFile:
    """What the .npz layouts share: the arrays read, located in each file for reading in graph."""

    format = "npz"
    item = "array"
    arrays: tuple

    def locate(self, files: tuple[str, ...]) -> Optional[np.ndarray]:
        """Each file's offsets of the arrays read (see npz_offsets); None when one is compressed,
        then all go through a generator (or, named and not bound yet, when none is read)."""
        offsets = [npz_offsets(f, self.arrays) for f in files] if self.arrays else [None]
        return np.array(offsets, np.int64) if all(offsets) else None


@dataclass(frozen=True)
class NpzLayout(_NpzFile, XY):
    """Arrays `x` (N, F) features or (N, H, W[, C]) images (uint8 or float), and `y` (N,) or (N, K)."""

    stored: tuple = ()  # the arrays' dtypes as saved, e.g. ("|u1", "<i8")
    arrays = ("x", "y")

    @classmethod
    def infer(cls, path: str, label: str, x_key: Optional[str], y_key: Optional[str],
              allow_named: bool) -> Layout:
        if allow_named and not {"x", "y"} <= set(npz_arrays(path)):
            return cls.named(path)
        (xs, xd), (ys, yd) = npz_headers(path)
        if len(xs) == 2 or (len(xs) == 3 and xd != np.uint8):
            x_kind, x_shape, x_dtype, scale = "float", (math.prod(xs[1:]),), "float32", 1.0
        elif len(xs) in (3, 4):  # images: (N, H, W) grayscale or (N, H, W, C)
            x_kind, x_shape = "pixels", (*xs[1:3], xs[3] if len(xs) == 4 else 1)
            x_dtype = "uint8" if xd == np.uint8 else "float32"
            scale = 1.0 if xd == np.uint8 else _pixel_scale(path)
        else:
            raise DistftError(f"{path}: array 'x' has shape {xs}: expected (N, F) features or "
                              "(N, H, W, C) images")
        if len(ys) not in (1, 2):
            raise DistftError(f"{path}: array 'y' has shape {ys}: expected (N,) or (N, K) targets")
        y_float = False
        if yd.kind == "f":
            with np.load(path) as z:
                y = z["y"]
            y_float = bool(not np.all(y == np.round(y)))
        return cls(x_kind, x_shape, tuple(ys[1:]), y_float, x_dtype, scale, stored=(xd.str, yd.str))

    @classmethod
    def named(cls, path: str) -> Named:
        arrays = npz_arrays(path)
        fields = named.npz_fields(path, arrays, lambda n: next(npz_chunks(path, 1024, (n,)))[0])
        return NamedNpzLayout(fields=fields, stored=tuple(d.str for _, d in arrays.values()))

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        """An uncompressed file is read by TensorFlow given its offsets (`known`), else by a
        Python generator."""
        x_type = tf.uint8 if self.x_dtype == "uint8" else tf.float32
        y_type = tf.float32 if self.y_float else tf.int64
        if known is not None:
            x, y = _npz_in_graph(path, known, zip(self.stored, (self.x_shape, self.y_shape)))
            return tf.data.Dataset.from_tensor_slices((tf.cast(x, x_type), tf.cast(y, y_type)))
        rows = max(1, (32 << 20) // (4 * self.x_size))  # chunks of about 32 MB

        def generate(p: bytes):
            for x, y in npz_chunks(p.decode(), rows):
                yield x.reshape(len(x), *self.x_shape).astype(x_type.as_numpy_dtype), \
                    y.astype(y_type.as_numpy_dtype)

        return tf.data.Dataset.from_generator(generate, args=(path,), output_signature=(
            tf.TensorSpec([None, *self.x_shape], x_type), tf.TensorSpec([None, *self.y_shape], y_type))).unbatch()

    def count(self, path: str) -> int:
        return npz_headers(path)[1][0][0]

    def count_cheaply(self, path: str, first: str) -> Optional[tuple[int, list[np.ndarray]]]:
        # Headers only: the first file's are read again rather than kept (a few hundred bytes).
        for name, (shape, dtype), (want, want_dtype) in zip("xy", npz_headers(path), npz_headers(first)):
            if shape[1:] != want[1:] or dtype != want_dtype:
                raise DistftError(f"{path}: array '{name}' has rows of shape {shape[1:]} and type "
                                  f"{dtype} but {first} has {want[1:]} and {want_dtype}: "
                                  "all files need the same layout")
        with np.load(path) as z:
            y = z["y"]
        return len(y), [y]

    def chunks(self, path: str, classes: list, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return npz_chunks(path, chunk)


@dataclass(frozen=True)
class NamedNpzLayout(_NpzFile, Named):
    """Arrays named as a model's inputs and outputs."""

    stored: tuple = ()  # each field's dtype as saved, in `fields` order

    @property
    def arrays(self) -> tuple[str, ...]:
        return self.used()

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        by_name = {f.name: f for f in self.fields}
        if known is not None:
            stored = dict(zip(by_name, self.stored))
            return tf.data.Dataset.from_tensor_slices(dict(zip(self.used(), _npz_in_graph(
                path, known, ((stored[n], by_name[n].shape) for n in self.used())))))
        spec = {n: tf.TensorSpec([None, *by_name[n].shape], by_name[n].dtype) for n in self.used()}
        return tf.data.Dataset.from_generator(
            lambda p: (dict(zip(self.used(), rows)) for rows in npz_chunks(p.decode(), CHUNK, self.used())),
            args=(path,), output_signature=spec).unbatch()

    def count(self, path: str) -> int:
        return next(iter(npz_arrays(path).values()))[0][0]

    def count_cheaply(self, path: str, first: str) -> Optional[tuple[int, list[np.ndarray]]]:
        """The arrays the model reads must have the first file's rows."""
        arrays = npz_arrays(path)
        for f in self.fields:
            if f.name not in self.used():
                continue
            if f.name not in arrays:
                raise DistftError(f"{path}: no array '{f.name}' (it has {', '.join(arrays)}): every "
                                  "file needs the arrays the model reads")
            shape, dtype = arrays[f.name]
            if shape[1:] != f.shape or dtype.name != f.dtype:
                raise DistftError(f"{path}: array '{f.name}' has rows of shape {shape[1:]} and type "
                                  f"{dtype} but {first} has {f.shape} and {f.dtype}: "
                                  "all files need the same layout")
        rows = {arrays[n][0][0] for n in self.used()}
        if len(rows) > 1:
            raise DistftError(f"{path}: the arrays {', '.join(self.used())} have different numbers "
                              "of rows: each array needs one row a record")
        with np.load(path) as z:
            return rows.pop(), [z[name] for name in self.outputs]

    def shards(self) -> Layout:
        return NamedTFRecordLayout(fields=named.shard_fields(self.fields))

    def examples(self, path: str, classes: list, chunk: int) -> Iterator[tuple[list[bytes], np.ndarray]]:
        names = tuple(f.name for f in self.fields)
        fields = self.shards().fields
        for arrays in npz_chunks(path, chunk, names):
            rows = [dict(zip(names, row)) for row in zip(*arrays)]
            yield [named.example(fields, row) for row in rows], np.zeros(len(rows))


def npz_headers(path: str) -> tuple[tuple[tuple, np.dtype], tuple[tuple, np.dtype]]:
    """((shape, dtype) of `x`, (shape, dtype) of `y`), read from the headers, checked."""
    arrays = npz_arrays(path)
    if "x" not in arrays or "y" not in arrays:
        raise DistftError(f"{path}: .npz needs arrays 'x' and 'y' (found {list(arrays)}): save with "
                          "np.savez(path, x=features, y=targets)")
    (xs, xd), (ys, yd) = arrays["x"], arrays["y"]
    for name, dtype in (("x", xd), ("y", yd)):
        if dtype.kind not in "biuf":
            raise DistftError(f"{path}: array '{name}' is {dtype}, expected numbers: convert it "
                              "(class names belong in a CSV label column)")
    if xs[0] != ys[0]:
        raise DistftError(f"{path}: 'x' has {xs[0]} rows but 'y' has {ys[0]}: they must match")
    return (xs, xd), (ys, yd)


def npz_arrays(path: str) -> dict[str, tuple[tuple, np.dtype]]:
    """{name: (shape, dtype)} of every array of an .npz file, read from the headers."""
    with zipfile.ZipFile(path) as z:
        arrays = {}
        for member in z.namelist():
            if member.endswith(".npy"):
                with z.open(member) as f:
                    arrays[member[:-4]] = _npy_header(f, path, member[:-4])
    return arrays


def _npy_header(f, path: str, name: str) -> tuple[tuple, np.dtype]:
    fmt = np.lib.format
    version = fmt.read_magic(f)
    shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
    if fortran:
        raise DistftError(f"{path}: array '{name}' is Fortran-ordered: save it with "
                          f"np.ascontiguousarray({name})")
    if not shape:
        raise DistftError(f"{path}: array '{name}' is a scalar: expected one row a record")
    return shape, dtype


def _pixel_scale(path: str) -> float:
    """Float images: 255 for values in [0, 1], 1 for [0, 255], 0 for anything else (judged
    from the first rows)."""
    x, _ = next(npz_chunks(path, 1024))
    lo, hi = float(x.min()), float(x.max())
    return 255.0 if lo >= 0 and hi <= 1 else 1.0 if lo >= 0 and hi <= 255 else 0.0


def npz_chunks(path: str, chunk: int = CHUNK, names: tuple = ("x", "y")) -> Iterator[tuple[np.ndarray, ...]]:
    """Rows of the arrays `names` (default `x` and `y`) in their stored shapes and types, `chunk`
    at a time, read from the zip members (no whole-array load)."""
    with zipfile.ZipFile(path) as z:
        members = [z.open(f"{name}.npy") for name in names]
        try:
            headers = [_npy_header(f, path, name) for f, name in zip(members, names)]
            for start in range(0, headers[0][0][0], chunk):
                n = min(chunk, headers[0][0][0] - start)
                rows = []
                for f, (shape, dtype) in zip(members, headers):
                    size = math.prod(shape[1:])
                    a = np.frombuffer(f.read(n * size * dtype.itemsize), dtype)
                    if len(a) != n * size:
                        raise EOFError(f"arrays end early, at row {start + len(a) // max(1, size)}")
                    rows.append(a.reshape(n, *shape[1:]))
                yield tuple(rows)
        finally:
            for f in members:
                f.close()


def npz_offsets(path: str, names: tuple = ("x", "y")) -> Optional[tuple[int, ...]]:
    """(start, bytes) of each array's data in the file (default `x`'s and `y`'s), for reading
    them without numpy; None when an array is compressed (np.savez_compressed), big-endian, or
    of a type tf.io.decode_raw does not read."""
    try:
        return _npz_offsets(path, names)
    except DistftError:
        raise
    except UNREADABLE as e:
        raise damaged(path, "npz", e) from None


def _npz_offsets(path: str, names: tuple) -> Optional[tuple[int, ...]]:
    out: list[int] = []
    with zipfile.ZipFile(path) as z, open(path, "rb") as f:
        for name in names:
            info = z.getinfo(f"{name}.npy")
            if info.compress_type != zipfile.ZIP_STORED:
                return None
            f.seek(info.header_offset + 26)  # the local header's name and extra field lengths
            name_len, extra_len = struct.unpack("<HH", f.read(4))
            member = info.header_offset + 30 + name_len + extra_len
            f.seek(member)
            _, dtype = _npy_header(f, path, name)
            if dtype.str[0] == ">" or dtype.str[1:] not in RAW_TYPES:
                return None
            out += [f.tell(), info.file_size - (f.tell() - member)]
    return tuple(out)


RAW_TYPES = {"u1": tf.uint8, "i1": tf.int8, "u2": tf.uint16, "i2": tf.int16, "i4": tf.int32,
             "i8": tf.int64, "f2": tf.float16, "f4": tf.float32, "f8": tf.float64, "b1": tf.bool}


def _npz_in_graph(path: tf.Tensor, offsets: tf.Tensor, arrays) -> list[tf.Tensor]:
    """An uncompressed .npz's `arrays` ((stored dtype, shape per row) each, at `offsets`), read
    and cut by TensorFlow's own ops (no Python per chunk)."""
    contents = tf.io.read_file(path)
    return [tf.reshape(tf.io.decode_raw(tf.strings.substr(contents, offsets[2 * i], offsets[2 * i + 1]),
                                        RAW_TYPES[stored[1:]]), [-1, *shape])
            for i, (stored, shape) in enumerate(arrays)]


# --- CSV --------------------------------------------------------------------------------------

class _CsvFile:
    """What the CSV layouts share: a header, rows checked cell by cell (`cell_problem`: what in
    a value of a column does not fit), class-name columns."""

    format = "csv"
    item = "column"
    columns: tuple  # all column names, in file order
    label_columns: tuple  # positions of the label (one-input) or class-name (named) columns

    def count(self, path: str) -> int:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            lines, last = 0, b"\n"
            for block in iter(lambda: f.read(1 << 22), b""):
                lines, last = lines + block.count(b"\n"), block[-1:]
        return lines + (last != b"\n") - 1  # minus the header

    def misfit(self, path: str) -> None:
        for _ in self.rows(path):  # raises, naming the line, for a row that does not fit
            pass

    def row_problem(self, row: list) -> Optional[str]:
        """What in one row does not fit (None if it fits)."""
        if len(row) != len(self.columns):
            return f"{len(row)} fields but the header has {len(self.columns)}: fix the row"
        return next(filter(None, (self.cell_problem(name, value, i in self.label_columns)
                                  for i, (name, value) in enumerate(zip(self.columns, row)))), None)

    def rows(self, path: str) -> Iterator[list]:
        """The rows of a file, each checked (DistftError naming the line)."""
        with _open_text(path) as f:
            reader = csv.reader(f)
            next(reader)
            for n, row in enumerate(reader, start=2):
                problem = self.row_problem(row)
                if problem:
                    raise DistftError(f"{path}:{n}: {problem}")
                yield row

    def labels(self, path: str, column: Optional[str] = None) -> Iterator[str]:
        """The values of `column` (default: the label column), row by row (for class names)."""
        li = self.columns.index(column) if column else self.label_columns[0]
        return (row[li] for row in self.rows(path))


@dataclass(frozen=True)
class CsvLayout(_CsvFile, XY):
    """A header, label column(s) (`label="a,b"` for several), the other columns numeric; a
    single label column may hold class names instead of numbers."""

    columns: tuple = ()
    label_columns: tuple = ()
    y_names: bool = False  # the label column holds class names

    @classmethod
    def infer(cls, path: str, label: str, x_key: Optional[str], y_key: Optional[str],
              allow_named: bool) -> Layout:
        header, rows = _csv_head(path)
        labels = [c.strip() for c in label.split(",") if c.strip()]
        missing = [c for c in labels if c not in header]
        if missing:
            raise DistftError(f"{path}: no label column {', '.join(repr(c) for c in missing)} (columns: "
                              f"{', '.join(header)}): pass --label=COLUMN[,COLUMN...]")
        label_columns = tuple(header.index(c) for c in labels)
        names = len(labels) == 1 and any(columns.number(r[label_columns[0]]) is None for r in rows
                                         if len(r) == len(header))
        layout = cls("float", (len(header) - len(labels),), () if len(labels) == 1 else (len(labels),),
                     columns=tuple(header), label_columns=label_columns, y_names=names)
        y_float = False
        for n, row in enumerate(rows, start=2):
            problem = layout.row_problem(row)
            if problem:
                raise DistftError(f"{path}:{n}: {problem}")
            y_float |= not names and any(float(row[i]) != int(float(row[i])) for i in label_columns)
        return dataclasses.replace(layout, y_float=y_float)

    @classmethod
    def named(cls, path: str) -> Named:
        """The named columns (see data/columns.py); the class-name columns as label columns."""
        header, rows = _csv_head(path)
        fields = columns.csv_fields(header, rows)
        texts = {c for f in fields if f.dtype == columns.TEXT for c in columns.columns_of(f)}
        return NamedCsvLayout(fields=fields, columns=tuple(header),
                              label_columns=tuple(i for i, c in enumerate(header) if c in texts))

    def cell_problem(self, name: str, value: str, label: bool) -> Optional[str]:
        number = columns.number(value)
        if not label and number is None:
            return (f"column '{name}' is not numeric ({value!r}): feature columns must be numbers; "
                    f"if it is the label, pass --label={name}")
        if label and self.y_names and number is not None:
            return (f"label column '{name}' mixes numbers ({value!r}) and class names: use one kind "
                    "in the whole column")
        if label and not self.y_names and number is None:
            return f"label column '{name}' is not numeric ({value!r}): labels must be numbers" + (
                "" if len(self.label_columns) > 1 else " or, in the whole column, class names")
        return None

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        """(x, y) records, where a class-name label is still a string."""
        labels = set(self.label_columns)
        types = [tf.string if i in labels and self.y_names else tf.float32 for i in range(len(self.columns))]

        def split(*cols):
            y = [cols[i] for i in self.label_columns]
            return (tf.stack([c for i, c in enumerate(cols) if i not in labels]),
                    y[0] if not self.y_shape else tf.stack(y))

        return tf.data.experimental.CsvDataset(path, types, header=True).map(split)

    def y_of(self, record) -> tf.Tensor:
        return tf.constant(0.0) if self.y_names else record[1]  # class names: counted apart

    def target(self, y: tf.Tensor, classes: tuple) -> tf.Tensor:
        """Class names to their index in `classes`."""
        return named.class_ids(y, classes) if self.y_names else super().target(y, classes)

    def class_names(self, path: str) -> tuple[tuple[str, ...], ...]:
        return (tuple(sorted(set(self.labels(path)))),) if self.y_names else ()

    def chunks(self, path: str, classes: list, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        labels = list(self.label_columns)
        rows = self.rows(path)
        while part := [r for _, r in zip(range(chunk), rows)]:
            table = np.array(part, object)
            y = table[:, labels]
            y = np.vectorize(classes.index)(y[:, 0]) if self.y_names else y.astype(np.float64)
            yield np.delete(table, labels, axis=1).astype(np.float32), y


@dataclass(frozen=True)
class NamedCsvLayout(_CsvFile, Named):
    """Columns named as a model's inputs and outputs (see data/columns.py)."""

    columns: tuple = ()
    label_columns: tuple = ()

    @functools.cached_property
    def read_columns(self) -> set[str]:
        """The columns of the fields the bound model reads."""
        return {c for f in self.fields if f.name in self.used() for c in columns.columns_of(f)}

    def bind(self, ports: tuple, targets: bool, data: str) -> Named:
        columns.check(self.fields, *ports, targets, data)
        return super().bind(ports, targets, data)

    def cell_problem(self, name: str, value: str, label: bool) -> Optional[str]:
        if name not in self.read_columns:
            return None
        number = columns.number(value)
        if not label and number is None:
            return f"column '{name}' is not numeric ({value!r}): the first rows held numbers"
        if label and number is not None:
            return (f"column '{name}' mixes numbers ({value!r}) and class names: use one kind in "
                    "the whole column")
        return None

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        """{field: value} records for the fields the bound model reads."""
        fields = {f.name: f for f in self.fields}
        used = [fields[n] for n in dict.fromkeys(self.used())]
        at = sorted({self.columns.index(c) for f in used for c in columns.columns_of(f)})
        types = [tf.string if i in self.label_columns else tf.float32 for i in at]

        def record(*values):
            by_column = dict(zip((self.columns[i] for i in at), values))
            return {f.name: tf.stack([by_column[c] for c in columns.columns_of(f)]) if f.shape
                    else by_column[f.name] for f in used}

        return tf.data.experimental.CsvDataset(path, types, header=True, select_cols=at).map(record)

    def class_names(self, path: str) -> tuple[tuple[str, ...], ...]:
        return tuple(tuple(set(self.labels(path, n))) for n in self.text_outputs)


def _csv_head(path: str) -> tuple[list[str], list[list[str]]]:
    """The header and the first 100 rows of a CSV file."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = [r for _, r in zip(range(100), reader)]
    if not header:
        raise DistftError(f"{path}: CSV file is empty: it needs a header row")
    return header, rows


def _open_text(path: str):
    return (gzip.open if path.endswith(".gz") else open)(path, "rt", newline="")


# --- image folders ----------------------------------------------------------------------------

@dataclass(frozen=True)
class ImageFolderLayout(XY):
    """A folder of class subfolders of JPEG/PNG images: a file a record, (bytes, class id)."""

    format = "folder"
    x_kind: str = "image"

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        """`known`: the image's class id."""
        return tf.data.Dataset.from_tensors((tf.io.read_file(path), known))


# --- finding a file's layout ------------------------------------------------------------------

FORMATS = {".tfrecord": TFRecordLayout, ".tfrecords": TFRecordLayout, ".tfrec": TFRecordLayout,
           ".gz": TFRecordLayout, ".npz": NpzLayout, ".csv": CsvLayout}


def layout_type(path: str) -> type:
    """The layout class of a file, by its extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise DistftError(f"{path}: unknown data format '{ext}': use .tfrecord, .npz or .csv files, "
                          "or a folder of class subfolders of images")
    return FORMATS[ext]


def infer_layout(path: str, label: str = "label", x_key: Optional[str] = None,
                 y_key: Optional[str] = None, allow_named: bool = True) -> Layout:
    """Read the start of `path` to learn its layout: named fields (`allow_named`) when .npz or
    TFRecord records lack `x` and `y` and no keys are given."""
    kind = layout_type(path)
    try:
        return kind.infer(path, label, x_key, y_key, allow_named)
    except DistftError:
        raise
    except (*UNREADABLE, tf.errors.OpError) as e:
        raise damaged(path, kind.format, e) from e


def named_layout(path: str) -> Named:
    """The named fields of an .npz, TFRecord or CSV file (every array, feature or column group)."""
    return layout_type(path).named(path)

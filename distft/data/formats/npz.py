""".npz files: arrays `x` and `y`, or arrays named as the model's inputs and outputs, read in
chunks from the zip members."""
from __future__ import annotations

import math
import struct
import zipfile
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from distft.data import named
from distft.data.formats.base import CHUNK, Layout, Named, UNREADABLE, XY, damaged
from distft.data.formats.tfrecord import NamedTFRecordLayout, ShardedAsTFRecords
from distft.errors import DistftError


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
class NpzLayout(_NpzFile, ShardedAsTFRecords, XY):
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

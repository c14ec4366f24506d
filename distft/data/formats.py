"""Record formats: how to learn a file set's schema, check a file against it, and read it with
tf.data.

Layouts:
- TFRecord: features (`x`: float list, or `image`: encoded PNG/JPEG bytes, or raw uint8 pixels
  from `distft shard`) and a target (`y`: int64 or float, one value or a fixed-length list).
  Other tools' feature names are read with `x_key`/`y_key` (e.g. `image/encoded`,
  `image/class/label`). GZIP-compressed files are recognised.
- `.npz`: arrays `x` (N, F) features or (N, H, W[, C]) images (uint8 or float), and `y` (N,)
  or (N, K).
- Named fields, for models with several inputs or outputs: `.npz` arrays or TFRecord features
  named as the model's inputs and outputs, without `x` and `y` (see `data/named.py`), or CSV
  columns so named (see `data/columns.py`).
- `.csv`: a header, label column(s) (`label="a,b"` for several), the other columns numeric;
  a single label column may hold class names instead of numbers.
- A folder of class subfolders of JPEG/PNG images (see `data/images.py`).

Example:
    schema = infer_schema("shards/part-0.tfrecord", label="label")
    ds = read_records(tf.constant(path), schema)   # raw records
"""
from __future__ import annotations

import csv
import dataclasses
import gzip
import math
import os
import struct
import zipfile
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from distft.data import columns, named
from distft.errors import DistftError, root_cause

FORMATS = {".tfrecord": "tfrecord", ".tfrecords": "tfrecord", ".tfrec": "tfrecord",
           ".gz": "tfrecord", ".npz": "npz", ".csv": "csv"}
X_KEYS = ("x", "image")  # the features distft looks for by default, in this order
CHUNK = 4096  # .npz rows per read


@dataclass(frozen=True)
class Schema:
    """What a record holds; the same for every file of a data set."""

    format: str  # tfrecord | npz | csv | folder
    x_kind: str  # float (features) | image (encoded PNG/JPEG) | pixels (an H,W,C array)
    x_shape: tuple = ()  # float: (F,); pixels: (H, W, C); image: ()
    y_shape: tuple = ()  # () for one value a record, (K,) for K
    y_float: bool = False  # float targets (regression, soft labels) rather than integers
    y_names: bool = False  # CSV: the label column holds class names
    x_dtype: str = "float32"  # pixels: uint8 or float32
    pixel_scale: float = 1.0  # pixels: factor to [0, 255]; 0: not pixel values (--preprocess=none)
    compression: str = ""  # "" or GZIP (TFRecord)
    x_key: str = "x"
    y_key: str = "y"
    stored: tuple = ()  # .npz: the arrays' dtypes as saved, e.g. ("|u1", "<i8")
    columns: tuple = ()  # CSV: all column names, in file order
    label_columns: tuple = ()  # CSV: positions of the label columns
    fields: tuple = ()  # named (x_kind "named"): every array or feature, as named.Field
    inputs: tuple = ()  # named, bound to a model: its inputs, as named.Port
    outputs: tuple = ()  # named, bound to a model: the outputs that read a target

    @property
    def x_size(self) -> int:
        return math.prod(self.x_shape)

    @property
    def is_image(self) -> bool:
        return self.x_kind in ("image", "pixels")

    @property
    def has_images(self) -> bool:
        """Records hold images: as x, or (named, bound to a model) for an image input."""
        return self.is_image or any(p.image for p in self.inputs)

    @property
    def named(self) -> bool:
        return self.x_kind == "named"

    @property
    def target_shape(self):
        """The targets' shape per record; named: each field's, by name."""
        return named.target_shapes(self.fields) if self.named else self.y_shape

    def used(self) -> tuple[str, ...]:
        """Named: the fields the bound model reads, inputs first."""
        return tuple(p.name for p in self.inputs) + self.outputs

    def describe_y(self) -> str:
        return f"(N, {', '.join(map(str, self.y_shape))})" if self.y_shape else "(N,)"


def format_of(path: str) -> str:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise DistftError(f"{path}: unknown data format '{ext}': use .tfrecord, .npz or .csv files, "
                          "or a folder of class subfolders of images")
    return FORMATS[ext]


def infer_schema(path: str, label: str = "label", x_key: Optional[str] = None,
                 y_key: Optional[str] = None, allow_named: bool = True) -> Schema:
    """Read the start of `path` to learn the schema: named fields (`allow_named`) when .npz or
    TFRecord records lack `x` and `y` and no keys are given."""
    fmt = format_of(path)
    try:
        if fmt == "tfrecord":
            return _tfrecord_schema(path, x_key, y_key, allow_named)
        if fmt == "npz":
            if allow_named and not {"x", "y"} <= set(npz_arrays(path)):
                return named_schema(path)
            return _npz_schema(path)
        return _csv_schema(path, label)
    except DistftError:
        raise
    except (*UNREADABLE, tf.errors.OpError) as e:
        raise damaged(path, fmt, e) from e


# What reading a file's bytes raises when they cannot be parsed (a damaged file).
UNREADABLE = (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile)


def damaged(path: str, fmt: str, error: BaseException) -> DistftError:
    """The error for a file whose bytes cannot be parsed at all."""
    text = root_cause(getattr(error, "message", None) or str(error))
    return DistftError(f"{path}: damaged {fmt} file ({type(error).__name__}: {text}): "
                       "regenerate or remove this file")


# --- TFRecord ---------------------------------------------------------------------------------

def named_schema(path: str) -> Schema:
    """The named fields of an .npz, TFRecord or CSV file (every array, feature or column group,
    see data/columns.py; CSV: the class-name columns as label columns)."""
    if format_of(path) == "csv":
        header, rows = _csv_head(path)
        fields = columns.csv_fields(header, rows)
        texts = {c for f in fields if f.dtype == columns.TEXT for c in columns.columns_of(f)}
        return Schema("csv", "named", fields=fields, columns=tuple(header),
                      label_columns=tuple(i for i, c in enumerate(header) if c in texts), y_names=bool(texts))
    if format_of(path) == "npz":
        arrays = npz_arrays(path)
        fields = named.npz_fields(path, arrays, lambda n: next(npz_chunks(path, 1024, (n,)))[0])
        return Schema("npz", "named", fields=fields, stored=tuple(d.str for _, d in arrays.values()))
    return _named_tfrecord(*_first_features(path))


def _named_tfrecord(compression: str, feats) -> Schema:
    return Schema("tfrecord", "named", fields=named.example_fields(feats), compression=compression)


def _first_features(path: str):
    """(compression, the first record's features) of a TFRecord file."""
    with open(path, "rb") as f:
        compression = "GZIP" if f.read(2) == b"\x1f\x8b" else ""
    first = next(iter(tf.data.TFRecordDataset(path, compression_type=compression).take(1)), None)
    if first is None:
        raise DistftError(f"{path}: TFRecord file has no records: remove it or regenerate it")
    return compression, tf.train.Example.FromString(first.numpy()).features.feature


def _tfrecord_schema(path: str, x_key: Optional[str], y_key: Optional[str],
                     allow_named: bool = False) -> Schema:
    compression, feats = _first_features(path)
    xk = x_key or next((k for k in X_KEYS if k in feats), None)
    yk = y_key or "y"
    if allow_named and not (x_key or y_key) and (xk is None or yk not in feats):
        return _named_tfrecord(compression, feats)
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
    return Schema("tfrecord", x_kind, x_shape, () if len(values) == 1 else (len(values),),
                  y.WhichOneof("kind") == "float_list", compression=compression, x_key=xk, y_key=yk)


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


def check_example(record: bytes, schema: Schema) -> Optional[str]:
    """What in one serialized record does not fit `schema` (None if it fits)."""
    feats = tf.train.Example.FromString(record).features.feature
    if schema.named:
        return named.check_example(feats, schema.fields, schema.used())
    for key, kinds, size in ((schema.x_key, ("bytes_list",) if x_is_bytes(schema) else ("float_list",),
                              None if x_is_bytes(schema) else schema.x_size),
                             (schema.y_key, ("float_list",) if schema.y_float else ("int64_list",),
                              math.prod(schema.y_shape))):
        if key not in feats:
            return f"has no feature '{key}' (it has {_describe_features(feats)})"
        kind = feats[key].WhichOneof("kind")
        if kind not in kinds:
            return f"feature '{key}' is {kind}, expected {kinds[0]}"
        n = len(getattr(feats[key], kind).value)
        if size is not None and n != size:
            return f"feature '{key}' has {n} values, expected {size}"
    return None


# --- .npz -------------------------------------------------------------------------------------

def _npz_schema(path: str) -> Schema:
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
    return Schema("npz", x_kind, x_shape, tuple(ys[1:]), y_float, x_dtype=x_dtype, pixel_scale=scale,
                  stored=(xd.str, yd.str))


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


def _npz_in_graph(path: tf.Tensor, offsets: tf.Tensor, schema: Schema) -> tf.data.Dataset:
    """An uncompressed .npz's rows, read and cut by TensorFlow's own ops (no Python per chunk)."""
    contents = tf.io.read_file(path)
    if schema.named:  # offsets of schema.used(), in order
        stored = dict(zip([f.name for f in schema.fields], schema.stored))
        shapes = {f.name: f.shape for f in schema.fields}
        return tf.data.Dataset.from_tensor_slices({
            name: tf.reshape(tf.io.decode_raw(tf.strings.substr(contents, offsets[2 * i], offsets[2 * i + 1]),
                                              RAW_TYPES[stored[name][1:]]), [-1, *shapes[name]])
            for i, name in enumerate(schema.used())})
    arrays = []
    for k, stored, shape in ((0, schema.stored[0], schema.x_shape), (2, schema.stored[1], schema.y_shape)):
        raw = tf.io.decode_raw(tf.strings.substr(contents, offsets[k], offsets[k + 1]), RAW_TYPES[stored[1:]])
        arrays.append(tf.reshape(raw, [-1, *shape]))
    x, y = arrays
    return tf.data.Dataset.from_tensor_slices((
        x if schema.x_dtype == "uint8" else tf.cast(x, tf.float32),
        tf.cast(y, tf.float32 if schema.y_float else tf.int64)))


def _npz_records(path: bytes, schema: Schema):
    """The generator behind read_records for compressed .npz: chunks of about 32 MB, cast to
    the schema's types."""
    rows = max(1, (32 << 20) // (4 * math.prod(schema.x_shape)))
    for x, y in npz_chunks(path.decode(), rows):
        yield (x.reshape(len(x), *schema.x_shape) if schema.x_dtype == "uint8" else
               x.reshape(len(x), *schema.x_shape).astype(np.float32),
               y.astype(np.float32 if schema.y_float else np.int64))


# --- CSV --------------------------------------------------------------------------------------

def _csv_head(path: str) -> tuple[list[str], list[list[str]]]:
    """The header and the first 100 rows of a CSV file."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        rows = [r for _, r in zip(range(100), reader)]
    if not header:
        raise DistftError(f"{path}: CSV file is empty: it needs a header row")
    return header, rows


def _csv_schema(path: str, label: str) -> Schema:
    header, rows = _csv_head(path)
    labels = [c.strip() for c in label.split(",") if c.strip()]
    missing = [c for c in labels if c not in header]
    if missing:
        raise DistftError(f"{path}: no label column {', '.join(repr(c) for c in missing)} (columns: "
                          f"{', '.join(header)}): pass --label=COLUMN[,COLUMN...]")
    label_columns = tuple(header.index(c) for c in labels)
    names = len(labels) == 1 and any(columns.number(r[label_columns[0]]) is None for r in rows
                                     if len(r) == len(header))
    schema = Schema("csv", "float", (len(header) - len(labels),), () if len(labels) == 1 else (len(labels),),
                    False, names, columns=tuple(header), label_columns=label_columns)
    y_float = False
    for n, row in enumerate(rows, start=2):
        problem = _row_problem(row, schema)
        if problem:
            raise DistftError(f"{path}:{n}: {problem}")
        y_float |= not names and any(float(row[i]) != int(float(row[i])) for i in label_columns)
    return dataclasses.replace(schema, y_float=y_float)


def _open_text(path: str):
    return (gzip.open if path.endswith(".gz") else open)(path, "rt", newline="")


def _row_problem(row: list, schema: Schema) -> Optional[str]:
    """What in one CSV row does not fit `schema` (None if it fits; named: in the columns read)."""
    if len(row) != len(schema.columns):
        return f"{len(row)} fields but the header has {len(schema.columns)}: fix the row"
    read = {c for f in schema.fields if f.name in schema.used() for c in columns.columns_of(f)}
    for i, (name, value) in enumerate(zip(schema.columns, row)):
        number = columns.number(value)
        if schema.named and name not in read:
            continue
        if i not in schema.label_columns:
            if number is None:
                return (f"column '{name}' is not numeric ({value!r}): " + (
                    "the first rows held numbers" if schema.named else
                    f"feature columns must be numbers; if it is the label, pass --label={name}"))
        elif schema.y_names and number is not None:
            return (f"{'' if schema.named else 'label '}column '{name}' mixes numbers ({value!r}) "
                    "and class names: use one kind in the whole column")
        elif not schema.y_names and number is None:
            return f"label column '{name}' is not numeric ({value!r}): labels must be numbers" + (
                "" if len(schema.label_columns) > 1 else " or, in the whole column, class names")
    return None


def csv_rows(path: str, schema: Schema) -> Iterator[list]:
    """The rows of a CSV file, each checked against `schema` (DistftError naming the line)."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        next(reader)
        for n, row in enumerate(reader, start=2):
            problem = _row_problem(row, schema)
            if problem:
                raise DistftError(f"{path}:{n}: {problem}")
            yield row


def csv_labels(path: str, schema: Schema, column: Optional[str] = None) -> Iterator[str]:
    """The values of `column` (default: the label column), row by row (for class names)."""
    li = schema.columns.index(column) if column else schema.label_columns[0]
    return (row[li] for row in csv_rows(path, schema))


# --- reading ----------------------------------------------------------------------------------

def read_records(path: tf.Tensor, schema: Schema, npz_offsets: Optional[tf.Tensor] = None
                 ) -> tf.data.Dataset:
    """The records of one file, undecoded: TFRecord: serialized Examples; .npz and CSV:
    (x, y), where a CSV class-name label is still a string. An uncompressed .npz is read by
    TensorFlow given its `npz_offsets` (see npz_offsets), else by a Python generator."""
    if schema.format == "tfrecord":
        return tf.data.TFRecordDataset(path, compression_type=schema.compression,
                                       buffer_size=1 << 20)
    if schema.format == "csv" and schema.named:
        return _named_csv(path, schema)
    if schema.format == "csv":
        labels = set(schema.label_columns)
        types = [tf.string if i in labels and schema.y_names else tf.float32
                 for i in range(len(schema.columns))]
        ds = tf.data.experimental.CsvDataset(path, types, header=True)

        def split(*cols):
            y = [cols[i] for i in schema.label_columns]
            return (tf.stack([c for i, c in enumerate(cols) if i not in labels]),
                    y[0] if not schema.y_shape else tf.stack(y))

        return ds.map(split)
    if npz_offsets is not None:
        return _npz_in_graph(path, npz_offsets, schema)
    if schema.named:
        fields = {f.name: f for f in schema.fields}
        spec = {n: tf.TensorSpec([None, *fields[n].shape], fields[n].dtype) for n in schema.used()}
        return tf.data.Dataset.from_generator(
            lambda p: (dict(zip(schema.used(), rows)) for rows in npz_chunks(p.decode(), CHUNK, schema.used())),
            args=(path,), output_signature=spec).unbatch()
    x_spec = tf.TensorSpec([None, *schema.x_shape], tf.uint8 if schema.x_dtype == "uint8" else tf.float32)
    y_spec = tf.TensorSpec([None, *schema.y_shape], tf.float32 if schema.y_float else tf.int64)
    return tf.data.Dataset.from_generator(
        lambda p: _npz_records(p, schema), args=(path,), output_signature=(x_spec, y_spec)).unbatch()


def _named_csv(path: tf.Tensor, schema: Schema) -> tf.data.Dataset:
    """A named CSV file's records: {field: value} for the fields the bound model reads."""
    fields = {f.name: f for f in schema.fields}
    used = [fields[n] for n in dict.fromkeys(schema.used())]
    at = sorted({schema.columns.index(c) for f in used for c in columns.columns_of(f)})
    types = [tf.string if i in schema.label_columns else tf.float32 for i in at]
    ds = tf.data.experimental.CsvDataset(path, types, header=True, select_cols=at)

    def record(*values):
        by_column = dict(zip((schema.columns[i] for i in at), values))
        return {f.name: tf.stack([by_column[c] for c in columns.columns_of(f)]) if f.shape
                else by_column[f.name] for f in used}

    return ds.map(record)


def parse_spec(schema: Schema, with_x: bool = True) -> dict:
    """tf.io.parse_example's spec for a TFRecord schema."""
    spec = {schema.y_key: tf.io.FixedLenFeature(schema.y_shape, tf.float32 if schema.y_float else tf.int64)}
    if with_x:
        spec[schema.x_key] = (tf.io.FixedLenFeature([], tf.string) if x_is_bytes(schema)
                              else tf.io.FixedLenFeature(schema.x_shape, tf.float32))
    return spec


def x_is_bytes(schema: Schema) -> bool:
    """TFRecord `x` is bytes: encoded images, or uint8 pixels (as `distft shard` writes them)."""
    return schema.x_kind == "image" or (schema.x_kind == "pixels" and schema.x_dtype == "uint8")


def label_of(record, schema: Schema) -> tf.Tensor:
    """The target of one raw record, as float32 (cheap: TFRecord images are not decoded);
    0 for class names, which are counted apart (see csv_labels)."""
    if schema.y_names:
        return tf.constant(0.0)
    if schema.format == "tfrecord":
        return tf.cast(tf.io.parse_single_example(record, parse_spec(schema, False))[schema.y_key],
                       tf.float32)
    return tf.cast(record[1], tf.float32)

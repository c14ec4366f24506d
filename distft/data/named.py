"""Data for models with several inputs or outputs: `.npz` arrays or TFRecord features named
as the model's inputs and outputs.

A file set without distft's one-input layout (`x` and `y`) is read as named fields (each
array or feature: its name, value type and shape per record). `bind` matches them to a model:
each input takes the field of its name, each output the field of its name as its target (a
model's one output: or `y`, whatever the output's name). An
image input (H, W, C) takes pixel arrays ((H, W) or (H, W, C) per record) or encoded PNG/JPEG
bytes, which are decoded, resized, augmented and preprocessed as one-input images are; any
other input takes the values, reshaped to its shape (where that has an unknown length, as a
Keras Hub model's token ids do: the field's) and cast to its type. A record becomes
({input: tensor}, {output: target}).

Example:
    inputs, outputs = bind(fields, *model_ports(model), targets=True, data="train.npz")
    x, y = record_decoder(fields, inputs, outputs, lambda r: r)(record)   # x["image"], y["digit"]
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import tensorflow as tf

from distft.data import images
from distft.errors import DistftError

TARGET = "y"  # the target of a model's one output, whatever the output's name


@dataclass(frozen=True)
class Field:
    """One array (.npz) or feature (TFRecord) of every record."""

    name: str
    dtype: str  # the values' numpy type: float32, int64, uint8, ...
    shape: tuple  # per record; () for encoded images
    encoded: bool = False  # TFRecord bytes holding a PNG/JPEG image
    pixel_scale: float = 1.0  # float pixel arrays: factor to [0, 255] (0: not pixel values)
    classes: tuple = ()  # CSV class names (dtype "str"), in id order, once counted

    @property
    def raw_bytes(self) -> bool:
        """Stored in a TFRecord as bytes: encoded images, or uint8 pixels of an image."""
        return self.encoded or (self.dtype == "uint8" and len(self.shape) >= 2)

    @property
    def is_float(self) -> bool:
        return np.dtype(self.dtype).kind == "f"


@dataclass(frozen=True)
class Port:
    """A model input: its name, shape per record, type, and whether it takes images."""

    name: str
    shape: tuple
    dtype: str
    image: bool = False


def model_ports(model) -> tuple[tuple[Port, ...], tuple[tuple[str, tuple], ...]]:
    """The model's inputs (as Ports) and its outputs ((name, shape per record)), in order."""
    inputs = tuple(Port(t.name, tuple(t.shape[1:]), str(t.dtype)) for t in model.inputs)
    outputs = tuple((name, tuple(t.shape[1:])) for name, t in zip(model.output_names, model.outputs))
    return inputs, outputs


def is_multi(model) -> bool:
    return len(model.inputs) > 1 or len(model.outputs) > 1


# --- fields of a file --------------------------------------------------------------------------

def npz_fields(path: str, headers: dict[str, tuple[tuple, np.dtype]],
               first_rows: Callable[[str], np.ndarray]) -> tuple[Field, ...]:
    """The fields of an .npz file from its arrays' headers; float arrays with two or more axes
    per record get the pixel scale of their `first_rows`."""
    fields = []
    for name, (shape, dtype) in headers.items():
        if dtype.kind not in "biuf":
            raise DistftError(f"{path}: array '{name}' is {dtype}, expected numbers: convert it")
        scale = _pixel_scale(first_rows(name)) if dtype.kind == "f" and len(shape) >= 3 else 1.0
        fields.append(Field(name, "bool" if dtype.kind == "b" else dtype.name, tuple(shape[1:]),
                            pixel_scale=scale))
    rows = {shape[0] for shape, _ in headers.values()}
    if len(rows) > 1:
        raise DistftError(f"{path}: arrays have different numbers of rows "
                          f"({', '.join(f'{n} {s[0]}' for n, (s, _) in headers.items())}): each "
                          "array needs one row a record")
    return tuple(fields)


def _pixel_scale(x: np.ndarray) -> float:
    """255 for values in [0, 1], 1 for [0, 255], 0 for anything else."""
    lo, hi = float(x.min()), float(x.max())
    return 255.0 if lo >= 0 and hi <= 1 else 1.0 if lo >= 0 and hi <= 255 else 0.0


def example_fields(feats) -> tuple[Field, ...]:
    """The fields of a TFRecord from one record's features."""
    fields = []
    for name in sorted(feats):
        kind = feats[name].WhichOneof("kind")
        n = len(getattr(feats[name], kind).value)
        if kind == "bytes_list":
            fields.append(Field(name, "uint8", (), encoded=True))
        else:
            fields.append(Field(name, "float32" if kind == "float_list" else "int64",
                                () if n == 1 else (n,)))
    return tuple(fields)


# --- matching fields to a model ----------------------------------------------------------------

def bind(fields: tuple[Field, ...], inputs: tuple[Port, ...], outputs: tuple, targets: bool,
         data: str, kind: str = "array") -> tuple[tuple[Port, ...], tuple[str, ...]]:
    """The model's inputs (images marked) and the fields of the outputs' targets, checked
    against `fields` (`kind`: array or feature, for errors): every input needs a field; every
    output too when `targets`, named as the output (a model's one output: or `y`)."""
    by_name = {f.name: f for f in fields}
    names = [n for n, _ in outputs]
    if len(names) == 1 and names[0] not in by_name and TARGET in by_name:
        names = [TARGET]  # a model's one output reads `y`, whatever its name
    missing = [p.name for p in inputs if p.name not in by_name] + \
              [n for n in names if targets and n not in by_name]
    if missing:
        raise DistftError(
            f"--data={data} has no {kind} {', '.join(repr(m) for m in missing)} (it has {', '.join(sorted(by_name)) or 'none'}); "
            f"the model's inputs are {', '.join(p.name for p in inputs)} and its outputs "
            f"{', '.join(names)}: name each array or feature after the input or output it feeds")
    bound = []
    for port in inputs:
        f = by_name[port.name]
        image = len(port.shape) == 3 and (f.encoded or len(f.shape) in (2, 3))
        if not image and None in port.shape:  # e.g. a Keras Hub model's (None,) token ids
            if f.encoded or len(f.shape) != len(port.shape) or \
                    any(p not in (None, n) for p, n in zip(port.shape, f.shape)):
                raise DistftError(f"--data={data}: '{f.name}' has {_describe(f)} but the model's "
                                  f"input '{port.name}' is {port.shape}: give it rows of that "
                                  "shape (None: any length, the same in every record)")
            port = dataclasses.replace(port, shape=f.shape)
        elif not image and (f.encoded or math.prod(f.shape) != math.prod(port.shape)):
            raise DistftError(f"--data={data}: '{f.name}' has {_describe(f)} but the model's input "
                              f"'{port.name}' is {port.shape}: give it {math.prod(port.shape)} "
                              "values a record")
        bound.append(dataclasses.replace(port, image=image))
    return tuple(bound), tuple(n for n in names if n in by_name)


def _describe(f: Field) -> str:
    return "encoded images" if f.encoded else f"rows of shape {f.shape}"


def target_of(shapes: dict, output: str) -> tuple:
    """A model's one output's target shape among the fields' `shapes`: its own, or `y`'s."""
    return tuple(shapes.get(output, shapes.get(TARGET, ())))


def target_shapes(fields: tuple[Field, ...]) -> dict[str, tuple]:
    """Each field's shape per record, by name (the targets' shapes, for the default losses)."""
    return {f.name: f.shape for f in fields}


# --- reading -----------------------------------------------------------------------------------

def parse_spec(fields: tuple[Field, ...], names: tuple[str, ...]) -> dict:
    """tf.io.parse_example's spec for the fields `names` of a TFRecord."""
    spec = {}
    for f in fields:
        if f.name in names:
            spec[f.name] = (tf.io.FixedLenFeature([], tf.string) if f.raw_bytes else
                            tf.io.FixedLenFeature(f.shape, tf.float32 if f.is_float else tf.int64))
    return spec


def record_decoder(fields: tuple[Field, ...], inputs: tuple[Port, ...], outputs: tuple[str, ...],
                   values_of: Callable) -> Callable:
    """record (`values_of` it: {name: value}) -> ({input: tensor}, {output: target}, or the
    target alone for one output); image inputs as float32 images in [0, 255] of the input's
    shape."""
    by_name = {f.name: f for f in fields}

    def value(v: tf.Tensor, port: Port) -> tf.Tensor:
        f = by_name[port.name]
        if not port.image:
            return tf.reshape(tf.cast(v, port.dtype), port.shape)
        if f.encoded:
            return images.decode(v, port.shape)
        if v.dtype == tf.string:  # raw uint8 pixels in a TFRecord
            v = tf.reshape(tf.io.decode_raw(v, tf.uint8), f.shape)
        if len(f.shape) == 2:  # grey (H, W)
            v = v[..., None]
        return images.from_pixels(v, port.shape, f.pixel_scale)

    def target(v: tf.Tensor, name: str) -> tf.Tensor:
        f = by_name[name]
        if f.dtype == "str":
            return class_ids(v, f.classes)
        return tf.reshape(tf.cast(v, tf.float32 if f.is_float else tf.int64), f.shape)

    def decode(record):
        values = values_of(record)
        ys = {n: target(values[n], n) for n in outputs}
        # One output's target alone: Keras pairs a dict of targets with a dict of losses.
        return {p.name: value(values[p.name], p) for p in inputs}, ys.popitem()[1] if len(ys) == 1 else ys

    return decode


def class_ids(names: tf.Tensor, classes: tuple) -> tf.Tensor:
    """Class names to their index in `classes`."""
    known = tf.constant(list(classes), tf.string)
    return tf.argmax(tf.cast(tf.equal(tf.expand_dims(names, -1), known), tf.int32), axis=-1)


def on_images(inputs: tuple[Port, ...], x: dict, fn: Callable[[tf.Tensor], tf.Tensor]) -> dict:
    """`x` with `fn` applied to its image inputs."""
    images_ = {p.name for p in inputs if p.image}
    return {k: fn(v) if k in images_ else v for k, v in x.items()}


def target_bounds(values: dict, fields: tuple[Field, ...], outputs: tuple[str, ...]
                  ) -> tuple[tf.Tensor, tf.Tensor]:
    """The lowest and highest target value of one record's `values`, per output (float32 vectors)."""
    text = {f.name for f in fields if f.dtype == "str"}  # class names: counted apart
    ys = [tf.zeros([1]) if n in text else tf.reshape(tf.cast(values[n], tf.float32), [-1]) for n in outputs]
    return tf.stack([tf.reduce_min(y) for y in ys]), tf.stack([tf.reduce_max(y) for y in ys])


def check_example(feats, fields: tuple[Field, ...], names: tuple[str, ...]) -> Optional[str]:
    """What in one record's features does not fit the named `fields` (None if it fits)."""
    for f in fields:
        if f.name not in names:
            continue
        if f.name not in feats:
            return f"has no feature '{f.name}'"
        kind = feats[f.name].WhichOneof("kind")
        want = "bytes_list" if f.raw_bytes else "float_list" if f.is_float else "int64_list"
        if kind != want:
            return f"feature '{f.name}' is {kind}, expected {want}"
        n = len(getattr(feats[f.name], kind).value)
        if not f.raw_bytes and n != math.prod(f.shape):
            return f"feature '{f.name}' has {n} values, expected {math.prod(f.shape)}"
    return None


# --- writing (distft shard) --------------------------------------------------------------------

def shard_fields(fields: tuple[Field, ...]) -> tuple[Field, ...]:
    """The fields as TFRecord shards hold them: integers other than image pixels as int64."""
    return tuple(f if f.raw_bytes or f.is_float else dataclasses.replace(f, dtype="int64")
                 for f in fields)


def example(fields: tuple[Field, ...], row: dict[str, np.ndarray]) -> bytes:
    """A serialized tf.train.Example of one record's arrays."""
    feats = {}
    for f in fields:
        v = row[f.name]
        if f.raw_bytes:
            feats[f.name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.tobytes()]))
        elif f.is_float:
            feats[f.name] = tf.train.Feature(float_list=tf.train.FloatList(value=v.ravel()))
        else:
            feats[f.name] = tf.train.Feature(int64_list=tf.train.Int64List(value=v.ravel()))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def from_dicts(items: list) -> tuple[Field, ...]:
    """Fields from a manifest's lists of dicts."""
    return tuple(Field(**{**f, "shape": tuple(f["shape"])}) for f in items)

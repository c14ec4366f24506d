"""What every record layout answers (`Layout`), and the two kinds of layout: distft's one-input
records (`XY`) and fields named as a model's inputs and outputs (`Named`)."""
from __future__ import annotations

import dataclasses
import math
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Optional

import numpy as np
import tensorflow as tf

from distft.data import columns, images, named, own_preprocessor
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

    format: ClassVar[str]  # as errors name it: tfrecord | npz | csv | folder | jsonl | txt
    token_weighted: ClassVar[bool] = False  # targets weighted per token (see Text)
    # Bound: the model's own (see data/own_preprocessor.py). Not annotated: a ClassVar here
    # would put a subclass's `preprocessor` field first in its constructor's arguments.
    preprocessor = None

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
    preprocessor: Any = field(default=None, compare=False, repr=False, kw_only=True)  # bound: the model's

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

    def bind(self, preprocessor: Any) -> XY:
        """Images given the model's own image preprocessor (see data/own_preprocessor.py), which
        resizes and scales them in place of `--preprocess`; features stay as they are."""
        return dataclasses.replace(self, preprocessor=preprocessor) if self.has_images else self

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
        size = own_preprocessor.image_size(self.preprocessor) if self.preprocessor is not None else None
        if size and None not in shape[:2] and size != tuple(shape[:2]):
            raise DistftError(f"{own_preprocessor.describe(self.preprocessor)} makes images of "
                              f"{size[0]}x{size[1]} but the model's input is {shape}: save the model "
                              "with a preprocessor of its input size")

    def decoders(self, input_shape: tuple, classes: tuple) -> tuple[Decoder, Decoder]:
        """Images: record -> (float32 image in [0, 255] of `input_shape`, target), one by one,
        so that augmentation and `--preprocess` follow; bound to the model's own preprocessor,
        the image as it is (any size) through that preprocessor instead (the images of a batch
        may differ in size until it resizes them). Features: a batch at a time."""
        own = self.preprocessor
        resize = own is None or own_preprocessor.image_size(own) is None

        def image(x: tf.Tensor) -> tf.Tensor:
            if self.x_kind == "image":
                img = images.decode(x, input_shape, resize)
            else:
                if x.dtype == tf.string:  # raw pixels in a TFRecord
                    x = tf.reshape(tf.io.decode_raw(x, tf.uint8), self.x_shape)
                img = images.from_pixels(x, input_shape, self.pixel_scale, resize)
            return img if own is None else tf.ensure_shape(own(img), input_shape)

        def record(*raw):
            x, y = self.split(*raw)
            return image(x), self.target(y, classes)

        def batch(*raw):
            x, y = self.split(*raw)
            return tf.reshape(x, (-1, *input_shape)), self.target(y, classes)

        return (record, None) if self.has_images else (None, batch)

    def on_images(self, x, fn: Callable[[tf.Tensor], tf.Tensor]):
        return fn(x)


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

"""From raw records (see formats.read_records) to what the model takes: `x` in its input
shape and `y` as class ids, one-hot or multi-label rows, or float targets.

Image records (encoded images, pixel arrays) are decoded one by one, to float32 images in
[0, 255] of the model's input size, so that augmentation and `--preprocess` follow; feature
records are decoded a batch at a time.

Example:
    decode = record_decoder(schema, (32, 32, 3), classes=())   # image kinds
    img, y = decode(record)
    x, y = batch_decoder(schema, (8,), classes=("cat", "dog"))(batch)   # feature kinds
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

from distft.data import images, named
from distft.data.formats import Schema, parse_spec


def target(y: tf.Tensor, schema: Schema, classes: tuple) -> tf.Tensor:
    """Class names to their index in `classes`; else int64 ids or float32 values."""
    if schema.y_names:
        return named.class_ids(y, classes)
    return tf.cast(y, tf.float32 if schema.y_float else tf.int64)


def record_decoder(schema: Schema, input_shape: tuple, classes: tuple = ()) -> Callable:
    """record -> (float32 image in [0, 255] of `input_shape`, target)."""
    def image(x: tf.Tensor) -> tf.Tensor:
        if schema.x_kind == "image":
            return images.decode(x, input_shape)
        if x.dtype == tf.string:  # raw pixels in a TFRecord
            x = tf.reshape(tf.io.decode_raw(x, tf.uint8), schema.x_shape)
        return images.from_pixels(x, input_shape, schema.pixel_scale)

    if schema.format == "tfrecord":
        spec = parse_spec(schema)

        def decode(record):
            parsed = tf.io.parse_single_example(record, spec)
            return image(parsed[schema.x_key]), target(parsed[schema.y_key], schema, classes)
        return decode
    return lambda x, y: (image(x), target(y, schema, classes))


def batch_decoder(schema: Schema, input_shape: tuple, classes: tuple = ()) -> Callable:
    """A batch of feature records -> (x of shape (B, *input_shape), targets)."""
    def decode(*batch):
        if schema.format == "tfrecord":
            parsed = tf.io.parse_example(batch[0], parse_spec(schema))
            x, y = parsed[schema.x_key], parsed[schema.y_key]
        else:
            x, y = batch
        return tf.reshape(x, (-1, *input_shape)), target(y, schema, classes)
    return decode

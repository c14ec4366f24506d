"""A folder of class subfolders of JPEG/PNG images."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import tensorflow as tf

from distft.data.formats.base import XY
from distft.data.formats.tfrecord import ShardedAsTFRecords


@dataclass(frozen=True)
class ImageFolderLayout(ShardedAsTFRecords, XY):
    """A folder of class subfolders of JPEG/PNG images: a file a record, (bytes, class id)."""

    format = "folder"
    x_kind: str = "image"

    def read(self, path: tf.Tensor, known: Optional[tf.Tensor] = None) -> tf.data.Dataset:
        """`known`: the image's class id."""
        return tf.data.Dataset.from_tensors((tf.io.read_file(path), known))

"""Record layouts: one small type for each way files hold records (see `Layout`), which
learns itself from a file, reads a file with tf.data, counts and checks it, and decodes its
records for a model. `infer_layout` picks the type by the file's extension (FORMATS), then
reads the file's start: distft's one-input layouts (`XY`: TFRecordLayout, NpzLayout,
CsvLayout, ImageFolderLayout) or, for models with several inputs or outputs, named fields
(`Named`: NamedTFRecordLayout, NamedNpzLayout, NamedCsvLayout). A new file layout is a
subclass and its extensions in FORMATS.
"""
from __future__ import annotations

import os
from typing import Optional

import tensorflow as tf

from distft.data.formats.base import UNREADABLE, XY, Layout, Named, damaged
from distft.data.formats.csvtable import CsvLayout, NamedCsvLayout
from distft.data.formats.folder import ImageFolderLayout
from distft.data.formats.npz import NamedNpzLayout, NpzLayout
from distft.data.formats.text import TEXT_FORMATS, JsonlTextLayout, Text, TextOptions, TFRecordTextLayout, \
    TxtLayout
from distft.data.formats.tfrecord import NamedTFRecordLayout, TFRecordLayout
from distft.data.formats.tokens import TFRecordTokenLayout, Tokenizer
from distft.errors import DistftError

__all__ = ["FORMATS", "UNREADABLE", "CsvLayout", "ImageFolderLayout", "Layout", "Named", "NamedCsvLayout",
           "NamedNpzLayout", "NamedTFRecordLayout", "NpzLayout", "TFRecordLayout", "TFRecordTextLayout",
           "TFRecordTokenLayout", "Text", "TextOptions", "Tokenizer",
           "XY", "damaged", "infer_layout", "layout_type", "named_layout", "text_layout"]

FORMATS = {".tfrecord": TFRecordLayout, ".tfrecords": TFRecordLayout, ".tfrec": TFRecordLayout,
           ".gz": TFRecordLayout, ".npz": NpzLayout, ".csv": CsvLayout, ".jsonl": JsonlTextLayout,
           ".txt": TxtLayout}


def layout_type(path: str) -> type:
    """The layout class of a file, by its extension."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise DistftError(f"{path}: unknown data format '{ext}': use .tfrecord, .npz, .csv, .jsonl or "
                          ".txt files, or a folder of class subfolders of images")
    return FORMATS[ext]


def infer_layout(path: str, label: str = "label", x_key: Optional[str] = None,
                 y_key: Optional[str] = None, allow_named: bool = True,
                 text: TextOptions = TextOptions()) -> Layout:
    """Read the start of `path` to learn its layout: named fields (`allow_named`) when .npz or
    TFRecord records lack `x` and `y` and no keys are given; text for .jsonl and .txt."""
    kind = layout_type(path)
    if issubclass(kind, Text):
        return text_layout(path, text, label)
    try:
        return kind.infer(path, label, x_key, y_key, allow_named)
    except DistftError:
        raise
    except (*UNREADABLE, tf.errors.OpError) as e:
        raise damaged(path, kind.format, e) from e


def named_layout(path: str) -> Named:
    """The named fields of an .npz, TFRecord or CSV file (every array, feature or column group)."""
    return layout_type(path).named(path)


def text_layout(path: str, text: TextOptions, label: str = "label") -> Text:
    """The text records of `path` (JSONL, .txt, CSV or TFRecord), with a `label` field of class
    ids when the records have one."""
    kind = TEXT_FORMATS[layout_type(path).format]
    try:
        return kind.infer_text(path, text, label)
    except DistftError:
        raise
    except (*UNREADABLE, UnicodeDecodeError, tf.errors.OpError) as e:
        raise damaged(path, kind.format, e) from e

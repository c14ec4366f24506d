"""`manifest.json`: what `distft shard` wrote, so training needs no counting pass.

A folder of shards is a data set with a manifest: each shard's file name, record count,
size and sha256; the records' schema; class names (image folders); the source; the
compression and the seed. The manifest is written last and atomically, so its presence
means every shard it lists is complete.

Example:
    m = Manifest.find("shards/")                  # or "shards/shard-*.tfrecord", or None
    m.counts(), m.class_names, m.to_layout()
    m.verify(full=True)                           # sizes, and every shard's sha256
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

from distft.data import named
from distft.data.formats import Layout, NamedTFRecordLayout, TFRecordLayout, TFRecordTextLayout, TFRecordTokenLayout, \
    Text, TextOptions
from distft.errors import DistftError
from distft.files import write_json

NAME = "manifest.json"
VERSION = 1
# What a manifest records of the shards' layout (schema["record"]), with the values a layout
# without the field records (x_kind "named": a NamedTFRecordLayout); older manifests have only
# schema["features"].
RECORD = {"x_kind": "named", "x_shape": (), "y_shape": (), "y_float": False, "x_dtype": "float32",
          "pixel_scale": 1.0, "x_key": "x", "y_key": "y", "fields": ()}


def record(layout: Layout) -> dict[str, Any]:
    """schema["record"] of shards of `layout` (a TFRecordLayout, NamedTFRecordLayout, or a
    TFRecordTextLayout or TFRecordTokenLayout: its own record)."""
    if isinstance(layout, Text):
        return layout.record()
    values = dataclasses.asdict(layout)
    return {k: values.get(k, default) for k, default in RECORD.items()}


@dataclass
class Manifest:
    """The contents of a `manifest.json`; `folder` is where it was found (not saved)."""

    shards: list[dict[str, Any]]  # {file, records, bytes, sha256}
    schema: dict[str, Any]  # {features: {name: {dtype, shape}}, record: RECORD's keys, y_min, y_max}
    class_names: list[str] = field(default_factory=list)
    source: str = ""
    compression: str = ""
    seed: int = 0
    version: int = VERSION
    folder: str = field(default="", compare=False)

    @classmethod
    def load(cls, folder: str) -> Manifest:
        """Read `folder/manifest.json`; DistftError if it is not a readable manifest."""
        path = os.path.join(folder, NAME)
        try:
            with open(path) as f:
                data = json.load(f)
            known = {f.name for f in dataclasses.fields(cls)} - {"folder"}
            m = cls(**{k: v for k, v in data.items() if k in known}, folder=folder)
            if any(not {"file", "records", "bytes"} <= set(s) for s in m.shards):
                raise KeyError("a shard lacks file, records or bytes")
        except (OSError, ValueError, TypeError, KeyError) as e:
            raise DistftError(f"{path} is not a readable distft manifest ({type(e).__name__}: "
                              f"{e}): rewrite the shards with distft shard --overwrite") from None
        return m

    @classmethod
    def find(cls, pattern: str) -> Optional[Manifest]:
        """The manifest describing `pattern` (its folder, or a glob of files all listed in the
        manifest of their folder), restricted to those files; None when there is none."""
        if os.path.isdir(pattern):
            return cls.load(pattern) if os.path.exists(os.path.join(pattern, NAME)) else None
        files = sorted(glob.glob(os.path.expanduser(pattern)))
        folders = {os.path.dirname(f) for f in files}
        if len(folders) != 1 or not os.path.exists(os.path.join(folders.pop() or ".", NAME)):
            return None
        m = cls.load(os.path.dirname(files[0]) or ".")
        listed = {os.path.basename(f) for f in files}
        if not listed <= {s["file"] for s in m.shards}:
            return None
        m.shards = [s for s in m.shards if s["file"] in listed]
        return m

    def save(self, folder: str) -> str:
        """Write `folder/manifest.json` atomically (a reader sees the old file or the new)."""
        data = {k: v for k, v in dataclasses.asdict(self).items() if k != "folder"}
        path = os.path.join(folder, NAME)
        write_json(path, data, indent=1)
        return path

    def paths(self) -> list[str]:
        return [os.path.join(self.folder, s["file"]) for s in self.shards]

    def counts(self) -> list[int]:
        return [int(s["records"]) for s in self.shards]

    def to_layout(self) -> Layout:
        """The layout of the shards."""
        saved = self.schema.get("record")
        if saved and saved["x_kind"] == "tokens":
            return TFRecordTokenLayout.from_record(saved, self.schema["features"], self.compression)
        if saved and saved["x_kind"] == "text":
            return TFRecordTextLayout(TextOptions.of(saved["fields"]), saved["label"], compression=self.compression)
        if saved and saved["x_kind"] == RECORD["x_kind"]:
            return NamedTFRecordLayout(fields=named.from_dicts(saved["fields"]), compression=self.compression)
        if saved:
            return TFRecordLayout(compression=self.compression, **{
                k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in RECORD and k != "fields"})
        feats = self.schema["features"]
        y_float = feats["y"]["dtype"].startswith("float")
        if "image" in feats:
            return TFRecordLayout("image", (), (), y_float, compression=self.compression, x_key="image")
        return TFRecordLayout("float", (int(feats["x"]["shape"][0]),), (), y_float, compression=self.compression)

    def label_range(self) -> tuple[float, float]:
        return float(self.schema.get("y_min", 0.0)), float(self.schema.get("y_max", 0.0))

    def verify(self, full: bool = False) -> None:
        """Check each shard exists with its recorded size (cheap); `full` also its sha256."""
        for s, path in zip(self.shards, self.paths()):
            try:
                size = os.path.getsize(path)
            except OSError:
                raise DistftError(f"{path} is listed in {NAME} but missing: restore it or rewrite "
                                  "the shards with distft shard --overwrite") from None
            if size != s["bytes"]:
                raise DistftError(f"{path} has {size} bytes but {NAME} says {s['bytes']}: the shard "
                                  "changed or is incomplete; rewrite with distft shard --overwrite")
            if full and sha256(path) != s["sha256"]:
                raise DistftError(f"{path}: sha256 differs from {NAME}: the shard is corrupt; "
                                  "rewrite with distft shard --overwrite")


def sha256(path: str, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            digest.update(chunk)
    return digest.hexdigest()


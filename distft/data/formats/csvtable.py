"""CSV files with a header: label column(s) and numeric columns, or column groups named as the
model's inputs and outputs (see data/columns.py)."""
from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
from dataclasses import dataclass
from typing import Iterator, Optional

import numpy as np
import tensorflow as tf

from distft.data import columns, named
from distft.data.formats.base import Layout, Named, XY
from distft.data.formats.tfrecord import ShardedAsTFRecords
from distft.errors import DistftError


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
class CsvLayout(_CsvFile, ShardedAsTFRecords, XY):
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

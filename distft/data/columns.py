"""CSV columns as named fields, for models with several inputs or outputs (see data/named.py).

A column NAME is a field NAME of one value a record; columns NAME_0, ..., NAME_{k-1} (numbered
from 0, with no column NAME) are a field NAME of k values. A field is numeric (int64 when the
first rows hold whole numbers, else float32) or, when a column holds other text, class names
(type "str"), numbered by their sorted names when counted. An input of k values takes column
NAME (k = 1) or NAME_0..NAME_{k-1}; an output takes one column NAME (a class id or name, or a
value) or one column per output value. Image inputs cannot be fed from CSV. Other columns are
ignored.

Example:
    fields = csv_fields(["meta_0", "meta_1", "digit"], rows)   # meta (2,) float32, digit () str
    check(fields, inputs, outputs, targets=True, data="train.csv")
    columns_of(fields[0])   # ("meta_0", "meta_1")
"""
from __future__ import annotations

import math
import re
from typing import Optional

from distft.data.named import Field, Port
from distft.errors import DistftError

TEXT = "str"  # the dtype of a class-name field


def columns_of(f: Field) -> tuple[str, ...]:
    """The CSV columns that hold field `f`, in order."""
    return tuple(f"{f.name}_{i}" for i in range(f.shape[0])) if f.shape else (f.name,)


def csv_fields(header: list[str], rows: list[list[str]]) -> tuple[Field, ...]:
    """The fields of a CSV file from its header and first `rows`."""
    present = set(header)
    fields, taken = [], set()
    for name in header:
        if name in taken:
            continue
        base = re.fullmatch(r"(.+)_0", name)
        width = 0
        if base and base[1] not in present:
            while f"{base[1]}_{width}" in present:
                width += 1
        f = Field(base[1], "float32", (width,)) if width else Field(name, "float32", ())
        taken.update(columns_of(f))
        at = [header.index(c) for c in columns_of(f)]
        values = [r[i] for r in rows if len(r) == len(header) for i in at]
        numbers = [number(v) for v in values]
        dtype = TEXT if None in numbers else \
            "int64" if numbers and all(n == int(n) for n in numbers) else "float32"
        fields.append(Field(f.name, dtype, f.shape))
    return tuple(fields)


def number(value: str) -> Optional[float]:
    try:
        return float(value)
    except ValueError:
        return None


def check(fields: tuple[Field, ...], inputs: tuple[Port, ...], outputs: tuple, targets: bool,
          data: str) -> None:
    """The columns must feed the model: no image input, each input's columns present and
    numeric, each output's (when `targets`) one column or one per value; one error line."""
    by_name = {f.name: f for f in fields}
    for port in inputs:
        k = math.prod(port.shape)
        if len(port.shape) == 3:
            raise DistftError(f"--data={data}: the model's input '{port.name}' takes images "
                              f"{port.shape}, which CSV columns do not hold: write .npz arrays "
                              f"or TFRecord features named as the model's inputs and outputs")
        f = by_name.get(port.name)
        want = _wanted(port.name, k)
        if f is None or math.prod(f.shape) != k:
            raise DistftError(f"--data={data} has no column{'s' if k > 1 else ''} {want} for the "
                              f"model's input '{port.name}' ({k} value{'s' if k > 1 else ''} a "
                              f"record){_has(f)}: name the columns {want}")
        if f.dtype == TEXT:
            raise DistftError(f"--data={data}: {_columns(f)} for the model's input '{port.name}' "
                              "hold text: inputs take numbers")
    for name, shape in outputs if targets else ():
        k = math.prod(shape)
        f = by_name.get(name)
        want = repr(name) if k == 1 else f"{name!r} (one value) or {_wanted(name, k)}"
        if f is None:
            raise DistftError(f"--data={data} has no column {want} for the model's output "
                              f"'{name}': name the target column{'s' if k > 1 else ''} so")
        if f.dtype == TEXT and f.shape:
            raise DistftError(f"--data={data}: {_columns(f)} for the model's output '{name}' hold "
                              f"text: class names go in one column '{name}'")


def _wanted(name: str, k: int) -> str:
    return repr(name) if k == 1 else f"'{name}_0'" + (f", '{name}_1'" if k == 2 else f" .. '{name}_{k - 1}'")


def _columns(f: Field) -> str:
    cols = columns_of(f)
    return f"column '{cols[0]}'" if len(cols) == 1 else f"columns '{cols[0]}' .. '{cols[-1]}'"


def _has(f) -> str:
    return f" (it has {_columns(f)})" if f is not None else ""

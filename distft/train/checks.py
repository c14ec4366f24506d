"""Checks that the data fits the model, before any training: records against the model's
input, targets against each output and its activation, labels against the classes. One error
line naming both sides and the fix.

Example:
    check_fit(ft, data, num_classes=5)   # DistftError: --data labels span [0, 9] but the model has 5 classes...
"""
from __future__ import annotations

from typing import Optional

from distft.data.dataset import Ready
from distft.data.formats import Named, Text
from distft.errors import DistftError
from distft.model import objective
from distft.model.prepare import FineTuneModel


def check_fit(ft: FineTuneModel, data: Ready, num_classes: Optional[int] = None) -> None:
    """The data's records and targets must fit the model's input and output; one error line
    naming both shapes otherwise."""
    layout = data.layout
    if isinstance(layout, Named):
        one = len(ft.model.outputs) == 1  # its target may be `y` (data/named.py)
        for name, out in zip(ft.model.output_names, ft.model.outputs):
            field = layout.outputs[0] if one and layout.outputs else name
            if field in layout.outputs:
                f = next(f for f in layout.fields if f.name == field)
                _check_targets(tuple(out.shape), ft.activation(name), f.shape,
                               f.is_float, data.counts.ranges.get(field), list(f.classes),
                               num_classes, f"--data's '{name}'", f" --head={name}")
                _check_loss(tuple(out.shape), *ft.loss_of(name), f.shape, f"--data's '{name}'",
                            f"{name}=" if isinstance(ft.loss, dict) else "")
        return
    if isinstance(layout, Text) and not layout.label:  # a causal LM: its preprocessor makes the targets
        return
    layout.check_input(ft.input_shape)
    counts = data.counts
    _check_targets(tuple(ft.model.output_shape), ft.activation(), layout.y_shape,
                   layout.y_float, (counts.y_min, counts.y_max), list(data.classes),
                   num_classes, "--data")
    _check_loss(tuple(ft.model.output_shape), *ft.loss_of(), layout.y_shape, "--data")


def _check_loss(out: tuple, loss, origin: str, y_shape: tuple, what: str, output: str = "") -> None:
    """A crossentropy's targets: class ids for a sparse one, rows of the output's width for a
    categorical one (the loss's `origin`, e.g. the model file, is named in the error)."""
    if len(out) != 2 or out[-1] < 2:
        return
    kind = objective.loss_kind(loss)
    width = y_shape[-1] if y_shape else 1
    shape = f"(N, {', '.join(map(str, y_shape))})" if y_shape else "(N,)"
    source = f" (from {origin})" if origin == objective.FROM_FILE else ""
    logits = ":from_logits=true" if objective.options(loss).get("from_logits") else ""
    if kind == "sparse_categorical_crossentropy" and width > 1:
        raise DistftError(f"{what} targets have shape {shape}, rows, but the loss "
                          f"{objective.describe(loss)}{source} takes class ids (N,): pass "
                          f"--loss={output}categorical_crossentropy{logits}, or class-id targets")
    if kind in ("categorical_crossentropy", "categorical_focal_crossentropy") and width == 1:
        raise DistftError(f"{what} targets have shape {shape}, class ids, but the loss "
                          f"{objective.describe(loss)}{source} takes one-hot rows (N, {out[-1]}): "
                          f"pass --loss={output}sparse_categorical_crossentropy{logits}, or one-hot targets")


def _check_targets(out: tuple, act: str, y_shape: tuple, y_float: bool, y_range: Optional[tuple],
                   classes: list[str], num_classes: Optional[int], what: str, head_flag: str = "") -> None:
    """Targets of `y_shape` per record, spanning `y_range`, must fit an output of shape `out`
    with activation `act`; `what` names the targets in errors, `head_flag` follows each
    --num_classes hint (the output's --head)."""
    if len(out) != 2:
        return
    k = out[-1]
    width = y_shape[-1] if y_shape else 1
    found = (f"{what} targets have shape {'(N, ' + ', '.join(map(str, y_shape)) + ')' if y_shape else '(N,)'} "
             f"but the model's output is {out}")
    if width > 1 and width != k:
        raise DistftError(f"{found}: give targets of width {k}" + (
            f", or pass --num_classes={width}{head_flag} for a new head" if act == "softmax" else ""))
    if width == 1 and k > 1 and act != "softmax":
        logits = "" if act != "linear" or y_float else (
            f", or, if it gives the logits of {k} classes, pass --loss="
            f"{head_flag.replace(' --head=', '')}{'=' if head_flag else ''}"
            "sparse_categorical_crossentropy:from_logits=true")
        raise DistftError(f"{found}: a {act} output of {k} values needs targets of shape (N, {k})"
                          + logits)
    if y_range is None or act not in ("softmax", "sigmoid"):
        return
    lo, hi = y_range
    if width > 1 or act == "sigmoid":
        if lo < 0 or hi > 1:
            raise DistftError(f"{what} targets span [{lo:g}, {hi:g}] but the "
                              f"model's {act} output needs one-hot or 0/1 targets in [0, 1]")
        return
    if classes and len(classes) != k:
        names = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise DistftError(f"the model outputs {k} classes but the data has {len(classes)} "
                          f"({names}): pass --num_classes={len(classes)}" + (
                              "" if num_classes is None else " for the new head"))
    if y_float:
        raise DistftError(f"{what} labels are floats but the model is a classifier: "
                          "write integer class labels")
    if lo < 0 or hi >= k:
        raise DistftError(f"{what} labels span [{lo:.0f}, {hi:.0f}] but the "
                          f"model has {k} classes: labels must be in [0, {k}); "
                          f"set --num_classes{head_flag} to match the data")

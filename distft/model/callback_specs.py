"""The text of `--callbacks`, `--early_stopping` and `--keep_best`, read without evaluating
anything and without Keras (the options are checked before TensorFlow is imported); the
callbacks are built on the workers (train/callbacks/user.py).

`--callbacks` holds calls `CLASS(ARG, KEY=ARG, ...)` separated by `;` (YAML: a list of them).
The text is parsed with `ast`, and each argument must be a literal (`ast.literal_eval`: numbers,
strings, True/False/None, and lists, tuples, dicts and sets of them); nothing is evaluated.

Example:
    parse("keras.callbacks.EarlyStopping(monitor='val_loss', patience=2); ReduceLROnPlateau()")
    # [Call('keras.callbacks.EarlyStopping', (), (('monitor', 'val_loss'), ('patience', 2)), ...),
    #  Call('ReduceLROnPlateau', (), (), ...)]
    early_stopping("val_loss:patience=3").kwargs   # {'monitor': 'val_loss', 'patience': 3}
    monitored("EarlyStopping(monitor='val_auc')", None, "val_loss")   # [(option, 'val_auc'), (option, 'val_loss')]
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from typing import Any, Optional

from distft.errors import DistftError
from distft.model import specs

EXAMPLE = "--callbacks=\"keras.callbacks.EarlyStopping(monitor='val_loss', patience=2)\""
USAGE = (f"write CLASS(KEY=VALUE, ...) with literal values (numbers, strings, True/False/None, "
         f"lists), several separated by ';', e.g. {EXAMPLE}")
# What --early_stopping=METRIC:KEY=VALUE passes on to keras.callbacks.EarlyStopping.
EARLY_STOPPING_KEYS = ("patience", "min_delta", "mode", "baseline", "start_from_epoch")
MODES = ("auto", "min", "max")


@dataclass(frozen=True)
class Call:
    """`name(*args, **kwargs)`: a callback class by its (dotted) name, with literal arguments;
    `option` is the flag as given, for messages."""

    name: str
    args: tuple = ()
    kwargs: tuple = ()  # ((key, value), ...)
    option: str = ""

    @property
    def monitor(self) -> Optional[str]:
        """The metric it names with `monitor=` (Keras's convention), if given."""
        value = dict(self.kwargs).get("monitor")
        return value if isinstance(value, str) else None


def parse(text: Optional[str]) -> list[Call]:
    """The calls of a --callbacks value; DistftError naming the part that is not one."""
    text = (text or "").strip()
    if not text:
        return []
    try:
        tree = ast.parse(text, mode="exec")
    except SyntaxError as e:
        raise DistftError(f"--callbacks={text}: not a call ({e.msg}): {USAGE}") from None
    calls = []
    for statement in tree.body:
        source = ast.get_source_segment(text, statement)
        if not (isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call)):
            raise DistftError(f"--callbacks: {source} is not a call of a callback class: {USAGE}")
        call = statement.value
        name = _dotted(call.func)
        if name is None or any(part.startswith("_") for part in name.split(".")):
            raise DistftError(f"--callbacks: {ast.get_source_segment(text, call.func)} in {source} "
                              f"is not a class name (CLASS or MODULE.CLASS, no private names): {USAGE}")
        if any(k.arg is None for k in call.keywords):
            raise DistftError(f"--callbacks: {source}: **arguments are not literals: {USAGE}")
        calls.append(Call(name, tuple(_literal(a, text, source) for a in call.args),
                          tuple((k.arg, _literal(k.value, text, source)) for k in call.keywords),
                          f"--callbacks={source}"))
    return calls


def early_stopping(text: Optional[str]) -> Optional[Call]:
    """--early_stopping=METRIC[:patience=N:...] as the keras.callbacks.EarlyStopping it stands
    for (its other arguments Keras's defaults: patience 0, mode inferred from the metric)."""
    if not text:
        return None
    named = _monitored(text, "early_stopping", EARLY_STOPPING_KEYS)
    return Call("keras.callbacks.EarlyStopping", (), (("monitor", named.name), *named.args),
                f"--early_stopping={text}")


def keep_best(text: Optional[str]) -> Optional[specs.Named]:
    """--keep_best=METRIC[:mode=min|max]: the metric and its arguments."""
    return _monitored(text, "keep_best", ("mode",)) if text else None


def calls(callbacks: Optional[str], early: Optional[str]) -> list[Call]:
    """The callbacks that --callbacks and --early_stopping ask for, in that order."""
    return parse(callbacks) + [c for c in [early_stopping(early)] if c]


def monitored(callbacks: Optional[str], early: Optional[str], best: Optional[str]) -> list[tuple[str, str]]:
    """(option, metric) of every metric that --callbacks, --early_stopping and --keep_best name
    for a callback to monitor."""
    found = [(c.option, c.monitor) for c in calls(callbacks, early) if c.monitor]
    kept = keep_best(best)
    return found + ([(f"--keep_best={best}", kept.name)] if kept else [])


def _monitored(text: str, flag: str, keys: tuple[str, ...]) -> specs.Named:
    named = specs.parse(text, flag)
    unknown = [k for k, _ in named.args if k not in keys]
    if named.output or unknown:
        raise DistftError(f"--{flag}={text}: {'an output' if named.output else unknown[0]} is not "
                          f"one of its arguments ({', '.join(keys)}): write --{flag}="
                          f"{specs.EXAMPLES[flag]}")
    if named.kwargs.get("mode", "auto") not in MODES:
        raise DistftError(f"--{flag}={text}: mode is one of {'|'.join(MODES)}")
    return named


def _dotted(node: ast.AST) -> Optional[str]:
    """`a.b.C` for a Name or a chain of Attributes on one; None for anything else."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value)
        return f"{owner}.{node.attr}" if owner else None
    return None


def _literal(node: ast.AST, text: str, source: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        raise DistftError(f"--callbacks: {ast.get_source_segment(text, node)} in {source} is not a "
                          f"literal, and nothing is evaluated: {USAGE}") from None

"""The user's Keras callbacks: `--callbacks` (Keras's own, or a class of a module passed with
`--import`) and the `--early_stopping` and `--keep_best` shorthands, read without evaluating
anything and built on every worker.

`--callbacks` holds calls `CLASS(ARG, KEY=ARG, ...)` separated by `;` (YAML: a list of them).
The text is parsed with `ast`, and each argument must be a literal (`ast.literal_eval`: numbers,
strings, True/False/None, and lists, tuples, dicts and sets of them); nothing is evaluated. A
CLASS is a name in `keras.callbacks` (`EarlyStopping`), or MODULE.CLASS of a module already
imported (`keras.callbacks.EarlyStopping`, or a module of `--import`), and must subclass
`keras.callbacks.Callback`: only such a class is ever called. Parsing imports no Keras (config
checks run before TensorFlow is imported); `build` does, on the workers.

Example:
    parse("keras.callbacks.EarlyStopping(monitor='val_loss', patience=2); ReduceLROnPlateau()")
    # [Call('keras.callbacks.EarlyStopping', (), (('monitor', 'val_loss'), ('patience', 2)), ...),
    #  Call('ReduceLROnPlateau', (), (), ...)]
    early_stopping("val_loss:patience=3").kwargs   # {'monitor': 'val_loss', 'patience': 3}
    build(cfg)    # on every worker, after --import: [UserCallback('--callbacks=...', EarlyStopping)]
"""
from __future__ import annotations

import ast
import difflib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

from distft.errors import DistftError
from distft.model import specs

if TYPE_CHECKING:
    import keras

    from distft.config import TrainConfig

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


@dataclass(frozen=True)
class UserCallback:
    """A callback built from `option` (the flag as given)."""

    option: str
    callback: "keras.callbacks.Callback"


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


def calls(cfg: "TrainConfig") -> list[Call]:
    """The callbacks that --callbacks and --early_stopping ask for, in that order."""
    return parse(cfg.callbacks) + [c for c in [early_stopping(cfg.early_stopping)] if c]


def monitored(cfg: "TrainConfig") -> list[tuple[str, str]]:
    """(option, metric) of every metric that the options name for a callback to monitor."""
    found = [(c.option, c.monitor) for c in calls(cfg) if c.monitor]
    best = keep_best(cfg.keep_best)
    return found + ([(f"--keep_best={cfg.keep_best}", best.name)] if best else [])


def build(cfg: "TrainConfig") -> list[UserCallback]:
    """The callbacks of --callbacks and --early_stopping, made on this worker (after --import)."""
    built = []
    for call in calls(cfg):
        cls = _class(call)
        try:
            built.append(UserCallback(call.option, cls(*call.args, **dict(call.kwargs))))
        except Exception as e:  # the class's own check of its arguments
            raise DistftError(f"{call.option}: {call.name} refused its arguments ({type(e).__name__}: "
                              f"{e}): fix them") from e
    return built


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


def _class(call: Call) -> type:
    """The callback class `call` names: in keras.callbacks, or in a module already imported
    (Keras's, or --import's: no module is imported here)."""
    import keras

    module, _, attr = call.name.rpartition(".")
    owner = sys.modules.get(module) if module else keras.callbacks
    if owner is None:
        raise DistftError(f"{call.option}: module {module} is not imported: pass --import={module} "
                          f"(on PYTHONPATH) or --import=FILE.py, the module that defines {attr}")
    found = getattr(owner, attr, None)
    if _is_callback(found):
        return found
    names = [n for n in dir(owner) if _is_callback(getattr(owner, n, None))]
    close = difflib.get_close_matches(attr, names, n=1)
    hint = f"did you mean {module or 'keras.callbacks'}.{close[0]}? " if close else ""
    raise DistftError(f"{call.option}: {call.name} is not a Keras callback class: {hint}name one of "
                      "keras.callbacks' classes, or MODULE.CLASS of a module passed with --import")


def _is_callback(value: Any) -> bool:
    import keras

    return isinstance(value, type) and issubclass(value, keras.callbacks.Callback)

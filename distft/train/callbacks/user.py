"""The user's Keras callbacks, built on every worker from `--callbacks` and the
`--early_stopping` shorthand (their text read by model/callback_specs.py).

A CLASS is a name in `keras.callbacks` (`EarlyStopping`), or MODULE.CLASS of a module already
imported (`keras.callbacks.EarlyStopping`, or a module of `--import`), and must subclass
`keras.callbacks.Callback`: only such a class is ever called.

Example:
    build(cfg)    # on every worker, after --import: [UserCallback('--callbacks=...', EarlyStopping)]
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from distft.errors import DistftError
from distft.model.callback_specs import Call, calls

if TYPE_CHECKING:
    import keras

    from distft.config import TrainConfig


@dataclass(frozen=True)
class UserCallback:
    """A callback built from `option` (the flag as given)."""

    option: str
    callback: "keras.callbacks.Callback"


def build(cfg: "TrainConfig") -> list[UserCallback]:
    """The callbacks of --callbacks and --early_stopping, made on this worker (after --import)."""
    built = []
    for call in calls(cfg.callbacks, cfg.early_stopping):
        cls = _class(call)
        try:
            built.append(UserCallback(call.option, cls(*call.args, **dict(call.kwargs))))
        except Exception as e:  # the class's own check of its arguments
            raise DistftError(f"{call.option}: {call.name} refused its arguments ({type(e).__name__}: "
                              f"{e}): fix them") from e
    return built


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

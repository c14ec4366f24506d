"""The user's own classes in a model file: import their modules (`--import`), import Keras Hub
when the file names its classes, and name the classes that no imported module registered.

Example:
    import_modules("mylayers,src/blocks.py")   # before loading, on every worker
    unknown_classes(config)                    # [("mylayers>Scale", "mylayers")] if not imported
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any, Iterator, Optional, Sequence, Union

from distft.errors import DistftError, root_cause

HUB = "keras_hub"


def import_modules(specs: Union[str, Sequence[str], None]) -> None:
    """Import each module: a dotted name on sys.path, or a .py file (imported under its file
    name, its folder put first on sys.path as Python does for a script)."""
    if isinstance(specs, str):
        specs = specs.split(",")
    for spec in (s.strip() for s in specs or () if s.strip()):
        name = spec
        if spec.endswith(".py"):
            path = os.path.abspath(spec)
            if not os.path.isfile(path):
                raise DistftError(f"--import={spec} does not exist: check the path")
            name = os.path.basename(path)[:-3]
            if os.path.dirname(path) not in sys.path:
                sys.path.insert(0, os.path.dirname(path))
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name or name.startswith(f"{e.name}."):
                raise DistftError(f"--import={spec}: {e}: put its folder on PYTHONPATH or pass "
                                  "the .py file") from None
            raise DistftError(f"--import={spec}: {e} (imported by {name}): install it") from e
        except Exception as e:
            raise DistftError(f"--import={spec}: importing it failed ({type(e).__name__}: "
                              f"{root_cause(str(e))}): fix the module") from e
        if spec.endswith(".py") and os.path.realpath(module.__file__ or "") != os.path.realpath(path):
            raise DistftError(f"--import={spec}: a module named {name} is already imported from "
                              f"{module.__file__}: rename the file")


def use_keras_hub(model: str, config: Optional[dict]) -> None:
    """Import keras_hub when the model's config names its classes, so that they are found by
    their registered names (which, unlike module paths, stay the same across its releases)."""
    hub = next((name for name, module in classes(config)
                if (module or "").split(".")[0] == HUB or name.startswith(f"{HUB}>")), None)
    if hub is None:
        return
    if importlib.util.find_spec(HUB) is None:
        raise DistftError(f"--model={model} is a Keras Hub model ({hub}) and keras_hub is not "
                          "installed: install it as docs/lora.md's 'Keras Hub models' says "
                          "(Python 3.11 or newer)")
    importlib.import_module(HUB)


def classes(config: Any) -> Iterator[tuple[str, Optional[str]]]:
    """(name as the file gives it, module or None) for every object in a model config: the
    registered name (`package>Class`) and module of a .keras file, the class name of a .h5."""
    if isinstance(config, dict):
        if isinstance(config.get("class_name"), str):
            yield config.get("registered_name") or config["class_name"], config.get("module")
        for value in config.values():
            yield from classes(value)
    elif isinstance(config, list):
        for value in config:
            yield from classes(value)


def unknown_classes(config: Optional[dict]) -> list[tuple[str, Optional[str]]]:
    """The user classes in `config` (not Keras's own) that no imported module registered."""
    import keras

    unknown = []
    for name, module in classes(config):
        own = module is None and ">" not in name  # a .h5 names Keras's classes without a package
        if own or (module or "").split(".")[0] in ("keras", "builtins"):
            continue
        if keras.saving.get_registered_object(name) is None and (name, module) not in unknown:
            unknown.append((name, module))
    return unknown


def unknown_message(model: str, unknown: list[tuple[str, Optional[str]]]) -> str:
    """One line: the classes `model` uses that are not registered, and the flag that fixes it."""
    names = ", ".join(name for name, _ in unknown)
    modules = list(dict.fromkeys(module for _, module in unknown if module))
    imported = [m for m in modules if m in sys.modules]
    if imported:
        return (f"--model={model} uses {names}, which {', '.join(imported)} does not register: "
                "decorate the class with @keras.saving.register_keras_serializable() as when "
                "the model was saved")
    if modules and "__main__" not in modules:
        fix = f"pass --import={','.join(modules)} (on PYTHONPATH) or the .py file that defines it"
    else:
        fix = "pass --import=MODULE or --import=FILE.py, the module that defines it"
    return f"--model={model} uses {names}, which no imported module registers: {fix}"


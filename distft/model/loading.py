"""Load the model to fine-tune: a .keras file, a legacy .h5, a SavedModel folder, or app:NAME.

Files written by Keras 3 load as they are; files written by Keras 2 (TensorFlow <= 2.15), .h5
or .keras, are rebuilt on Keras 3 (model/keras2.py). An unreadable file's error names the
Keras version that wrote it, or the user classes that no imported module (--import) registers
(model/custom.py), or says the file is damaged.

What a model's layers do not tell about it (a SavedModel, a headless application) comes in a
`ModelFlags` record beside it, from `load_with_flags`. `model_file` finds the model of a
distft run folder (its model.keras), for the commands that take one.

Example:
    model = load("base_model.h5")
    model = load("app:MobileNetV2", weights="none", input_shape=(96, 96, 3))
    loaded = load_with_flags("app:MobileNetV2", weights="none", input_shape=(96, 96, 3))
    loaded.model, loaded.flags.headless                                  # ..., True
    model = load(model_file("runs/a"))                                   # runs/a/model.keras
"""
from __future__ import annotations

import json
import os
import zipfile
import zlib
from dataclasses import dataclass, field
from typing import NoReturn, Optional

import keras

from distft.errors import DistftError
from distft.model import custom, keras2


@dataclass(frozen=True)
class ModelFlags:
    """What loading learnt about a model that its layers do not tell."""

    saved_model: bool = False  # a SavedModel: one opaque layer, whose head cannot be replaced
    headless: bool = False  # keras.applications without its top: the new head goes on its output
    # The compile config of a .keras file Keras 3 wrote after compile() (its loss, metrics,
    # weighted metrics, loss weights, serialized), or None: the defaults of a kept head
    # (model/objective.py). Loading compiles nothing (compile=False).
    compiled: Optional[dict] = field(default=None, compare=False)


@dataclass(frozen=True)
class Loaded:
    """A loaded model and its flags, which hold for any rebuild of it too (precision.cast,
    lora.merged): nothing rides on the Keras object to be copied."""

    model: keras.Model
    flags: ModelFlags = ModelFlags()


def load(path: str, weights: str | None = None, input_shape: tuple | None = None,
         unsafe_deserialization: bool = False) -> keras.Model:
    """Return an uncompiled Keras model, or raise DistftError naming the problem and the fix."""
    return load_with_flags(path, weights, input_shape, unsafe_deserialization).model


def model_file(path: str) -> str:
    """`path`, or the model.keras in it when it is a distft run folder (a SavedModel folder is
    itself the model)."""
    if not os.path.isdir(path) or os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    inside = os.path.join(path, "model.keras")
    if not os.path.isfile(inside):
        raise DistftError(f"--model={path} is a folder with neither model.keras (a distft run "
                          "folder) nor saved_model.pb: pass a model file or a run folder")
    return inside


def load_with_flags(path: str, weights: str | None = None, input_shape: tuple | None = None,
                    unsafe_deserialization: bool = False) -> Loaded:
    """`load`'s model with its `ModelFlags`."""
    if path.startswith("app:"):
        return Loaded(_application(path[4:], weights, input_shape), ModelFlags(headless=True))
    if not os.path.exists(path):
        raise DistftError(f"--model={path} does not exist: check the path")
    kind = _kind(path)
    if kind == "SavedModel":
        return Loaded(_saved_model(path), ModelFlags(saved_model=True))
    version, config = _metadata(path, kind)
    model = _file(path, kind, unsafe_deserialization, version, config)
    return Loaded(model, ModelFlags(compiled=_compile_config(kind, version, config)))


def _compile_config(kind: str, version: Optional[str], config: Optional[dict]) -> Optional[dict]:
    """The compile config that Keras 3 saved in a .keras file's config.json (None if the model
    was not compiled, or Keras 2 wrote the file: its serialization is not Keras 3's)."""
    if kind != "keras" or not version or version.startswith("2.") or not config:
        return None
    compiled = config.get("compile_config")
    return compiled if isinstance(compiled, dict) and compiled else None


def _file(path: str, kind: str, unsafe_deserialization: bool, version: Optional[str],
          config: Optional[dict]) -> keras.Model:
    """A .keras or .h5 file's model (`version` and `config`: its `_metadata`)."""
    custom.use_keras_hub(path, config)
    safe = not unsafe_deserialization
    try:
        if version and version.startswith("2."):  # rebuilt from its upgraded config
            return (keras2.load_h5 if kind == "h5" else keras2.load_keras_zip)(path, safe_mode=safe)
        return keras.models.load_model(path, compile=False, safe_mode=safe)
    except Exception as e:
        text = str(e)
        if "safe_mode" in text or "Lambda" in text and "unsafe" in text:
            raise DistftError(f"--model={path} contains a Lambda layer, whose code Keras will not "
                              "run in safe mode: pass --unsafe_deserialization if you trust "
                              "the file") from e
        if kind == "keras":
            _check_members(path)
        unknown = custom.unknown_classes(config)
        if unknown:
            raise DistftError(custom.unknown_message(path, unknown)) from e
        by = f"written by Keras {version}" if version else "of no known Keras version"
        if version and version.startswith("2."):
            fix = "re-save it with Keras 2 as .h5 (model.save('model.h5')), or with Keras 3"
        elif version == keras.__version__:  # not a version problem: a class's own code failed
            fix = "check the get_config and from_config of the class it names (--debug shows where)"
        else:
            fix = "load it with the Keras that wrote it and save it again with Keras 3"
        raise DistftError(f"--model={path} ({kind}, {by}) cannot be rebuilt by Keras "
                          f"{keras.__version__} ({type(e).__name__}: {_first_line(e)}): {fix}") from e


def _kind(path: str) -> str:
    if os.path.isdir(path):
        if not os.path.exists(os.path.join(path, "saved_model.pb")):
            raise DistftError(f"--model={path} is a folder without saved_model.pb: "
                              "pass a .keras or .h5 file or a SavedModel folder")
        return "SavedModel"
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        return "h5"
    if head.startswith(b"PK"):
        return "keras"
    raise DistftError(f"--model={path} is neither a .keras (zip) nor an .h5 (HDF5) file: "
                      "pass a Keras model file")


def _metadata(path: str, kind: str) -> tuple[Optional[str], Optional[dict]]:
    """The Keras version recorded in a .h5 or .keras file and its model config, if any. Opening
    the file also finds one cut short in a copy, which is called damaged."""
    import h5py

    try:
        if kind == "h5":
            with h5py.File(path, "r") as f:
                version, config = (f.attrs.get(k) for k in ("keras_version", "model_config"))
        else:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
                version, config = (z.read(n) if n in names else None
                                   for n in ("metadata.json", "config.json"))
            version = _json(version).get("keras_version")
        version = version.decode() if isinstance(version, bytes) else version
        return version, _json(config) or None
    except (OSError, zipfile.BadZipFile, EOFError, zlib.error) as e:
        _damaged(path, kind, e)


def _json(data: bytes | str | None) -> dict:
    """A JSON object, or {} for none or text that is not one (no version or config to tell)."""
    try:
        value = json.loads(data) if data else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _check_members(path: str) -> None:
    """After Keras failed on a .keras file: a member whose CRC does not match is damage, not a
    version problem (read only then, not on every load)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        _damaged(path, "keras", e)
    if bad:
        _damaged(path, "keras", zipfile.BadZipFile(f"bad CRC in {bad}"))


def _damaged(path: str, kind: str, e: BaseException) -> NoReturn:
    raise DistftError(f"--model={path} is a damaged {kind} file ({type(e).__name__}: "
                      f"{_first_line(e)}): copy or save it again") from None


def _saved_model(path: str) -> keras.Model:
    """A SavedModel as Keras 3 allows: its serving function as one layer (`TFSMLayer`), whose
    variables train as a whole. Keras 3 keeps no layers of a SavedModel, so neither
    `--unfreeze` inside it nor a new head on it can work."""
    import tensorflow as tf

    try:
        loaded = tf.saved_model.load(path)
        endpoint = "serving_default"
        specs = loaded.signatures[endpoint].structured_input_signature[1]
        if len(specs) != 1:
            raise ValueError(f"its {endpoint} signature has {len(specs)} inputs, not one")
        (spec,) = specs.values()
        layer = keras.layers.TFSMLayer(path, call_endpoint=endpoint, trainable=True,
                                       name="saved_model")
        inputs = keras.Input(batch_shape=tuple(spec.shape), dtype=spec.dtype.name, name="input")
        outputs = layer(inputs)
        if isinstance(outputs, dict):
            if len(outputs) != 1:
                raise ValueError(f"its {endpoint} signature has {len(outputs)} outputs, not one")
            (outputs,) = outputs.values()
        return keras.Model(inputs, outputs, name=os.path.basename(os.path.normpath(path)))
    except Exception as e:
        raise DistftError(f"--model={path}: Keras {keras.__version__} cannot use this SavedModel "
                          f"({type(e).__name__}: {_first_line(e)}): save the model as .keras "
                          "(Keras 3) or .h5 (Keras 2) and pass that") from e


def _application(name: str, weights: str | None, input_shape: tuple | None) -> keras.Model:
    builder = getattr(keras.applications, name, None)
    if builder is None or not callable(builder):
        import difflib

        names = [n for n in dir(keras.applications) if n[0].isupper()]
        close = difflib.get_close_matches(name, names, n=3)
        raise DistftError(f"--model=app:{name} is not a keras.applications model"
                          + (f": did you mean {', '.join('app:' + c for c in close)}?" if close else ""))
    if weights in (None, "", "none", "None"):
        weights = None
    elif weights != "imagenet" and not os.path.exists(weights):
        raise DistftError(f"--weights={weights} does not exist: pass a weights file or --weights=none")
    try:
        # No top: distft adds its own head (--num_classes) on the pooled features.
        return builder(include_top=False, weights=weights, input_shape=input_shape, pooling="avg")
    except Exception as e:
        if weights == "imagenet":
            raise DistftError(f"app:{name} could not fetch its imagenet weights ({_first_line(e)}): "
                              "without internet pass --weights=FILE (a local weights .h5) "
                              "or --weights=none") from e
        raise DistftError(f"app:{name}: {_first_line(e)}: check --input_shape and --weights") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__

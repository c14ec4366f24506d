"""Load the model to fine-tune: a .keras file, a legacy .h5, a SavedModel folder, or app:NAME.

Example:
    model = load("base_model.h5")
    model = load("app:MobileNetV2", weights="none", input_shape=(96, 96, 3))
"""
from __future__ import annotations

import os
import zipfile

import tensorflow as tf

from distft.errors import DistftError


def load(path: str, weights: str | None = None, input_shape: tuple | None = None,
         unsafe_deserialization: bool = False) -> tf.keras.Model:
    """Return an uncompiled Keras model, or raise DistftError naming the problem and the fix."""
    if path.startswith("app:"):
        return _application(path[4:], weights, input_shape)
    if not os.path.exists(path):
        raise DistftError(f"--model={path} does not exist: check the path")
    kind = _kind(path)
    try:
        if kind == "keras":
            return tf.keras.models.load_model(path, compile=False, safe_mode=not unsafe_deserialization)
        return tf.keras.models.load_model(path, compile=False)
    except ValueError as e:
        if "safe_mode" in str(e) or "Lambda" in str(e):
            raise DistftError(f"--model={path} contains a Lambda layer, whose code Keras will not "
                              "run in safe mode: pass --unsafe_deserialization if you trust "
                              "the file") from e
        raise DistftError(f"--model={path} is not a loadable Keras {kind} model "
                          f"({_first_line(e)}): check the file") from e
    except Exception as e:
        raise DistftError(f"--model={path} is not a loadable Keras {kind} model "
                          f"({type(e).__name__}: {_first_line(e)}): check the file") from e


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
    if zipfile.is_zipfile(path):
        return "keras"
    raise DistftError(f"--model={path} is neither a .keras (zip) nor an .h5 (HDF5) file: "
                      "pass a Keras model file")


def _application(name: str, weights: str | None, input_shape: tuple | None) -> tf.keras.Model:
    builder = getattr(tf.keras.applications, name, None)
    if builder is None or not callable(builder):
        import difflib

        names = [n for n in dir(tf.keras.applications) if n[0].isupper()]
        close = difflib.get_close_matches(name, names, n=3)
        raise DistftError(f"--model=app:{name} is not a keras.applications model"
                          + (f": did you mean {', '.join('app:' + c for c in close)}?" if close else ""))
    if weights in (None, "", "none", "None"):
        weights = None
    elif weights != "imagenet" and not os.path.exists(weights):
        raise DistftError(f"--weights={weights} does not exist: pass a weights file or --weights=none")
    try:
        # No top: distft adds its own head (--num_classes) on the pooled features.
        model = builder(include_top=False, weights=weights, input_shape=input_shape, pooling="avg")
        model._distft_headless = True
        return model
    except Exception as e:
        if weights == "imagenet":
            raise DistftError(f"app:{name} could not fetch its imagenet weights ({_first_line(e)}): "
                              "without internet pass --weights=FILE (a local weights .h5) "
                              "or --weights=none") from e
        raise DistftError(f"app:{name}: {_first_line(e)}: check --input_shape and --weights") from e


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__

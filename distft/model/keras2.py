"""Open model files written by Keras 2 (tf.keras, TensorFlow <= 2.15) on Keras 3.

Keras 3 reads most Keras 2 `.h5` files itself, but not Keras 2's `.keras` zip files (their
config names modules such as `keras.src.engine.functional`, which Keras 3 does not have), and
not functional models holding a nested Sequential (Keras 2 counted the Sequential's own build
as its first call, so the config points at call 1 where Keras 3 has call 0). Both are fixed in
the config, which Keras 3's legacy deserializer then rebuilds; the weights load by layer name
and path, as Keras saved them.

Example:
    model = load_keras_zip("old.keras", safe_mode=True)     # a Keras 2.15 .keras file
    model = load_h5("old.h5", safe_mode=True)               # a Keras 2 .h5 file
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
from typing import Any

import keras


def load_keras_zip(path: str, safe_mode: bool = True) -> keras.Model:
    """A Keras 2 `.keras` file rebuilt on Keras 3, with its weights."""
    from keras.src.legacy.saving import saving_utils
    from keras.src.saving.serialization_lib import SafeModeScope

    with zipfile.ZipFile(path) as z, tempfile.TemporaryDirectory() as tmp:
        config = upgrade_config(json.loads(z.read("config.json")))
        z.extract("model.weights.h5", tmp)
        with SafeModeScope(safe_mode):
            model = saving_utils.model_from_config(config)
        model.load_weights(os.path.join(tmp, "model.weights.h5"))
    return model


def load_h5(path: str, safe_mode: bool = True) -> keras.Model:
    """A Keras 2 `.h5` file rebuilt on Keras 3 from its upgraded config, with its weights."""
    import h5py
    from keras.src.legacy.saving import legacy_h5_format, saving_utils
    from keras.src.saving.serialization_lib import SafeModeScope

    with h5py.File(path, "r") as f:
        config = f.attrs["model_config"]
        config = upgrade_config(json.loads(config.decode() if isinstance(config, bytes) else config))
        with SafeModeScope(safe_mode):
            model = saving_utils.model_from_config(config)
        legacy_h5_format.load_weights_from_hdf5_group(f["model_weights"], model)
    return model


def upgrade_config(node: Any) -> Any:
    """A Keras 2 model config, changed in place where Keras 3 reads it differently."""
    if isinstance(node, dict):
        if str(node.get("module", "")).startswith("keras.src.engine"):
            node["module"] = "keras.src.models.functional" if node.get("class_name") == "Functional" \
                else "keras"
        config = node.get("config")
        if isinstance(config, dict) and isinstance(config.get("layers"), list):
            _renumber_sequential_calls(config["layers"])
        for value in node.values():
            upgrade_config(value)
    elif isinstance(node, list):
        for value in node:
            upgrade_config(value)
    return node


def _renumber_sequential_calls(layers: list) -> None:
    """Calls of a nested Sequential that starts with an InputLayer counted from 0, not 1."""
    built = {layer["config"]["name"] for layer in layers
             if isinstance(layer, dict) and layer.get("class_name") == "Sequential"
             and (layer["config"].get("layers") or [{}])[0].get("class_name") == "InputLayer"}
    for layer in layers:
        for node in layer.get("inbound_nodes", []) if isinstance(layer, dict) else []:
            for edge in node if isinstance(node, list) else []:
                if isinstance(edge, list) and edge and edge[0] in built and edge[1] > 0:
                    edge[1] -= 1

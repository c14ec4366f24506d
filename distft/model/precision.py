"""Mixed precision: layers compute in float16 or bfloat16, variables and the output stay float32.

`use()` sets Keras' global policy, so models built afterwards (app:NAME, the new head) follow
it; `cast()` rebuilds a loaded model, whose saved layers keep the dtype they were saved with,
so that its layers compute in the policy too. The model's output stays float32 (its output
layer is left in float32, and the new head is float32), as the Keras mixed-precision guide
advises for a numerically stable loss.

Example:
    use("mixed_bfloat16")
    model = cast(keras.models.load_model("base.h5"), "mixed_bfloat16")
    model.layers[1].compute_dtype, model.output.dtype    # 'bfloat16', float32
"""
from __future__ import annotations

from typing import Any

import keras
import tensorflow as tf

FLOAT32 = "float32"


def use(policy: str) -> None:
    """Make `policy` Keras' global dtype policy (before any model is built or loaded)."""
    keras.mixed_precision.set_global_policy(policy)


def cast(model: keras.Model, policy: str) -> keras.Model:
    """`model` with every layer (nested ones too) computing in `policy`, weights kept."""
    if policy == FLOAT32 or all(l.dtype_policy.name == policy for l in _leaves(model)):
        return model
    config = model.get_config()
    output_layer = model.outputs[0]._keras_history.operation.name
    _set_dtype(config, policy, keep=output_layer)
    rebuilt = model.__class__.from_config(config)
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def _leaves(model: keras.layers.Layer) -> list[keras.layers.Layer]:
    if isinstance(model, keras.Model):
        return [leaf for sub in model.layers for leaf in _leaves(sub)]
    return [] if isinstance(model, keras.layers.InputLayer) else [model]


def _set_dtype(node: Any, policy: str, keep: str) -> None:
    """Set `dtype` in every layer config below `node` but InputLayers (the data's dtype) and
    the layer named `keep` (the output)."""
    if isinstance(node, dict):
        config = node.get("config")
        if isinstance(config, dict) and "dtype" in config and config.get("name") != keep \
                and node.get("class_name") != "InputLayer":
            config["dtype"] = policy
        for value in node.values():
            _set_dtype(value, policy, keep)
    elif isinstance(node, list):
        for value in node:
            _set_dtype(value, policy, keep)

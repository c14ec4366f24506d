"""Replace a model's last layer with a new classification head, and pick loss and metrics.

Example:
    model, head = replace_head(base, num_classes=5, dropout=0.2, seed=42)
    loss, metrics = default_objective(model, target_shape=())   # sparse CE + accuracy for class ids
"""
from __future__ import annotations

import keras
import tensorflow as tf

from distft.errors import DistftError

HEAD_NAME = "distft_head"


def replace_head(base: keras.Model, num_classes: int, dropout: float = 0.0,
                 seed: int = 0) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """A model ending in a new Dense softmax head of `num_classes`; returns (model, head layers).

    The base's last layer is dropped (with a weight-less activation layer after it, if any),
    except for headless bases (keras.applications with include_top=False) which keep all.
    """
    if len(base.inputs) != 1:
        raise DistftError("distft fine-tunes models with one input; this model has "
                          f"{len(base.inputs)}")
    features = _features(base)
    x = features
    if len(x.shape) > 2:
        x = keras.layers.GlobalAveragePooling2D(name="distft_pool")(x) if len(x.shape) == 4 \
            else keras.layers.Flatten(name="distft_flatten")(x)
    head: list[keras.layers.Layer] = []
    if dropout:
        head.append(keras.layers.Dropout(dropout, seed=seed, name="distft_head_dropout"))
    head.append(keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name=HEAD_NAME,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed)))
    for layer in head:
        x = layer(x)
    return keras.Model(base.inputs[0], x, name=f"{base.name}_ft"), head


def _features(base: keras.Model) -> tf.Tensor:
    if getattr(base, "_distft_headless", False):
        return base.outputs[0]
    layers = [l for l in base.layers if not isinstance(l, keras.layers.InputLayer)]
    if len(base.outputs) != 1 or not layers:
        raise DistftError("--num_classes needs a model with one output")
    last = layers[-1]
    if not last.weights and len(layers) > 1:  # e.g. Dense followed by Activation('softmax')
        last = layers[-2]
    node_input = last.input
    if isinstance(node_input, (list, tuple)):
        raise DistftError(f"cannot replace last layer '{last.name}': it has several inputs")
    return node_input


def output_activation(model: keras.Model) -> str:
    """'softmax', 'sigmoid' or 'linear': the activation that produces the model's output."""
    last = model.layers[-1]
    while isinstance(last, keras.Model):
        last = last.layers[-1]
    act = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    name = getattr(act, "__name__", str(act)) if act is not None else "linear"
    return name if name in ("softmax", "sigmoid") else "linear"


def default_objective(model: keras.Model, target_shape: tuple = ()) -> tuple[str, list[str]]:
    """Loss and metrics that follow the head and the target's shape per record: class ids
    (sparse) or one-hot rows (K,) under softmax, one or K 0/1 labels under sigmoid, values
    under a linear head."""
    act = output_activation(model)
    rows = bool(target_shape) and target_shape[-1] > 1
    if act == "softmax":
        return ("categorical_crossentropy" if rows else "sparse_categorical_crossentropy"), ["accuracy"]
    if act == "sigmoid":
        return "binary_crossentropy", ["binary_accuracy" if rows else "accuracy"]
    return "mean_squared_error", ["mean_absolute_error"]

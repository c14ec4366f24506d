"""Replace a model's last layer with a new classification head, and pick loss and metrics.

Example:
    model, head = replace_head(base, num_classes=5, dropout=0.2, seed=42)
    loss, metrics = default_objective(model, target_shape=())   # sparse CE + accuracy for class ids
    model, head = replace_head(two_heads, num_classes=3, output="digit")   # keeps output 'digit'
"""
from __future__ import annotations

from typing import Optional

import keras
import tensorflow as tf

from distft.errors import DistftError

HEAD_NAME = "distft_head"


def replace_head(base: keras.Model, num_classes: int, dropout: float = 0.0, seed: int = 0,
                 output: Optional[str] = None, headless: bool = False
                 ) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """A model ending in a new Dense softmax head of `num_classes`; returns (model, head layers).

    The base's last layer is dropped (with a weight-less activation layer after it, if any),
    except for `headless` bases (keras.applications with include_top=False, as loading's
    ModelFlags say) which keep all.
    With several outputs (or inputs), the head of `output` is replaced; the new head keeps
    that output's name, so the data's target of that name still feeds it.
    """
    if output is not None or len(base.inputs) > 1:
        return _replace_output(base, output or base.output_names[0], num_classes, dropout, seed)
    features = base.outputs[0] if headless else _features(base)
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


def replace_task_head(task: keras.Model, num_classes: int, dropout: float = 0.0, seed: int = 0
                      ) -> tuple[keras.Model, list[keras.layers.Layer]]:
    """A Keras Hub classifier task (saved with its own preprocessor) with a new softmax head of
    `num_classes`: the same task class on the same backbone and preprocessor, so that it stays
    that task, which keras_hub opens with its preprocessor; returns (task, head layers)."""
    from distft.model.unfreeze import flatten

    config = {k: v for k, v in task.get_config().items() if k not in ("backbone", "preprocessor")}
    config.update({k: v for k, v in (("activation", "softmax"), ("dropout", dropout)) if k in config})
    new = type(task)(backbone=task.backbone, preprocessor=task.preprocessor, **{**config, "num_classes": num_classes})
    dense = new.layers[-1]
    dense.kernel.assign(keras.initializers.GlorotUniform(seed=seed)(dense.kernel.shape))
    body = {id(l) for l in flatten(task.backbone)}
    return new, [l for l in flatten(new) if id(l) not in body]


def _replace_output(base: keras.Model, output: str, num_classes: int, dropout: float,
                    seed: int) -> tuple[keras.Model, list[keras.layers.Layer]]:
    names = list(base.output_names)
    if output not in names:
        raise DistftError(f"--head={output} is not an output of the model: pass one of "
                          f"{', '.join(names)}")
    index = names.index(output)
    x = _node_input(base.outputs[index]._keras_history.operation)
    head: list[keras.layers.Layer] = []
    if dropout:
        head.append(keras.layers.Dropout(dropout, seed=seed, name=f"distft_{output}_dropout"))
    if len(x.shape) > 2:
        head.insert(0, keras.layers.GlobalAveragePooling2D(name=f"distft_{output}_pool")
                    if len(x.shape) == 4 else keras.layers.Flatten(name=f"distft_{output}_flatten"))
    head.append(keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name=output,
        kernel_initializer=keras.initializers.GlorotUniform(seed=seed)))
    for layer in head:
        x = layer(x)
    outputs = list(base.outputs)
    outputs[index] = x
    return keras.Model(base.inputs, outputs, name=f"{base.name}_ft"), head


def _node_input(last: keras.layers.Layer) -> tf.Tensor:
    """The tensor that feeds the output layer `last` (or the layer with weights before it, when
    `last` is a weight-less activation)."""
    before = getattr(last.input, "_keras_history", None)
    if not last.weights and before is not None and before.operation.weights:
        last = before.operation
    if isinstance(last.input, (list, tuple)):
        raise DistftError(f"cannot replace last layer '{last.name}': it has several inputs")
    return last.input


def _features(base: keras.Model) -> tf.Tensor:
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


def output_activation(model: keras.Model, output: Optional[str] = None) -> str:
    """'softmax', 'sigmoid' or 'linear': the activation that produces the model's output (or
    its output named `output`)."""
    last = model.layers[-1] if output is None else \
        model.outputs[list(model.output_names).index(output)]._keras_history.operation
    while isinstance(last, keras.Model):
        last = last.layers[-1]
    act = getattr(last, "activation", None)
    if isinstance(last, keras.layers.Softmax):
        return "softmax"
    name = getattr(act, "__name__", str(act)) if act is not None else "linear"
    return name if name in ("softmax", "sigmoid") else "linear"


def default_objective(model: keras.Model, target_shape: tuple = (),
                      output: Optional[str] = None, activation: Optional[str] = None
                      ) -> tuple[str, list[str]]:
    """Loss and metrics that follow the head (of `output`, with several) and the target's shape
    per record: class ids (sparse) or one-hot rows (K,) under softmax, one or K 0/1 labels under
    sigmoid, values under a linear head. `activation`: the head's as its loss reads it, if not
    its own (a linear output whose loss applies softmax to logits: model/objective.py).

    distft's new head (`replace_head`) ends in softmax, so its loss takes probabilities
    (from_logits=False, Keras' default)."""
    act = activation or output_activation(model, output)
    rows = bool(target_shape) and target_shape[-1] > 1
    if act == "softmax":
        return ("categorical_crossentropy" if rows else "sparse_categorical_crossentropy"), ["accuracy"]
    if act == "sigmoid":
        return "binary_crossentropy", ["binary_accuracy" if rows else "accuracy"]
    return "mean_squared_error", ["mean_absolute_error"]

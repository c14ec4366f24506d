"""Split a model into its frozen prefix and the trainable rest that consumes it.

The prefix holds every layer that no trainable layer feeds; the rest holds the others and
must read the prefix through exactly one tensor. Both share the original layers, so training
the rest trains the full model. The prefix must compute the same thing while training as at
inference (no Dropout, noise or random augmentation layers), since it is run once, at inference.

Example:
    prefix, rest = split(model, trainable={"conv2", "features", "distft_head"})
    features = prefix(x); rest(features)          # == model(x)
"""
from __future__ import annotations

import keras
from keras.src.models.functional import Functional
from keras.src.ops.function import make_node_key

from distft.errors import DistftError
from distft.model import unfreeze as unfreezing

# Layers whose training-time output differs from inference: cannot be cached.
RANDOM_IN_TRAINING = ("Dropout", "SpatialDropout", "GaussianNoise", "GaussianDropout",
                      "AlphaDropout", "Random")


def split(model: keras.Model, trainable: set[str]) -> tuple[keras.Model, keras.Model]:
    """(prefix, rest) of a functional `model` given the names of the layers that ever train."""
    why = "--cache_frozen"
    if not isinstance(model, Functional):
        raise DistftError(f"{why}: the model is not a functional Keras model, so distft cannot "
                          "find its frozen prefix: leave out --cache_frozen")
    tainted: set[str] = set()  # layers fed (directly or not) by a trainable layer, and those
    inputs_of = {}
    for layer in model.layers:  # functional models list layers in topological order
        nodes = _calls_in(model, layer)
        if len(nodes) > 1:
            raise DistftError(f"{why}: layer '{layer.name}' is used more than once, so the "
                              "model cannot be split: leave out --cache_frozen")
        inputs_of[layer.name] = [] if isinstance(layer, keras.layers.InputLayer) else \
            list(nodes[0].input_tensors)
        parents = {_producer(t) for t in inputs_of[layer.name]}
        leaves = {l.name for l in unfreezing.flatten(layer)}
        if leaves & trainable or tainted & parents:
            tainted.add(layer.name)
    boundary = {}  # the prefix tensors the rest reads
    for layer in model.layers:
        if layer.name in tainted:
            for tensor in inputs_of[layer.name]:
                if _producer(tensor) not in tainted:
                    boundary[id(tensor)] = tensor
    inputs = {id(t) for t in model.inputs}
    if len(boundary) != 1:
        names = sorted({_producer(t) for t in boundary.values()})
        raise DistftError(f"{why}: the trainable layers read the frozen part through "
                          f"{len(boundary)} tensors ({', '.join(names)}), not one: freeze or "
                          "unfreeze layers so one tensor separates them, or leave it out")
    (tensor,) = boundary.values()
    if id(tensor) in inputs:
        raise DistftError(f"{why}: no frozen layer comes before the first trainable one, so "
                          "there is nothing to cache: leave out --cache_frozen")
    prefix = keras.Model(model.inputs[0], tensor, name=f"{model.name}_frozen")
    random = [l.name for l in prefix.layers if type(l).__name__.startswith(RANDOM_IN_TRAINING)]
    if random:
        raise DistftError(f"{why}: frozen layers {', '.join(random)} are random while training, "
                          "so their output cannot be computed once: leave out --cache_frozen")
    rest_input = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name="frozen_features")
    return prefix, keras.Model(rest_input, _replay(model, tensor, rest_input), name=f"{model.name}_rest")


def _producer(tensor) -> str:
    """The name of the layer whose output `tensor` is."""
    return tensor._keras_history.operation.name


def _replay(model: keras.Model, boundary, new_input):
    """`model`'s outputs computed from `new_input` in place of the tensor `boundary`, calling
    the same layer objects (so their weights are shared). Keras 3 builds a functional model
    only from its own Input tensors."""
    computed = {id(boundary): new_input}

    def value(x):
        return computed[id(x)] if isinstance(x, keras.KerasTensor) else x

    for layer in model.layers:
        nodes = _calls_in(model, layer)
        if not nodes or isinstance(layer, keras.layers.InputLayer):
            continue
        node = nodes[0]
        if not all(id(t) in computed for t in node.input_tensors):
            continue  # part of the frozen prefix
        outputs = layer(*keras.tree.map_structure(value, node.arguments.args),
                        **keras.tree.map_structure(value, node.arguments.kwargs))
        for old, new in zip(node.output_tensors, keras.tree.flatten(outputs)):
            computed[id(old)] = new
    return [computed[id(t)] for t in model.outputs][0]


def _calls_in(model: keras.Model, layer: keras.layers.Layer) -> list:
    """The nodes (calls) of `layer` that belong to `model`'s graph."""
    return [n for i, n in enumerate(layer._inbound_nodes) if make_node_key(layer, i) in model._nodes]

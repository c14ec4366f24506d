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

import tensorflow as tf

from distft.errors import DistftError
from distft.model import unfreeze as unfreezing

# Layers whose training-time output differs from inference: cannot be cached.
RANDOM_IN_TRAINING = ("Dropout", "SpatialDropout", "GaussianNoise", "GaussianDropout",
                      "AlphaDropout", "Random")


def split(model: tf.keras.Model, trainable: set[str]) -> tuple[tf.keras.Model, tf.keras.Model]:
    """(prefix, rest) of a functional `model` given the names of the layers that ever train."""
    why = "--cache_frozen"
    if not getattr(model, "_is_graph_network", False):
        raise DistftError(f"{why}: the model is not a functional Keras model, so distft cannot "
                          "find its frozen prefix: leave out --cache_frozen")
    tainted: set[str] = set()  # layers fed (directly or not) by a trainable layer, and those
    inputs_of = {}
    for layer in model.layers:  # functional models list layers in topological order
        nodes = [i for i in range(len(layer._inbound_nodes))
                 if f"{layer.name}_ib-{i}" in model._network_nodes]  # this model's calls
        if len(nodes) > 1:
            raise DistftError(f"{why}: layer '{layer.name}' is used more than once, so the "
                              "model cannot be split: leave out --cache_frozen")
        inputs_of[layer.name] = [] if isinstance(layer, tf.keras.layers.InputLayer) else \
            tf.nest.flatten(layer.get_input_at(nodes[0]))
        parents = {t._keras_history.layer.name for t in inputs_of[layer.name]}
        leaves = {l.name for l in unfreezing.flatten(layer)}
        if leaves & trainable or tainted & parents:
            tainted.add(layer.name)
    boundary = {}  # the prefix tensors the rest reads
    for layer in model.layers:
        if layer.name in tainted:
            for tensor in inputs_of[layer.name]:
                if tensor._keras_history.layer.name not in tainted:
                    boundary[id(tensor)] = tensor
    inputs = {id(t) for t in model.inputs}
    if len(boundary) != 1:
        names = sorted({t._keras_history.layer.name for t in boundary.values()})
        raise DistftError(f"{why}: the trainable layers read the frozen part through "
                          f"{len(boundary)} tensors ({', '.join(names)}), not one: freeze or "
                          "unfreeze layers so one tensor separates them, or leave it out")
    (tensor,) = boundary.values()
    if id(tensor) in inputs:
        raise DistftError(f"{why}: no frozen layer comes before the first trainable one, so "
                          "there is nothing to cache: leave out --cache_frozen")
    prefix = tf.keras.Model(model.inputs, tensor, name=f"{model.name}_frozen")
    random = [l.name for l in prefix.layers if type(l).__name__.startswith(RANDOM_IN_TRAINING)]
    if random:
        raise DistftError(f"{why}: frozen layers {', '.join(random)} are random while training, "
                          "so their output cannot be computed once: leave out --cache_frozen")
    return prefix, tf.keras.Model(tensor, model.outputs, name=f"{model.name}_rest")


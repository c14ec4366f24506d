"""Choose which layers train: `none`, `all`, `last:N`, `from:NAME`, `re:PATTERN`, comma-separated.

Nested models are flattened to their leaf layers. BatchNormalization layers stay frozen
(and so run in inference mode) unless `train_bn` is set; `last:N` counts layers with
weights other than those frozen BatchNormalization layers.

Example:
    chosen = select(model, "last:2,re:^block_13")
    apply(model, chosen, train_bn=False)
"""
from __future__ import annotations

import difflib
import re

import keras
import tensorflow as tf

from distft.errors import DistftError
from distft.model import lora


def flatten(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The leaf layers of a (possibly nested) model, in order; InputLayers dropped. A layer
    reached twice (a shared one, such as the tied input and output embedding of a Keras Hub
    language model, called in its backbone and again by the task) is listed once, where it is
    first reached, so that `--unfreeze` and `--lora` set it once."""
    seen: set[int] = set()
    return [leaf for leaf in _leaves(layer) if not (id(leaf) in seen or seen.add(id(leaf)))]


def _leaves(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    if isinstance(layer, keras.Model):
        return [leaf for sub in layer.layers for leaf in _leaves(sub)]
    return [] if isinstance(layer, keras.layers.InputLayer) else [layer]


def _is_bn(layer: keras.layers.Layer) -> bool:
    return isinstance(layer, keras.layers.BatchNormalization)


def select(layers: list[keras.layers.Layer], spec: str, train_bn: bool = False,
           flag: str = "--unfreeze") -> set[int]:
    """Indices into `layers` chosen by `spec`; an unmatched name or pattern is an error
    (its message names `flag`, the option the spec came from)."""
    names = [l.name for l in layers]
    chosen: set[int] = set()
    for part in (p.strip() for p in spec.split(",")):
        kind, _, arg = part.partition(":")
        if part == "none":
            continue
        if part == "all":
            chosen.update(range(len(layers)))
        elif kind == "last":
            if not arg.isdigit() or int(arg) < 1:
                raise DistftError(f"{flag}={part}: N must be a positive integer, e.g. last:2")
            weighted = [i for i, l in enumerate(layers) if l.weights and (train_bn or not _is_bn(l))]
            chosen.update(weighted[-int(arg):])
        elif kind == "from":
            if arg not in names:
                raise DistftError(f"{flag}={part}: no layer named '{arg}'{_close(arg, names)}")
            chosen.update(range(names.index(arg), len(layers)))
        elif kind == "re":
            try:
                pattern = re.compile(arg)
            except re.error as e:
                raise DistftError(f"{flag}={part}: bad regular expression ({e})") from None
            hits = [i for i, n in enumerate(names) if pattern.search(n)]
            if not hits:
                raise DistftError(f"{flag}={part}: no layer name matches '{arg}'{_close(arg, names)}")
            chosen.update(hits)
        else:
            raise DistftError(f"{flag}={part}: not understood; use none, all, last:N, "
                              "from:NAME or re:PATTERN (comma-separated)")
    return chosen


def _close(word: str, names: list[str]) -> str:
    close = difflib.get_close_matches(word, names, n=3, cutoff=0.5)
    return f"; close matches: {', '.join(close)}" if close else "; see 'distft inspect --model=...'"


def apply(model: keras.Model, layers: list[keras.layers.Layer], chosen: set[int],
          train_bn: bool = False) -> None:
    """Set `trainable` on every leaf layer; containers stay trainable so leaves decide. A leaf
    holding LoRA layers (model/lora.py) trains their factors alone."""
    _containers_trainable(model)
    for i, layer in enumerate(layers):
        layer.trainable = i in chosen and (train_bn or not _is_bn(layer))
        if lora.layers_with_lora(layer):
            _factors_only(layer)


def _factors_only(layer: keras.layers.Layer) -> None:
    """Train the LoRA factors in `layer` and nothing else: Keras's `enable_lora` freezes the
    kernel but leaves the bias trainable, and setting `trainable` on a layer undoes it."""
    layer.trainable = True
    for weight in layer.weights:
        weight.trainable = lora.is_factor(weight)


def _containers_trainable(layer: keras.layers.Layer) -> None:
    if isinstance(layer, keras.Model):
        layer.trainable = True
        for sub in layer.layers:
            _containers_trainable(sub)


def count_params(weights: list[tf.Variable]) -> int:
    return int(sum(w.shape.num_elements() for w in weights))

"""Which of a model's variables train, which are frozen and which are statistics: the one rule
behind the start line's counts, the per-epoch average of statistics, elastic mode's commits,
LoRA and staged unfreezing.

Every variable of `model.variables` lands in exactly one class (a variable that several layers
share, once):
- trainable: what the optimizer updates now (`model.trainable_variables`, in that order);
- frozen: weights that do not change: every weight of a leaf layer that does not train, and in
  one that trains those created trainable and frozen since (under LoRA the layer's kernel and
  bias, which `enable_lora` and distft froze), and a quantized layer's weights and scales
  (--quantize);
- statistics: the variables created non-trainable in a layer that trains, which training
  changes outside the gradients (BatchNormalization's moving mean and variance under
  --train_bn); a BatchNormalization layer that does not train holds frozen ones instead;
- seeds: the seed generators' states (Dropout's), whose counters advance wherever a layer draws
  random numbers in training, in frozen layers too.

Example:
    kinds = classify(model)
    count_params(kinds.trainable), count_params(kinds.frozen), count_params(kinds.statistics)
    classify(model, ever_trainable=plan.ever_trainable())   # as if every stage's layers trained
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional

import keras

from distft.model.unfreeze import flatten


@dataclass(frozen=True)
class Variables:
    """A model's variables by class, each in the model's variable order."""

    trainable: tuple
    frozen: tuple
    statistics: tuple
    seeds: tuple


def classify(model: keras.Model, ever_trainable: Optional[Iterable[str]] = None) -> Variables:
    """Sort every variable of `model` into trainable, frozen, statistics and seeds (see the
    module's docstring), as the layers' `trainable` flags stand now.

    `ever_trainable`: names of leaf layers that train in some stage (`Plan.ever_trainable()`);
    a leaf named there that is frozen now is classed as it is when it trains: its weights
    created trainable are trainable (after those that train now), its other variables
    statistics."""
    ever = set(ever_trainable or ())
    owner: dict[int, keras.layers.Layer] = {}
    for leaf in flatten(model):
        for v in leaf.variables:
            owner.setdefault(id(v), leaf)
    layers = model._flatten_layers(include_self=True, recursive=True)
    created_trainable = {id(v) for l in layers for v in l._trainable_variables}
    quantized = {id(v) for l in layers if getattr(l, "quantization_mode", None) for v in l._non_trainable_variables}
    seed_states = {id(g.state) for l in layers for g in l._seed_generators}
    now = {id(v) for v in model.trainable_variables}
    trainable, later, frozen, statistics, seeds = [], [], [], [], []
    seen: set[int] = set()
    for v in model.variables:
        if id(v) in seen:
            continue
        seen.add(id(v))
        leaf = owner.get(id(v))
        trains = model.trainable if leaf is None else leaf.trainable
        some_stage = not trains and leaf is not None and leaf.name in ever
        if id(v) in now:
            trainable.append(v)
        elif id(v) in seed_states:
            seeds.append(v)
        elif not (trains or some_stage) or id(v) in quantized:
            frozen.append(v)
        elif id(v) in created_trainable:
            (later if some_stage else frozen).append(v)
        else:
            statistics.append(v)
    return Variables(tuple(trainable + later), tuple(frozen), tuple(statistics), tuple(seeds))

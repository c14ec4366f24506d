"""Per-worker randomness inside the model: Dropout (and every other layer that draws from a
Keras SeedGenerator) draws different numbers on each worker, as one worker draws a different
mask for each record of a larger batch, while the weights stay identical (the gradients are
averaged).

A SeedGenerator's state is (seed, counter). The broadcast at the start gives every worker rank
0's state; `per_worker` then sets the seed part from `--seed`, the worker's rank and the
generator's place in the model, and keeps the counter, which advances by the same steps on
every worker, so a resumed run continues each worker's sequence where it stopped.

Example:
    worker.broadcast_variables(model.variables)
    per_worker(model, seed=42, rank=hvd.rank())
"""
from __future__ import annotations

import keras

from distft.model.unfreeze import flatten

_PRIME = 1_000_003


def generators(model: keras.Model) -> list:
    """The model's SeedGenerators, in layer order."""
    return [g for layer in flatten(model) for g in getattr(layer, "_seed_generators", [])]


def per_worker(model: keras.Model, seed: int, rank: int) -> int:
    """Give each of the model's seed generators a seed of its own on this worker; returns how
    many generators."""
    found = generators(model)
    for i, g in enumerate(found):
        counter = g.state.numpy()[1]
        g.state.assign([(seed * _PRIME + rank * 7919 + i) % (2 ** 31), counter])
    return len(found)

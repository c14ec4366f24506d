"""Layer-wise learning rates: each weight's update scaled by its layer's factor.

The optimizer applies its usual update, then every weight with a factor f is set to
`old + f * (new - old)`. For SGD (with or without momentum), Adam, AdamW (its weight decay
included) and RMSprop the update is proportional to the learning rate, so this is exactly
training that weight with `f * lr` (f = 0 leaves it bit-identical). Scaling the *gradients*
would not be: Adam and RMSprop divide by the gradient's own scale, and AdamW's decay ignores it.

Example:
    scale_updates(optimizer, {id(v): 0.1 for v in model.get_layer("conv1").trainable_weights})
    model.compile(optimizer=optimizer, ...)
"""
from __future__ import annotations

import keras
import tensorflow as tf


def scale_updates(optimizer: keras.optimizers.Optimizer, factors: dict) -> None:
    """Scale the updates `optimizer.apply` makes to the variables keyed (by `id`) in `factors`.
    This wraps the instance's method, so it works on any optimizer class (a LossScaleOptimizer
    too); the gradients it receives are already averaged over the workers."""
    factors = {k: f for k, f in factors.items() if f != 1.0}
    if not factors:
        return
    apply = optimizer.apply

    def scaled_apply(grads, trainable_variables=None):
        scaled = [(v, factors[id(v)]) for v in trainable_variables or () if id(v) in factors]
        before = [tf.identity(v) for v, _ in scaled]
        result = apply(grads, trainable_variables)
        for (v, factor), old in zip(scaled, before):
            v.assign(old + factor * (tf.convert_to_tensor(v) - old))
        return result

    optimizer.apply = scaled_apply

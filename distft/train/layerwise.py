"""Layer-wise learning rates: each weight's update scaled by its layer's factor.

The optimizer applies its usual update, then every weight with a factor f is set to
`old + f * (new - old)`. For SGD (with or without momentum), Adam, AdamW (its weight decay
included) and RMSprop the update is proportional to the learning rate, so this is exactly
training that weight with `f * lr` (f = 0 leaves it bit-identical). Scaling the *gradients*
would not be: Adam and RMSprop divide by the gradient's own scale, and AdamW's decay ignores it.

Example:
    scale_updates(optimizer, {v.ref(): 0.1 for v in model.get_layer("conv1").trainable_weights})
    model.compile(optimizer=optimizer, ...)
"""
from __future__ import annotations

import tensorflow as tf


def scale_updates(optimizer: tf.keras.optimizers.Optimizer, factors: dict) -> None:
    """Scale the updates `optimizer.apply_gradients` makes to the variables keyed (by `ref()`)
    in `factors`. Horovod builds its optimizer's class at run time, so this wraps the instance's
    method rather than subclassing; gradients are allreduced before it runs."""
    factors = {k: f for k, f in factors.items() if f != 1.0}
    if not factors:
        return
    apply = optimizer.apply_gradients

    def apply_gradients(grads_and_vars, *args, **kwargs):
        grads_and_vars = list(grads_and_vars)
        scaled = [(v, factors[v.ref()]) for _, v in grads_and_vars if v.ref() in factors]
        before = [tf.identity(v) for v, _ in scaled]
        result = apply(grads_and_vars, *args, **kwargs)
        for (v, factor), old in zip(scaled, before):
            v.assign(old + factor * (tf.convert_to_tensor(v) - old))
        return result

    optimizer.apply_gradients = apply_gradients

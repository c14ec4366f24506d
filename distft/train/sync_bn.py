"""Synchronised batch normalisation: BatchNormalization layers that train (`--train_bn`) take
their batch mean and variance over every worker's batch, as one worker on the global batch does.

Each training forward pass sums the layer's inputs, squared inputs and count on every worker
and allreduces the three in one op (Horovod's SyncBatchNormalization, and Keras 3's own
`synchronized=True` under a tf.distribute strategy, compute the same). Horovod's allreduce has
a gradient (the allreduce of the upstream gradient), so the backward pass is exact too. For
small per-GPU batches, where one worker's statistics are noisy; it costs an allreduce per
layer per step. The layers are patched in place: a saved model holds plain BatchNormalization.

Example:
    synchronize(model, hvd)        # before compile; every BatchNormalization in `model`
"""
from __future__ import annotations

import types

import keras
import tensorflow as tf

from distft.model.unfreeze import flatten


def synchronize(model: keras.Model, hvd) -> int:
    """Make every BatchNormalization layer of `model` compute its training statistics over all
    workers (`hvd`: horovod.tensorflow, initialised); returns how many layers."""
    layers = [l for l in flatten(model) if isinstance(l, keras.layers.BatchNormalization)]
    for layer in layers:
        layer._moments = types.MethodType(_global_moments(hvd), layer)
    return len(layers)


def _global_moments(hvd):
    def moments(layer, inputs, mask):
        if mask is not None:  # masked statistics: Keras' own (per worker)
            return keras.layers.BatchNormalization._moments(layer, inputs, mask)
        x = tf.cast(inputs, tf.float32)
        sums = tf.reduce_sum(x, layer._reduction_axes)  # one per channel
        count = tf.cast(tf.size(x), tf.float32) / tf.cast(tf.size(sums), tf.float32)
        local = tf.concat([sums, tf.reduce_sum(tf.square(x), layer._reduction_axes), [count]], 0)
        total = hvd.allreduce(local, op=hvd.Sum) if hvd.size() > 1 else local
        channels = tf.size(sums)
        mean = total[:channels] / total[-1]
        variance = tf.maximum(total[channels:2 * channels] / total[-1] - tf.square(mean), 0.0)
        return tf.cast(mean, inputs.dtype), tf.cast(variance, inputs.dtype)

    return moments

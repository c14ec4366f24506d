"""A scaling model for data-parallel fine-tuning: the step time and efficiency on N workers, from
the one-worker compute time, the gradient bytes per step and the link between workers.

Per step, each of N workers computes for `compute_ms` (forward, backward, optimizer: the
one-worker step) and allreduces the trainable gradients in a ring, which sends and receives
2(N-1)/N of the bytes over each worker's link in 2(N-1) rounds:

    allreduce_ms = 2(N-1)/N * bytes * 8 / bandwidth + 2(N-1) * latency
    step_ms      = compute_ms + allreduce_ms - min(overlap * allreduce_ms, compute_ms)

`overlap` is the fraction of the allreduce that runs while the backward pass still computes
(0 for one grouped allreduce after the whole backward pass); the hidden part cannot exceed the
compute it hides under. Efficiency is compute_ms / step_ms: samples/s on N workers over N times
one worker's. Not modelled: tensor fusion's cycle time, a slowest rank, input stalls, gradient
accumulation (one allreduce every k steps) and links shared by several workers of a node.

Example:
    >>> rows = predict([2, 8], compute_ms=100.0, params=10_000_000, link="10gbit", batch_size=32)
    >>> [(r["workers"], round(r["allreduce_ms"], 1), round(r["efficiency"], 2)) for r in rows]
    [(2, 32.2, 0.76), (8, 57.4, 0.64)]
"""
from __future__ import annotations

import re
import time
from typing import Any, Sequence, Union

from distft.errors import DistftError

BYTES_PER_VALUE = {"none": 4, "fp16": 2}  # float32 gradients, or Horovod's fp16 compression
LATENCY_MS = 0.1  # per ring round: a switch hop and the stack on a data-centre Ethernet link
_UNITS = {"bit": 1, "kbit": 1e3, "mbit": 1e6, "gbit": 1e9, "tbit": 1e12}


def link_bits_per_s(link: Union[str, float]) -> float:
    """A link rate written as `tc` writes it ("25gbit", "100mbit"; decimal units, bits per
    second), or a number of bits per second."""
    if isinstance(link, (int, float)) and not isinstance(link, bool):
        rate = float(link)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(bit|kbit|mbit|gbit|tbit)\s*", str(link).lower())
        if not match:
            raise DistftError(f"--link={link}: give a rate in bits per second, e.g. --link=25gbit "
                              "(units bit, kbit, mbit, gbit, tbit)")
        rate = float(match.group(1)) * _UNITS[match.group(2)]
    if rate <= 0:
        raise DistftError(f"--link={link}: the rate must be above 0, e.g. --link=25gbit")
    return rate


def gradient_bytes(params: int, compression: str = "none") -> int:
    """Bytes each worker contributes to the allreduce per step: the trainable parameters."""
    if compression not in BYTES_PER_VALUE:
        raise DistftError(f"--compression={compression}: choose none or fp16")
    return params * BYTES_PER_VALUE[compression]


def allreduce_ms(workers: int, nbytes: float, link: Union[str, float],
                 latency_ms: float = LATENCY_MS) -> float:
    """A ring allreduce of `nbytes` over `workers` workers, each on its own `link`."""
    if workers <= 1:
        return 0.0
    rounds = 2 * (workers - 1)
    return 1000 * rounds / workers * nbytes * 8 / link_bits_per_s(link) + rounds * latency_ms


def check(workers: Sequence[int], link: Union[str, float], batch_size: int,
          compression: str = "none", latency_ms: float = LATENCY_MS, overlap: float = 0.0) -> None:
    """Raise a DistftError naming the first of `predict`'s inputs that is out of range."""
    if not workers or any(int(n) < 1 for n in workers):
        raise DistftError(f"--workers={','.join(map(str, workers))}: give worker counts of at "
                          "least 1, e.g. --workers=8,64,512")
    link_bits_per_s(link)
    gradient_bytes(0, compression)
    if batch_size < 1 or latency_ms < 0 or not 0 <= overlap <= 1:
        raise DistftError(f"need --batch_size >= 1, --latency_ms >= 0 and 0 <= --overlap <= 1, "
                          f"got {batch_size}, {latency_ms} and {overlap}")


def predict(workers: Sequence[int], compute_ms: float, params: int, link: Union[str, float],
            batch_size: int, compression: str = "none", latency_ms: float = LATENCY_MS,
            overlap: float = 0.0) -> list[dict[str, float]]:
    """One row per worker count: workers, compute_ms, allreduce_ms, step_ms, samples_per_s
    (global batch N x `batch_size` per step) and efficiency."""
    check(workers, link, batch_size, compression, latency_ms, overlap)
    if compute_ms <= 0:
        raise DistftError(f"--step_ms={compute_ms}: give one worker's step time in ms, above 0")
    nbytes = gradient_bytes(params, compression)
    rows = []
    for n in map(int, workers):
        comm = allreduce_ms(n, nbytes, link, latency_ms)
        step = compute_ms + comm - min(overlap * comm, compute_ms)
        rows.append({"workers": n, "compute_ms": compute_ms, "allreduce_ms": comm, "step_ms": step,
                     "samples_per_s": 1000 * n * batch_size / step, "efficiency": compute_ms / step})
    return rows


def table(rows: list[dict[str, float]]) -> str:
    """`predict`'s rows as a text table."""
    lines = [f"{'workers':>7}  {'compute ms':>10}  {'allreduce ms':>12}  {'step ms':>9}  "
             f"{'samples/s':>10}  {'efficiency':>10}"]
    lines += [f"{r['workers']:>7}  {r['compute_ms']:>10.1f}  {r['allreduce_ms']:>12.1f}  "
              f"{r['step_ms']:>9.1f}  {r['samples_per_s']:>10.0f}  {r['efficiency']:>10.2f}"
              for r in rows]
    return "\n".join(lines)


def measure_compute_ms(model: Any, batch_size: int, steps: int = 5) -> float:
    """Median milliseconds of one train step (forward, backward, Adam's update of the trainable
    weights) of the Keras `model` alone, on random input of its shape at `batch_size`."""
    import keras
    import tensorflow as tf

    inputs = []
    for t in model.inputs:
        if any(d is None for d in t.shape[1:]):
            raise DistftError(f"input {t.name} has shape {tuple(t.shape)}: the timing needs a fixed "
                              "shape: pass --input_shape, or give the compute time with --step_ms")
        shape = (batch_size, *t.shape[1:])
        dtype = tf.as_dtype(t.dtype)
        inputs.append(tf.random.uniform(shape) if dtype.is_floating else tf.zeros(shape, dtype))
    optimizer = keras.optimizers.Adam()
    variables = model.trainable_variables
    optimizer.build(variables)

    @tf.function(jit_compile=False)
    def step(x):
        with tf.GradientTape() as tape:
            outputs = tf.nest.flatten(model(x, training=True))
            loss = tf.add_n([tf.reduce_mean(tf.cast(o, tf.float32)) for o in outputs])
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    x = inputs if len(inputs) > 1 else inputs[0]
    times = []
    for i in range(steps + 2):  # the first two trace and warm up
        began = time.perf_counter()
        float(step(x))  # reading the loss waits for the step, on a GPU too
        if i >= 2:
            times.append(1000 * (time.perf_counter() - began))
    return sorted(times)[len(times) // 2]

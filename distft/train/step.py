"""The compiled train step, the Horovod way, for Keras 3: the trainable gradients are averaged
over all workers inside the step, then applied by the Keras optimizer.

It is Keras 3's own TensorFlow `train_step` (keras/src/backend/tensorflow/trainer.py) with the
allreduce between `tape.gradient` and the optimizer, as Horovod's DistributedOptimizer did for
Keras 2. With `accumulate=K` each worker sums its gradients over K batches and the mean is
allreduced and applied on every K-th batch (Horovod's `backward_passes_per_step`): one update
equals one of a batch K times larger. Mixed float16 uses Keras 3's loss scaling: the scaled
gradients are averaged, so every worker unscales the same values and skips the same steps.
With `overlap` (the default) each gradient is allreduced by its own async Horovod op, which
the step's graph starts as soon as the backward pass has produced that gradient, so
communication overlaps the rest of the backward pass; Horovod fuses the tensors that are ready
together into one buffer (HOROVOD_FUSION_THRESHOLD, every HOROVOD_CYCLE_TIME ms), as its own
DistributedGradientTape does. Without it, one grouped allreduce waits for the whole backward
pass. Both compute the same mean.
With `jit` the forward and backward pass and the optimizer's update are each compiled with XLA
as inner functions; the allreduce, which has no XLA kernel, runs between them (so the
gradients leave the compiled backward pass together: no overlap).
A variable the loss does not reach (gradient None) is left out of the update, as Keras leaves
it out, so no optimizer moves it (Adam's momentum, AdamW's decay).
With `tokens` (a causal LM on text: targets weighted per token, padding and prompts 0) the
loss is the mean over the real tokens of all workers, not a mean of per-worker means: the
compiled loss sums (reduction "sum"), the step divides by the tokens' total, allreduced
first, so N workers whose batches hold different numbers of tokens step where one worker on
all their batches steps.
With fp16 compression each worker divides its gradients by the number of workers in float32
before they are cast to fp16 and summed, so the sum of loss-scaled fp16 values cannot overflow
where one worker's value does not (Horovod's `prescale_factor` scales after the cast).

Example:
    model.compile(optimizer=opt, loss=..., metrics=[...], jit_compile=False)
    averager = GradientAverager(plan.variables(), accumulate=4, compression="fp16", overlap=True,
                                jit=False)
    model.train_step = averager.train_step(model, size=hvd.size())   # the workers it averages over

With a `StepClock`, the step also sums its own seconds and the allreduce's (rank health).
"""
from __future__ import annotations

from typing import Callable, Optional

import keras
import tensorflow as tf

from distft.train.callbacks.rank_health import StepClock


class GradientAverager:
    """Allreduce (and, with `accumulate` > 1, accumulate) gradients for `variables`: every
    variable that is trainable in some stage of the run. The number of workers is the step's:
    given when it is made (`train_step`), so an elastic reset makes a new one."""

    def __init__(self, variables: list, accumulate: int = 1, compression: str = "none",
                 clock: Optional[StepClock] = None, overlap: bool = True, jit: bool = False,
                 tokens: bool = False):
        import horovod.tensorflow as hvd

        self.hvd, self.accumulate, self.clock = hvd, accumulate, clock
        self.overlap, self.jit, self.tokens = overlap, jit, tokens
        self.fp16 = compression == "fp16"
        # Checkpointed (`state`), so a resume continues a partly accumulated update exactly.
        self.state = tf.Module()
        self.state.sums = [tf.Variable(tf.zeros(v.shape, v.dtype), trainable=False,
                                       name=f"grad_sum/{i}")
                           for i, v in enumerate(variables)] if accumulate > 1 else []
        self.state.count = tf.Variable(0, dtype=tf.int64, trainable=False, name="grad_count")
        self._sum_of = {id(v): s for v, s in zip(variables, self.state.sums)}

    def allreduce(self, grads: list[tf.Tensor], size: int) -> list[tf.Tensor]:
        """The mean of `grads` over all `size` workers: one op per tensor (`overlap`) or one group."""
        if size == 1:
            return grads
        hvd = self.hvd
        op, compression = (hvd.Sum, hvd.Compression.fp16) if self.fp16 else (hvd.Average, hvd.Compression.none)

        def reduce(g: list[tf.Tensor]) -> list[tf.Tensor]:
            if self.fp16:
                g = [t / size for t in g]
            if self.overlap:
                return [hvd.allreduce(t, op=op, compression=compression) for t in g]
            return hvd.grouped_allreduce(g, op=op, compression=compression)

        if self.clock is None:
            return reduce(grads)
        return self.clock.allreduce(reduce, grads, overlapped=self.overlap)

    def apply(self, optimizer: keras.optimizers.Optimizer, grads: list, variables: list,
              size: int) -> None:
        """Average `grads` of `variables` over `size` workers (now, or every `accumulate` calls)
        and apply them; variables without a gradient are left out (the same ones on every worker)."""
        pairs = [(tf.convert_to_tensor(g), v) for g, v in zip(grads, variables)  # dense IndexedSlices
                 if g is not None]
        if not pairs:
            return
        grads, variables = [g for g, _ in pairs], [v for _, v in pairs]
        update = self._compiled(lambda g: optimizer.apply(g, variables))
        if self.accumulate == 1:
            update(self.allreduce(grads, size))
            return
        sums = [self._sum_of[id(v)] for v in variables]
        for s, g in zip(sums, grads):
            s.assign_add(g)
        self.state.count.assign_add(1)

        def average_and_update() -> tf.Tensor:
            update(self.allreduce([s / self.accumulate for s in sums], size))
            for s in sums:
                s.assign(tf.zeros_like(s))
            return tf.constant(True)

        # Every worker counts the same batches, so all of them allreduce on the same ones.
        tf.cond(self.state.count % self.accumulate == 0, average_and_update, lambda: tf.constant(False))

    def _compiled(self, fn: Callable) -> Callable:
        """`fn`, compiled with XLA as a function of its own when `jit` is on."""
        return tf.function(fn, jit_compile=True, autograph=False) if self.jit else fn

    def train_step(self, model: keras.Model, size: int, then: Optional[Callable[[], list]] = None
                   ) -> Callable:
        """A `train_step` for `model` (compiled) that averages its gradients over `size` workers,
        then runs `then()` (after the update, before the step ends: the EMA's; its ops)."""
        loss_tracker = next(m for m in model.metrics if m.name == "loss")

        def step(data):
            if self.clock is None:
                return averaged_step(data)
            # Read after the optimizer's update, so the clock stops after it.
            return self.clock.step(lambda: averaged_step(data), data,
                                   lambda: tf.convert_to_tensor(model.optimizer.iterations))

        def averaged_step(data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            variables = model.trainable_variables  # this trace's: a stage switch retraces
            if self.tokens:
                mine = tf.reduce_sum(tf.cast(sample_weight, tf.float32))
                total = mine if size == 1 else self.hvd.allreduce(mine, op=self.hvd.Sum)

            def forward_backward(x, y, sample_weight):
                with tf.GradientTape() as tape:
                    y_pred = model(x, training=True)
                    loss = model.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight,
                                              training=True)
                    if self.tokens:  # this worker's share of the mean over every worker's tokens
                        summed, own = token_loss(model, loss)
                        loss = summed * tf.math.divide_no_nan(tf.cast(size, summed.dtype),
                                                              tf.cast(total, summed.dtype)) + own
                        tracked = (tf.math.divide_no_nan(summed, tf.cast(mine, summed.dtype)) + own, mine)
                    else:
                        tracked = (loss, tf.shape(tf.nest.flatten(x)[0])[0])
                    scaled = model.optimizer.scale_loss(loss)
                return tracked, y_pred, tape.gradient(scaled, variables)

            (loss, weight), y_pred, grads = self._compiled(forward_backward)(x, y, sample_weight)
            loss_tracker.update_state(loss, sample_weight=weight)
            self.apply(model.optimizer, grads, variables, size)
            with tf.control_dependencies(then() if then else []):  # the clock's end waits for it
                return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

        return step


def token_loss(model: keras.Model, loss: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """(the compiled loss, summed over a batch's weighted tokens, the model's own losses) of
    `compute_loss`'s total `loss`, which adds the two."""
    own = [tf.reduce_sum(tf.cast(l, loss.dtype)) for l in model.losses]
    own = tf.add_n(own) if own else tf.zeros((), loss.dtype)
    return loss - own, own


def evaluate_per_token(model: keras.Model) -> None:
    """Give `model` (compiled with `tokens`, see train/metrics.py) a `test_step` whose loss is the
    mean over the real tokens (see `tokens` above): the loss tracker's sums add up over workers
    and batches to the mean over all of them."""
    model.test_step = _token_test_step(model)


def _token_test_step(model: keras.Model) -> Callable:
    loss_tracker = next(m for m in model.metrics if m.name == "loss")

    def step(data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        y_pred = model(x, training=False)
        summed, own = token_loss(model, model.compute_loss(x=x, y=y, y_pred=y_pred,
                                                           sample_weight=sample_weight, training=False))
        tokens = tf.reduce_sum(tf.cast(sample_weight, summed.dtype))
        loss_tracker.update_state(tf.math.divide_no_nan(summed, tokens) + own, sample_weight=tokens)
        return model.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    return step

"""The pieces that make N workers train as one (in-process, one worker): per-worker dropout
seeds, synchronised BatchNorm's statistics, the resumed epoch's callbacks, the final check.
The 2-worker runs that compare against one worker are in test_equivalence.py and test_faults.py."""
import numpy as np
import pytest
import keras
import tensorflow as tf

from distft.train import seeds, sync_bn
from distft.train.callbacks.resumed import ResumedRun
from distft.train.report import differing_layers


def dropout_model():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((64,)), keras.layers.Dropout(0.5, seed=7, name="drop"),
                             keras.layers.Dense(2, name="out")])


def test_each_worker_draws_its_own_dropout_masks_and_keeps_its_counter():
    x = np.ones((4, 64), np.float32)
    masks = {}
    for rank in (0, 1, 0):
        model = dropout_model()
        model.get_layer("drop")(x, training=True)  # the counter moves on, as training does
        counter = model.get_layer("drop")._seed_generators[0].state.numpy()[1]
        assert seeds.per_worker(model, seed=42, rank=rank) == 1
        assert model.get_layer("drop")._seed_generators[0].state.numpy()[1] == counter
        masks.setdefault(rank, []).append(model.get_layer("drop")(x, training=True).numpy() != 0)
    np.testing.assert_array_equal(masks[0][0], masks[0][1])  # same seed and rank: same masks
    assert (masks[0][0] != masks[1][0]).mean() > 0.2  # another rank: other masks
    assert dropout_model().get_weights()[0].shape == (64, 2)  # seeds are not weights


@pytest.fixture(scope="module")
def hvd():
    import horovod.tensorflow as hvd

    hvd.init()
    return hvd


def test_sync_bn_statistics_and_gradients_equal_keras_own_on_one_worker(hvd):
    x = np.random.default_rng(0).normal(1.0, 3.0, (32, 6, 6, 4)).astype(np.float32)

    def model():
        keras.utils.set_random_seed(0)
        return keras.Sequential([keras.Input((6, 6, 4)), keras.layers.Conv2D(3, 3),
                                 keras.layers.BatchNormalization(momentum=0.5),
                                 keras.layers.Flatten(), keras.layers.Dense(1)])

    plain, synced = model(), model()
    assert sync_bn.synchronize(synced, hvd) == 1
    results = []
    for m in (plain, synced):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(m(x, training=True)))
        results.append([loss, *tape.gradient(loss, m.trainable_variables), *m.layers[1].non_trainable_weights])
    for a, b in zip(*results):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    assert type(synced.layers[1]).__name__ == "BatchNormalization"  # saved as plain Keras
    assert "_moments" not in synced.layers[1].get_config()


class Batches(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen, self.begins, self.ends = [], 0, 0

    def on_train_begin(self, logs=None):
        self.begins += 1

    def on_train_end(self, logs=None):
        self.ends += 1

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append((self.epoch, batch))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch


def test_a_resumed_epoch_shows_the_callbacks_one_training_with_true_batch_indices():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    data = tf.data.Dataset.from_tensors((tf.ones((4, 2)), tf.ones((4, 1)))).repeat()
    probe = Batches()
    run = ResumedRun([probe], model, epochs=4, steps=5, skip=3)
    model.fit(data, steps_per_epoch=2, initial_epoch=2, epochs=3, callbacks=run, verbose=0)
    run.last_call()
    history = model.fit(data, steps_per_epoch=5, initial_epoch=3, epochs=4, callbacks=run, verbose=0)
    assert probe.seen == [(2, 3), (2, 4)] + [(3, b) for b in range(5)]
    assert (probe.begins, probe.ends) == (1, 1)
    assert len(history.history["loss"]) == 2  # one History over both calls
    assert run.params["steps"] == 5


def test_the_final_check_names_the_layers_that_differ():
    same = {"conv1": "a", "bn1": "b", "head": "c"}
    assert differing_layers([same, dict(same)]) == []
    assert differing_layers([same, {**same, "bn1": "x"}, {**same, "head": "y"}]) == ["bn1", "head"]


class Spare(keras.layers.Layer):
    """A layer with a weight its output does not use: its gradient is None."""

    def build(self, shape):
        self.used = self.add_weight(shape=(shape[-1],), initializer="ones", name="used")
        self.spare = self.add_weight(shape=(3,), initializer="ones", name="spare")

    def call(self, x):
        return x * self.used


@pytest.mark.parametrize("accumulate", [1, 2])
def test_a_weight_without_gradient_stays_bit_identical_under_adamw(accumulate):
    """Keras leaves a None gradient's variable out of the update; so does distft's step (zeros
    would let AdamW's decay and Adam's momentum move it)."""
    from distft.train.step import GradientAverager

    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(Spare(name="spare")(inputs)))
    model.compile(optimizer=keras.optimizers.AdamW(0.05, weight_decay=0.5), loss="mse",
                  jit_compile=False)
    averager = GradientAverager(model.trainable_variables, accumulate)
    model.train_step = averager.train_step(model, size=1)
    x = np.random.default_rng(0).random((32, 4)).astype(np.float32)
    model.fit(x, x.sum(axis=1, keepdims=True), batch_size=8, epochs=2, verbose=0)
    layer = model.get_layer("spare")
    np.testing.assert_array_equal(layer.spare.numpy(), np.ones(3, np.float32))
    assert not np.allclose(layer.used.numpy(), 1.0)


def test_the_xla_step_compiles_its_compute_and_ends_where_the_plain_step_ends():
    """--jit=on: the forward and backward pass and the update are functions XLA must compile
    (Horovod's allreduce, between them, has no XLA kernel), and training ends where the same
    step without XLA ends, to float tolerance; a None gradient passes through the compiled
    backward pass."""
    from distft.train.step import GradientAverager

    weights = {}
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, activation="relu")(keras.layers.BatchNormalization()(inputs))
        model = keras.Model(inputs, keras.layers.Dense(1)(Spare(name="spare")(hidden)))
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", jit_compile=False)
        averager = GradientAverager(model.trainable_variables, jit=jit)
        model.train_step = averager.train_step(model, size=1)
        x = np.random.default_rng(0).random((64, 4)).astype(np.float32)
        start = model.get_weights()
        model.fit(x, x.sum(axis=1, keepdims=True), batch_size=8, epochs=2, verbose=0, shuffle=False)
        weights[jit] = model.get_weights()
        graph = tf.function(model.train_step).get_concrete_function(
            (tf.TensorSpec((8, 4)), tf.TensorSpec((8, 1)))).graph
        compiled = [op for op in graph.get_operations()
                    if "_XlaMustCompile" in op.node_def.attr and op.get_attr("_XlaMustCompile")]
        assert len(compiled) == (2 if jit else 0)  # forward-backward, and the update
    np.testing.assert_array_equal(model.get_layer("spare").spare.numpy(), np.ones(3, np.float32))
    assert max(float(np.max(np.abs(a - w))) for a, w in zip(start, weights[True])) > 1e-4  # it trained
    for plain, xla in zip(weights[False], weights[True]):
        np.testing.assert_allclose(xla, plain, rtol=1e-5, atol=1e-6)


FP16_SUM = '''
import numpy as np, tensorflow as tf
import horovod.tensorflow as hvd
from distft.train.step import GradientAverager

hvd.init()
averager = GradientAverager([], compression="fp16")
grad = tf.fill([4], 40000.0)  # a loss-scaled gradient that fits fp16 (max 65504) on each worker
mean = averager.allreduce([grad], hvd.size())[0].numpy()
naive = hvd.allreduce(grad, op=hvd.Average, compression=hvd.Compression.fp16).numpy()
if hvd.rank() == 0:
    print("fp16 mean", mean.tolist(), "sum-then-divide", naive.tolist())
'''


@pytest.mark.multiworker
def test_fp16_averaging_does_not_overflow_where_one_worker_does_not(tmp_path):
    """2 workers each with 40000 (fp16-representable): summing in fp16 first gives inf (Horovod's
    Average with fp16 compression); dividing first gives the mean."""
    import sys

    from conftest import LAUNCHER, run

    script = tmp_path / "fp16_sum.py"
    script.write_text(FP16_SUM)
    result = run([*LAUNCHER, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, str(script)],
                 timeout=180)
    assert result.code == 0, result.out[-3000:]
    line = next(l for l in result.lines if "fp16 mean" in l)
    assert "fp16 mean [40000.0, 40000.0, 40000.0, 40000.0]" in line, line
    assert "sum-then-divide [inf" in line, line  # what compression did before

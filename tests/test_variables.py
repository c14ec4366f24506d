"""One classification of a model's variables (model/variables.py): every variable is trainable,
frozen, a statistic or a seed state, once, on a model with BatchNorm (trained and frozen),
Dropout, frozen layers, LoRA, a new head, a shared layer and staged unfreezing; and the flags
loading learns about a model travel beside it, not on it."""
import pytest
import keras

from distft.errors import DistftError
from distft.model.prepare import prepare
from distft.model.unfreeze import count_params, flatten
from distft.model.variables import classify

L = keras.layers


def ids(variables) -> set:
    return {id(v) for v in variables}


def paths(variables) -> set:
    return {v.path for v in variables}


def assert_partition(model, kinds):
    """Every variable of `model` in exactly one class, none twice, no stranger."""
    classes = (kinds.trainable, kinds.frozen, kinds.statistics, kinds.seeds)
    everything = [v for c in classes for v in c]
    assert len(everything) == len(ids(everything)), "a variable in two classes (or twice)"
    assert ids(everything) == ids(model.variables)


@pytest.fixture
def base(tmp_path) -> str:
    """A base model: Dense, BatchNorm, Dropout, Dense, BatchNorm, Dense, and its old head."""
    keras.utils.set_random_seed(0)
    x = L.Input((6,), name="x")
    h = L.Dense(8, name="early")(x)
    h = L.BatchNormalization(name="bn_frozen")(h)
    h = L.Dropout(0.2, seed=1, name="drop")(h)
    h = L.Dense(8, name="mid")(h)
    h = L.BatchNormalization(name="bn_train")(h)
    h = L.Dense(8, name="late")(h)
    path = str(tmp_path / "base.keras")
    keras.Model(x, L.Dense(2, activation="softmax", name="old_head")(h)).save(path)
    return path


def test_every_variable_lands_in_one_class(base):
    """LoRA on `mid` (its kernel and bias frozen under the factors), `bn_train` trained with
    --train_bn (moving statistics), `bn_frozen` frozen (its moving statistics too), the new
    head with its dropout; the Dropout layers' seed states apart."""
    ft = prepare(base, num_classes=3, head_dropout=0.1, lora_rank=2, lora_layers="^mid$",
                 unfreeze="re:^bn_train$", train_bn=True)
    kinds = classify(ft.model)
    assert_partition(ft.model, kinds)
    assert paths(kinds.trainable) == {"mid/lora_kernel_a", "mid/lora_kernel_b", "bn_train/gamma",
                                      "bn_train/beta", "distft_head/kernel", "distft_head/bias"}
    assert [v.path for v in kinds.trainable] == [v.path for v in ft.model.trainable_variables]
    assert paths(kinds.frozen) == {"early/kernel", "early/bias", "mid/kernel", "mid/bias",
                                   "late/kernel", "late/bias", *(f"bn_frozen/{n}" for n in (
                                       "gamma", "beta", "moving_mean", "moving_variance"))}
    assert paths(kinds.statistics) == {"bn_train/moving_mean", "bn_train/moving_variance"}
    assert len(kinds.seeds) == 2 and all("int" in str(v.dtype) for v in kinds.seeds)

    # The counts every report uses: they add up to all the weights, nothing negative.
    total = count_params(ft.model.weights)
    assert ft.trainable_params + ft.frozen_params + ft.statistics_params == total
    assert ft.statistics_params == 2 * 8

    # The per-epoch average: the float statistics alone.
    from distft.train.callbacks.statistics import LayerStatistics

    assert paths(LayerStatistics(ft.model, worker=None).variables()) == paths(kinds.statistics)


def test_lora_alone_has_no_statistics(base):
    """Under LoRA the frozen weights of the layers that train are frozen, never statistics
    (they were averaged every epoch and committed as elastic state)."""
    ft = prepare(base, num_classes=3, lora_rank=2)
    kinds = classify(ft.model)
    assert_partition(ft.model, kinds)
    assert kinds.statistics == () and ft.statistics_params == 0
    assert {"early/kernel", "mid/kernel", "late/bias"} <= paths(kinds.frozen)
    assert ft.trainable_params + ft.frozen_params == count_params(ft.model.weights)


def test_frozen_batchnorm_holds_frozen_statistics(base):
    ft = prepare(base, num_classes=3, unfreeze="re:^bn_train$")  # no --train_bn: BN stays frozen
    kinds = classify(ft.model)
    assert_partition(ft.model, kinds)
    assert kinds.statistics == ()
    assert {"bn_train/moving_mean", "bn_train/gamma"} <= paths(kinds.frozen)


def test_a_shared_layer_counts_once():
    """A layer reached twice (in a nested model and in the outer one): listed once among the
    leaves (where it is first reached), its weights once."""
    shared = L.Dense(4, name="shared")
    xi = L.Input((4,))
    inner = keras.Model(xi, L.Dense(4, name="inner")(shared(xi)), name="inner_model")
    x = L.Input((4,))
    model = keras.Model(x, L.Dense(2, name="out")(shared(inner(x))))
    assert [l.name for l in flatten(model)] == ["shared", "inner", "out"]
    shared.trainable = False
    kinds = classify(model)
    assert_partition(model, kinds)
    assert paths(kinds.frozen) == {"shared/kernel", "shared/bias"}
    assert count_params(kinds.trainable) + count_params(kinds.frozen) == count_params(model.weights)


def test_stages_class_the_variables_of_every_stage(base):
    """With a schedule, `ever_trainable` classes a layer that trains in a later stage as
    training: its weights trainable (as Plan.variables), its moving statistics statistics."""
    from distft.model.stages import Plan, parse_schedule

    ft = prepare(base, num_classes=3, head_dropout=0.1, train_bn=True)
    plan = Plan(ft, parse_schedule("0:none,2:re:^bn_train$"), train_bn=True)
    plan.apply(0)
    now = classify(ft.model)
    assert_partition(ft.model, now)
    assert paths(now.trainable) == {"distft_head/kernel", "distft_head/bias"}
    assert now.statistics == () and "bn_train/moving_mean" in paths(now.frozen)

    ever = classify(ft.model, plan.ever_trainable())
    assert_partition(ft.model, ever)
    assert ids(ever.trainable) == ids(plan.variables())
    assert paths(ever.statistics) == {"bn_train/moving_mean", "bn_train/moving_variance"}
    assert ids(ever.seeds) == ids(now.seeds)

    plan.apply(1)
    assert ids(classify(ft.model).statistics) == ids(ever.statistics)


def test_flags_ride_beside_the_model_through_a_rebuild(tmp_path):
    """The flags come from loading beside the model, none on the Keras object: a headless
    application keeps all its layers under the new head after the mixed-precision rebuild, and
    a SavedModel's head cannot be replaced in either precision."""
    from distft.model import loading

    x = L.Input((4,), name="x")
    model = keras.Model(x, L.Dense(3, activation="softmax", name="out")(L.Dense(5, name="h")(x)))
    model.export(str(tmp_path / "sm"), verbose=False)
    loaded = loading.load_with_flags(str(tmp_path / "sm"))
    assert loaded.flags == loading.ModelFlags(saved_model=True)
    assert not [k for k in vars(loaded.model) if k.startswith("_distft")]
    try:
        for precision in ("float32", "mixed_bfloat16"):
            with pytest.raises(DistftError, match="SavedModel, which Keras 3 loads as one opaque"):
                prepare(str(tmp_path / "sm"), num_classes=2, precision=precision)
        ft = prepare("app:MobileNetV2", weights="none", input_shape=(32, 32, 3), num_classes=2,
                     precision="mixed_bfloat16", unfreeze="none")
        assert ft.flags.headless and ft.model.output_shape == (None, 2)
        layers = ft.model.layers  # the head on the application's own pooled features, all kept
        assert any(isinstance(l, L.GlobalAveragePooling2D) for l in layers)
        assert "distft_pool" not in [l.name for l in layers]
        with pytest.raises(DistftError, match="has no classification head"):
            prepare("app:MobileNetV2", weights="none", input_shape=(32, 32, 3))
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_lora_on_some_projections_of_a_layer_freezes_the_others(tmp_path):
    """LoRA on a MultiHeadAttention's query and value: its key and output projections train no
    more either, and are frozen weights, not statistics to average every epoch."""
    x = L.Input((4, 8), name="x")
    h = L.MultiHeadAttention(2, 4, name="attention")(x, x)
    path = str(tmp_path / "mha.keras")
    keras.Model(x, L.Dense(2, activation="softmax", name="out")(L.GlobalAveragePooling1D()(h))).save(path)
    ft = prepare(path, num_classes=3, lora_rank=2, lora_layers="attention/(query|value)")
    kinds = classify(ft.model)
    assert_partition(ft.model, kinds)
    assert paths(kinds.trainable) == {f"attention/{p}/lora_kernel_{ab}" for p in ("query", "value")
                                      for ab in "ab"} | {"distft_head/kernel", "distft_head/bias"}
    assert {"attention/key/kernel", "attention/attention_output/bias"} <= paths(kinds.frozen)
    assert kinds.statistics == ()

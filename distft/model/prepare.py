"""From a model file and options to the model to fine-tune: loaded, new head, layers unfrozen.

Example:
    ft = prepare("base_model.h5", num_classes=5, unfreeze="last:2")
    ft.model.summary(); ft.trainable_params, ft.frozen_params
    ft = prepare("two_heads.keras", num_classes=3, head="digit", loss_weights="digit=1,size=0.5")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union

import numpy as np
import keras

from distft.data import named
from distft.data.own_preprocessor import image_preprocessor
from distft.errors import DistftError
from distft.model import head as heads
from distft.model import loading, lora, objective, precision as mixed, unfreeze as unfreezing
from distft.model.variables import classify


@dataclass
class FineTuneModel:
    model: keras.Model
    # Several outputs: by output name, as the metrics and target_shape. A loss or metric is a
    # Keras name, or a Keras object (a Loss, a Metric, a function: made with --loss/--metrics
    # arguments or rebuilt from the file's compile config), see model/objective.py.
    loss: Union[str, Any, dict]
    metrics: Union[list, dict]
    unfrozen: list[str] = field(default_factory=list)  # names of trainable leaf layers
    head: list[str] = field(default_factory=list)  # names of the new head's layers (always trained)
    target_shape: Union[tuple, dict] = ()  # the data's target shape per record: () for class ids
    loss_weights: Optional[dict] = None  # several outputs: each output's loss weight
    flags: loading.ModelFlags = loading.ModelFlags()  # what loading learnt about the base model
    weighted_metrics: Union[list, dict] = field(default_factory=list)  # the file's, as metrics
    # Where each part of the objective came from: origin["loss"] is "--loss",
    # objective.FROM_FILE, or "" (the head's default); also "metrics", "weighted_metrics",
    # "loss_weights"; several outputs: each by output name.
    origin: dict = field(default_factory=dict)

    @property
    def trainable_params(self) -> int:
        return unfreezing.count_params(classify(self.model).trainable)

    @property
    def frozen_params(self) -> int:
        """Weights that do not change (a training BatchNorm layer's moving statistics change,
        so they are not counted: see model/variables.py)."""
        return unfreezing.count_params(classify(self.model).frozen)

    @property
    def statistics_params(self) -> int:
        """Weights that change outside the gradients: a training BatchNorm layer's moving
        statistics (averaged over the workers every epoch)."""
        return unfreezing.count_params(classify(self.model).statistics)

    @property
    def input_shape(self) -> tuple:
        """The input's shape per record (several inputs: one shape each)."""
        if len(self.model.inputs) > 1:
            return tuple(tuple(t.shape[1:]) for t in self.model.inputs)
        return tuple(self.model.input_shape[1:])

    @property
    def classes(self) -> Optional[int]:
        """Number of classes of a softmax output (of the only output; logits that the loss reads
        through softmax count), else None."""
        if len(self.model.outputs) > 1 or self.activation() != "softmax":
            return None
        return int(self.model.output_shape[-1])

    def activation(self, output: Optional[str] = None) -> str:
        """The activation of the output (named `output`, with several) as its loss reads it:
        'softmax', 'sigmoid' or 'linear' (logits under a from-logits crossentropy: the
        activation that the loss applies)."""
        return objective.activation(self.model, self.loss_of(output)[0], output)

    def loss_of(self, output: Optional[str] = None) -> tuple[Any, str]:
        """The loss of the output (named `output`, with several) and where it came from (see
        `origin`)."""
        if isinstance(self.loss, dict):
            return self.loss.get(output), self.origin.get("loss", {}).get(output, "")
        return self.loss, self.origin.get("loss", "")


def prepare(model: str, num_classes: Optional[int] = None, unfreeze: Optional[str] = None,
            head_dropout: float = 0.0, train_bn: bool = False, weights: Optional[str] = None,
            input_shape: Optional[tuple] = None, loss: Optional[str] = None,
            metrics: Optional[tuple] = None, seed: int = 0,
            unsafe_deserialization: bool = False, precision: str = "float32",
            target_shape: Union[tuple, dict] = (), head: Optional[str] = None,
            loss_weights: Optional[str] = None, lora_rank: int = 0,
            lora_layers: Optional[str] = None, lora_alpha: Optional[float] = None,
            file_objective: bool = True, quantize: Optional[str] = None) -> FineTuneModel:
    """Load `model`, replace its head if `num_classes` (with several outputs: the head of output
    `head`), and set which layers train; with `lora_rank`, LoRA factors on `lora_layers`
    (model/lora.py) train beside `unfreeze` (default none); `quantize` ("int8"): the frozen
    layers' weights quantized first (model/lora.py's `quantize`). `file_objective=False`: the
    head's default objective even for a file compiled with its own (for a look at the layers).

    The default loss and metrics are the ones the model file was compiled with for a kept
    head, else they follow the head and `target_shape` (the data's per-record target shape;
    several outputs: by output name, and each output has its own loss, metrics and weight, see
    model/objective.py). A mixed `precision` becomes Keras' global policy first
    (see model/precision.py)."""
    mixed.use(precision)
    # A file Keras saved with LoRA on holds merged kernels and reloads with zeroed factors
    # (which can never train): plain layers instead.
    loaded = loading.load_with_flags(model, weights, input_shape, unsafe_deserialization)
    flags = loaded.flags  # they hold for every rebuild of the model below
    base = lora.merged(loaded.model)
    if isinstance(base, keras.Sequential):  # one graph of leaf layers, as functional models are
        base = keras.Model(base.inputs[0], base.outputs[0], name=base.name)
    base = mixed.cast(base, precision)
    several = len(base.outputs) > 1
    if num_classes and several and not head:
        raise DistftError(f"--model={model} has outputs {', '.join(base.output_names)}: pass "
                          "--head=OUTPUT to name the one whose head --num_classes replaces")
    if head and not num_classes:
        raise DistftError(f"--head={head} names the output whose head --num_classes replaces: "
                          "pass --num_classes=K too")
    if loss_weights and not several:
        raise DistftError("--loss_weights weighs the losses of a model's several outputs, and "
                          f"--model={model} has one: leave it out")
    new_head: list[keras.layers.Layer] = []
    if num_classes and flags.saved_model:
        raise DistftError(f"--model={model} is a SavedModel, which Keras 3 loads as one opaque "
                          "layer whose head cannot be replaced: drop --num_classes to fine-tune "
                          "it whole, or save the model as .keras or .h5 and pass that")
    if num_classes and image_preprocessor(base) is not None and not several:
        full, new_head = heads.replace_task_head(base, num_classes, head_dropout, seed)
    elif num_classes:
        full, new_head = heads.replace_head(base, num_classes, head_dropout, seed, head,
                                            headless=flags.headless)
    elif flags.headless:
        raise DistftError(f"--model={model} has no classification head: pass --num_classes=K")
    else:
        full = base
    head_ids = {id(l) for l in new_head}
    body = [l for l in unfreezing.flatten(full) if id(l) not in head_ids]
    spec = unfreeze if unfreeze is not None else ("none" if num_classes or lora_rank else "all")
    chosen = unfreezing.select(body, spec, train_bn)
    if quantize:
        lora.quantize(full, body, chosen, quantize)
    if lora_rank:
        lora.enable(body, chosen, lora_rank, lora_alpha, lora_layers, model=full)
    unfreezing.apply(full, body, chosen, train_bn)
    for layer in new_head:
        layer.trainable = True
    if not full.trainable_weights:
        raise DistftError(f"--unfreeze={spec} leaves no weight to train: unfreeze some layers "
                          "(e.g. --unfreeze=last:2) or add a head with --num_classes")
    trained = [l.name for l in body + new_head if l.trainable and l.weights]
    outputs = list(full.output_names)
    if several:
        shapes = {n: tuple(target_shape.get(n, ())) for n in outputs} if isinstance(target_shape, dict) \
            else {n: () for n in outputs}
    else:  # named data for a one-output model: its output's target
        target_shape = named.target_of(target_shape, outputs[0]) if isinstance(target_shape, dict) \
            else tuple(target_shape)
        shapes = {outputs[0]: target_shape}
    new_outputs = (head or outputs[0],) if num_classes else ()
    chosen = objective.choose(full, shapes, loss, metrics, loss_weights,
                              flags.compiled if file_objective else None,
                              new_outputs, not unsafe_deserialization)
    if several:
        return FineTuneModel(full, chosen.loss, chosen.metrics, trained, [l.name for l in new_head],
                             shapes, chosen.loss_weights, flags, chosen.weighted_metrics, chosen.origin)
    one = outputs[0]
    return FineTuneModel(full, chosen.loss[one], chosen.metrics[one], trained,
                         [l.name for l in new_head], target_shape, flags=flags,
                         weighted_metrics=chosen.weighted_metrics[one],
                         origin={part: by[one] for part, by in chosen.origin.items() if one in by})


def weights_checksum(model: keras.Model) -> str:
    """A digest of every weight's bytes: equal on two workers only if all weights are equal."""
    return combined_checksum(layer_checksums(model))


def layer_checksums(model: keras.Model) -> dict[str, str]:
    """A digest of each leaf layer's weights, by layer name."""
    return {l.name: _digest(np.ascontiguousarray(w).tobytes() for w in l.get_weights())
            for l in unfreezing.flatten(model) if l.weights}


def combined_checksum(layers: dict[str, str]) -> str:
    """`weights_checksum` from the model's `layer_checksums`."""
    return _digest(f"{name}:{digest}".encode() for name, digest in layers.items())


def _digest(parts) -> str:
    import hashlib

    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()[:16]

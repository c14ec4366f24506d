"""LoRA: low-rank factors on Dense, EinsumDense and Embedding layers (Keras 3's `enable_lora`),
trained while the layers' own weights stay frozen; merged into plain layers for the final model.

`--lora=RANK` turns it on for the layers whose path (Keras' `layer.path`, e.g. `mha/query` for a
MultiHeadAttention's query projection) `--lora_layers=PATTERN` matches (a regular expression,
searched); by default every such layer that does not train whole (not the new head, not a layer
of `--unfreeze`), and in a model holding Keras Hub backbones the layers their own
`backbone.enable_lora` picks (by name, `default_lora_layer_names()`: the attention's query and
value). A layer reached twice (the tied input and output embedding of a Keras Hub language model)
takes one pair of factors. A layer's weight W then computes as W + alpha/RANK * A @ B, where A
(he_uniform) and B (zeros) are the factors and alpha is `--lora_alpha` (default RANK).

Keras's own save merges the factors into W but keeps `lora_rank` in the layer's config, and a
reload re-enables LoRA with zeroed factors (keras#23244): distft's checkpoints hold the factors
as variables of their own (TensorFlow checkpoints), and `merged` strips LoRA from the model
it saves. A model that rebuilds itself from its own config (a Keras Hub task such as
GemmaCausalLM, with its backbone and preprocessor) is merged as its own class (`plain`), so that
stock keras_hub opens it as the task it was, and generates.

Example:
    paths = enable(body_layers, whole=set(), rank=8, alpha=None, pattern="query|value")
    paths = enable(body_layers, whole=set(), rank=8, model=model)  # a Keras Hub model: query, value
    quantize(model, body_layers, whole=set(), mode="int8")   # frozen weights int8, before enable
    plain = merged(model)                      # no lora_rank in its config; same predictions
    plain = merged(onto(float_model, quantized))   # float base weights, the factors merged
    save_adapter(model, "runs/a/adapter.npz")  # the factors alone, by variable path
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any, Optional

import keras
import numpy as np

from distft.errors import DistftError

TARGETS = (keras.layers.Dense, keras.layers.EinsumDense, keras.layers.Embedding)


def is_factor(variable) -> bool:
    """A LoRA factor (`lora_kernel_a`, `lora_embeddings_b`, ...), by Keras' variable name."""
    return variable.name.startswith("lora_")


def layers_with_lora(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    """The LoRA-enabled layers in `layer` (itself and nested sublayers, e.g. a
    MultiHeadAttention's projections)."""
    return [l for l in layer._flatten_layers() if getattr(l, "lora_enabled", False)]


def enable(leaves: list[keras.layers.Layer], whole: set[int], rank: int,
           alpha: Optional[float] = None, pattern: Optional[str] = None,
           model: Optional[keras.Model] = None) -> list[str]:
    """Enable LoRA of `rank` on the Dense, EinsumDense and Embedding layers in `leaves` (the
    model's leaf layers; nested sublayers included) whose path `pattern` matches, or else on
    those outside the leaves `whole` (indices of layers that train whole) that Keras Hub's
    `enable_lora` picks in the backbones of `model`, or on all of them when it has none; their
    paths. A layer is enabled once, however often it is reached."""
    found, seen = [], set()
    for i, leaf in enumerate(leaves):
        for sub in leaf._flatten_layers():
            if isinstance(sub, TARGETS) and sub.weights and id(sub) not in seen:
                seen.add(id(sub))
                found.append((i, sub))
    hub = hub_targets(model) if model is not None and not pattern else None
    if pattern:
        chosen = [(i, l) for i, l in found if re.search(pattern, l.path)]
        clash = [l.path for i, l in chosen if i in whole]
        if clash:
            raise DistftError(f"--lora_layers={pattern} matches {', '.join(clash[:4])}, which "
                              "--unfreeze trains whole: narrow the pattern or --unfreeze")
    elif hub is not None:
        chosen = [(i, l) for i, l in found if id(l) in hub and i not in whole]
    else:
        chosen = [(i, l) for i, l in found if i not in whole]
    if not chosen:
        kinds = "Dense, EinsumDense or Embedding layer"
        if pattern:
            message = (f"--lora_layers={pattern} matches no {kinds}: see the paths of "
                       f"{', '.join(l.path for _, l in found[:6]) or 'none'}")
        elif hub is not None:
            message = ("--lora found none of the layers Keras Hub's enable_lora picks "
                       "(default_lora_layer_names) outside --unfreeze: choose them with "
                       f"--lora_layers=PATTERN, among {', '.join(l.path for _, l in found[:6])}")
        else:
            message = (f"--lora found no {kinds} outside --unfreeze and the head: unfreeze "
                       "fewer layers or use --unfreeze alone")
        raise DistftError(message)
    for _, layer in chosen:
        try:
            layer.enable_lora(rank, lora_alpha=alpha)
        except (ValueError, NotImplementedError) as e:  # a kernel constraint, GPTQ, LoRA already on
            raise DistftError(f"--lora: layer {layer.path} cannot take LoRA ({e}): leave it out "
                              "with --lora_layers") from None
    return [l.path for _, l in chosen]


def quantize(model: keras.Model, leaves: list[keras.layers.Layer], whole: set[int], mode: str) -> list[str]:
    """Quantize the frozen weights (Keras 3's own `quantize(mode)`: int8 kernels and embeddings
    with per-channel scales) of the layers in `leaves` outside `whole` (indices of layers that
    train whole), before LoRA goes on them; the paths of the layers it quantized.

    Not a reversible embedding (a Keras Hub language model's tied input and output embedding):
    its int8 output projection quantizes its inputs with no gradient through them, so nothing
    before it would train (Keras 3.15)."""
    frozen = {id(sub) for i, leaf in enumerate(leaves) if i not in whole
              for sub in leaf._flatten_layers() if sub.weights and not hasattr(sub, "tie_weights")}
    model.quantize(mode, filters=lambda layer: id(layer) in frozen)
    return [l.path for l in model._flatten_layers() if getattr(l, "quantization_mode", None) == mode]


def hub_targets(model: keras.Model) -> Optional[set[int]]:
    """The ids of the layers that Keras Hub's `backbone.enable_lora(rank)` enables, over the Keras
    Hub backbones in `model` (layers with weights named as `default_lora_layer_names()` says,
    which can take LoRA); None when `model` holds no Keras Hub backbone."""
    backbones = [l for l in model._flatten_layers(include_self=True)
                 if callable(getattr(l, "default_lora_layer_names", None))]
    if not backbones:
        return None
    return {id(l) for b in backbones for l in b._flatten_layers(include_self=False)
            if l.weights and l.name in b.default_lora_layer_names() and hasattr(l, "enable_lora")}


def summary(model: keras.Model) -> dict[str, Any]:
    """Rank, alpha, the layers' paths and the number of factor weights (for logs and metrics)."""
    layers = layers_with_lora(model)
    return {"rank": layers[0].lora_rank, "alpha": layers[0].lora_alpha,
            "layers": [l.path for l in layers],
            "factor_params": int(sum(np.prod(v.shape) for l in layers for v in l.weights
                                     if is_factor(v)))}


def onto(base: keras.Model, trained: keras.Model) -> keras.Model:
    """`base` (the same model prepared without quantization: float layers, LoRA on the same
    layers) holding every weight of `trained` that it holds in the same shape and dtype: the
    factors and all that trained, not the quantized frozen weights, which keep their float
    values from the model file."""
    found = {v.path: v for v in trained.weights}
    for variable in base.weights:
        other = found.get(variable.path)
        if other is not None and other.shape == variable.shape and other.dtype == variable.dtype:
            variable.assign(other)
    return base


def merged(model: keras.Model) -> keras.Model:
    """`model` rebuilt with plain layers holding W + alpha/rank * A @ B (what Keras's save
    writes for a LoRA layer), so that stock Keras loads it as trained; `model` itself when it
    has no LoRA layer."""
    return _rebuilt(model) if layers_with_lora(model) else model


def plain(model: keras.Model, name: Optional[str] = None) -> keras.Model:
    """A fresh copy of `model` to save, named `name` (default its own): no distft train step or
    compile state, LoRA factors merged. A model of its own class that rebuilds itself from its
    config (a Keras Hub task: its backbone and preprocessor, and a tied embedding once) stays of
    that class; any other is a functional model of its graph."""
    if rebuilds_itself(model):
        return _rebuilt(model, name)
    return merged(keras.Model(_single(model.inputs), _single(model.outputs), name=name or model.name))


def rebuilds_itself(model: keras.Model) -> bool:
    """A functional model of a class with its own `get_config` (Keras Hub's tasks and backbones),
    which a plain functional copy would lose (and with it, a layer shared inside it)."""
    from keras.src.models.functional import Functional

    return (isinstance(model, Functional) and type(model) not in (Functional, keras.Model) and
            not isinstance(model, keras.Sequential) and type(model).get_config is not Functional.get_config)


def _single(tensors: list) -> Any:
    """The one tensor of a one-element list (so the saved model's `output` is a tensor)."""
    return tensors[0] if len(tensors) == 1 else tensors


def _rebuilt(model: keras.Model, name: Optional[str] = None) -> keras.Model:
    """`model` deserialized from its config without LoRA nor compile state, holding its weights
    (a LoRA layer's merged)."""
    config = _without_lora(keras.saving.serialize_keras_object(model))
    config.pop("compile_config", None)
    if name:
        config["config"]["name"] = name
    # The model was loaded already (Lambda code only with --unsafe_deserialization).
    plain = keras.saving.deserialize_keras_object(config, safe_mode=False)
    from keras.src.saving import saving_lib as lib

    skip = {id(o) for o in _optimizer(model)}  # a compiled model's optimizer state is not the copy's
    with tempfile.TemporaryDirectory(prefix="distft-lora-") as tmp:
        # What Keras's save writes but the config: each LoRA layer's merged kernel, and assets
        # (a Keras Hub tokenizer's vocabulary, which its config leaves out).
        path, assets = os.path.join(tmp, "merged.weights.h5"), os.path.join(tmp, "assets")
        weights, written = lib.H5IOStore(path, mode="w"), lib.DiskIOStore("assets", mode="w")
        try:
            lib._save_state(model, weights_store=weights, assets_store=written, inner_path="",
                            visited_saveables=set(skip))
            weights.close()
            shutil.copytree(written.working_dir, assets)
        finally:
            written.close()
        weights, failed, errors = lib.H5IOStore(path, mode="r"), set(), {}
        try:
            lib._load_state(plain, weights_store=weights, assets_store=lib.DiskIOStore(assets, mode="r"),
                            inner_path="", visited_saveables={id(o) for o in _optimizer(plain)},
                            failed_saveables=failed, error_msgs=errors)
        finally:
            weights.close()
        if failed:
            lib._raise_loading_failure(errors)
    return plain


def _optimizer(model: keras.Model) -> list:
    optimizer = getattr(model, "optimizer", None)
    return [optimizer] if optimizer is not None else []


def _without_lora(config: Any) -> Any:
    """A serialized model with every layer's `lora_rank` and `lora_alpha` left out."""
    if isinstance(config, dict):
        return {k: _without_lora(v) for k, v in config.items() if k not in ("lora_rank", "lora_alpha")}
    if isinstance(config, list):
        return [_without_lora(v) for v in config]
    return config


def save_adapter(model: keras.Model, path: str) -> None:
    """Write the factors alone as .npz: one array per factor named by its variable path
    (`mha/query/lora_kernel_a`, `.../lora_kernel_b`, `emb/lora_embeddings_a`, ...), and
    `lora_rank` and `lora_alpha`."""
    info = summary(model)
    arrays = {v.path: np.asarray(v) for l in layers_with_lora(model) for v in l.weights if is_factor(v)}
    with open(path, "wb") as f:
        np.savez(f, lora_rank=info["rank"], lora_alpha=info["alpha"], **arrays)

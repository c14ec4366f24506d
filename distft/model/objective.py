"""Loss, metrics and loss weights of a model with several outputs, one set per output.

`--loss`, `--metrics` and `--loss_weights` name outputs as `OUTPUT=VALUE` items; an item without
an output name applies to every output. An output without a loss or metrics gets the defaults
of its head (model/head.py `default_objective`), as a one-output model does.

Example:
    loss, metrics, weights = per_output(model, {"digit": (), "size": ()},
                                        loss="size=mean_absolute_error",
                                        metrics=("digit=accuracy", "digit=auc"),
                                        loss_weights="digit=1,size=0.5")
    # loss == {"digit": "sparse_categorical_crossentropy", "size": "mean_absolute_error"}
"""
from __future__ import annotations

from typing import Optional, Sequence

import keras

from distft.errors import DistftError
from distft.model.head import default_objective


def split(items: Sequence[str], outputs: list[str], flag: str) -> dict[str, list[str]]:
    """`OUTPUT=VALUE` items by output (an item without `OUTPUT=` goes to every output)."""
    values: dict[str, list[str]] = {name: [] for name in outputs}
    for item in items:
        name, sep, value = item.rpartition("=")
        if not sep:
            for name in outputs:
                values[name].append(item)
        elif name in values:
            values[name].append(value)
        else:
            raise DistftError(f"--{flag}: '{name}' is not an output of the model: name one of "
                              f"{', '.join(outputs)} (e.g. --{flag}={outputs[0]}=VALUE)")
    return values


def per_output(model: keras.Model, target_shapes: dict, loss: Optional[str] = None,
               metrics: Optional[Sequence[str]] = None, loss_weights: Optional[str] = None
               ) -> tuple[dict[str, str], dict[str, list[str]], Optional[dict[str, float]]]:
    """(loss, metrics, loss weights) by output name; `target_shapes`: each output's target
    shape per record (missing: class ids)."""
    outputs = list(model.output_names)
    losses = split(loss.split(",") if loss else [], outputs, "loss")
    chosen = split(list(metrics or ()), outputs, "metrics")
    loss_out, metrics_out = {}, {}
    for name in outputs:
        default_loss, default_metrics = default_objective(model, tuple(target_shapes.get(name, ())), name)
        if len(losses[name]) > 1:
            raise DistftError(f"--loss gives output '{name}' {len(losses[name])} losses "
                              f"({', '.join(losses[name])}): give each output one")
        loss_out[name] = losses[name][0] if losses[name] else default_loss
        metrics_out[name] = chosen[name] or default_metrics
    return loss_out, metrics_out, weights(loss_weights, outputs)


def weights(spec: Optional[str], outputs: list[str]) -> Optional[dict[str, float]]:
    """--loss_weights=OUTPUT=W,... as {output: weight}; outputs not named weigh 1."""
    if not spec:
        return None
    found = {}
    for name, values in split(spec.split(","), outputs, "loss_weights").items():
        try:
            found[name] = float(values[-1]) if values else 1.0
        except ValueError:
            raise DistftError(f"--loss_weights={spec}: '{values[-1]}' is not a number: pass "
                              f"e.g. --loss_weights={outputs[0]}=1,{outputs[-1]}=0.5") from None
    return found

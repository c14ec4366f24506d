"""The objective a model trains with: loss, metrics, weighted metrics and loss weights, one set
per output.

Each part is, in this order: what `--loss`, `--metrics` and `--loss_weights` give; else, for an
output whose head is kept, what the model file was compiled with (its `compile_config`, rebuilt
as Keras rebuilds it on load: `from_logits` and every other argument included); else the
defaults of the output's head (model/head.py `default_objective`), read as the loss reads the
output (a linear output under a from-logits crossentropy is a classifier's).

`--loss` and `--metrics` items are `[OUTPUT=]NAME[:KEY=VALUE...]` (model/specs.py): a name
alone stays a name, as Keras resolves it; a name with arguments becomes the Keras class (or the
registered function) made with them. `--loss_weights` items are `OUTPUT=WEIGHT`. An item
without `OUTPUT=` applies to every output.

Example:
    chosen = choose(model, {"digit": (), "size": ()}, loss="size=mean_absolute_error",
                    metrics=("digit=accuracy", "digit=auc"), loss_weights="digit=1,size=0.5")
    chosen.loss    # {"digit": "sparse_categorical_crossentropy", "size": "mean_absolute_error"}
    choose(logits_model, {"y": ()}, compiled=file_compile_config).loss["y"]
    # SparseCategoricalCrossentropy(from_logits=True), chosen.origin["loss"]["y"] == FROM_FILE
    describe(chosen.loss["y"])   # 'SparseCategoricalCrossentropy(from_logits=True)'
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import keras

from distft.errors import DistftError
from distft.model import specs
from distft.model.head import default_objective, output_activation

FROM_FILE = "the model file"
PARTS = ("loss", "metrics", "weighted_metrics", "loss_weights")


@dataclass(frozen=True)
class Chosen:
    """Each part by output name, and where it came from (`origin[part][output]`: "--loss",
    "--metrics", "--loss_weights", FROM_FILE, or "" for the head's default)."""

    loss: dict[str, Any]
    metrics: dict[str, list]
    weighted_metrics: dict[str, list]
    loss_weights: Optional[dict[str, float]]
    origin: dict[str, dict[str, str]] = field(default_factory=dict)


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
            raise _not_an_output(name, outputs, flag)
    return values


def _not_an_output(name: str, outputs: list[str], flag: str) -> DistftError:
    arguments = f"; arguments follow the name after colons, e.g. --{flag}={specs.EXAMPLES[flag]}" \
        if flag in specs.EXAMPLES else ""
    return DistftError(f"--{flag}: '{name}' is not an output of the model: name one of "
                       f"{', '.join(outputs)} (e.g. --{flag}={outputs[0]}=VALUE){arguments}")


def _named_by_output(items: Sequence[str], outputs: list[str], flag: str) -> dict[str, list[specs.Named]]:
    """`[OUTPUT=]NAME[:KEY=VALUE...]` items by output."""
    found: dict[str, list[specs.Named]] = {name: [] for name in outputs}
    for named in specs.parse_all(list(items), flag):
        if named.output is None:
            for name in outputs:
                found[name].append(named)
        elif named.output in found:
            found[named.output].append(named)
        else:
            raise _not_an_output(named.output, outputs, flag)
    return found


def choose(model: keras.Model, target_shapes: dict, loss: Optional[str] = None,
           metrics: Optional[Sequence[str]] = None, loss_weights: Optional[str] = None,
           compiled: Optional[dict] = None, new_heads: Sequence[str] = (),
           safe_mode: bool = True) -> Chosen:
    """The objective of `model`'s outputs; `target_shapes`: each output's target shape per
    record (missing: class ids); `compiled`: the model file's compile config (its parts are
    defaults for the outputs not in `new_heads`, whose heads distft made)."""
    outputs = list(model.output_names)
    losses = _named_by_output(loss.split(",") if loss else [], outputs, "loss")
    chosen = _named_by_output(list(metrics or ()), outputs, "metrics")
    kept = [name for name in outputs if name not in new_heads]
    in_file = _FileObjective(compiled or {}, outputs, safe_mode)
    parts: dict[str, dict] = {part: {} for part in PARTS}
    origin: dict[str, dict[str, str]] = {part: {} for part in PARTS}
    for name in outputs:
        if len(losses[name]) > 1:
            raise DistftError(f"--loss gives output '{name}' {len(losses[name])} losses "
                              f"({', '.join(n.text() for n in losses[name])}): give each output one")
        own = name in kept
        if losses[name]:
            parts["loss"][name], origin["loss"][name] = loss_object(losses[name][0]), "--loss"
        elif own and in_file.has("loss", name):
            parts["loss"][name], origin["loss"][name] = in_file.part("loss", name), FROM_FILE
        if chosen[name]:
            parts["metrics"][name] = [metric_object(n) for n in chosen[name]]
            origin["metrics"][name] = "--metrics"
        elif own and in_file.has("metrics", name):
            parts["metrics"][name], origin["metrics"][name] = in_file.part("metrics", name), FROM_FILE
        if own and not chosen[name] and in_file.has("weighted_metrics", name):
            parts["weighted_metrics"][name] = in_file.part("weighted_metrics", name)
            origin["weighted_metrics"][name] = FROM_FILE
        if name not in parts["loss"] or name not in parts["metrics"]:
            act = activation(model, parts["loss"].get(name), name if len(outputs) > 1 else None)
            default_loss, default_metrics = default_objective(
                model, tuple(target_shapes.get(name, ())), name if len(outputs) > 1 else None, act)
            parts["loss"].setdefault(name, default_loss)
            origin["loss"].setdefault(name, "")
            parts["metrics"].setdefault(name, default_metrics)
            origin["metrics"].setdefault(name, "")
        parts["weighted_metrics"].setdefault(name, [])
    weights_found = weights(loss_weights, outputs)
    if weights_found is not None:
        origin["loss_weights"] = {name: "--loss_weights" for name in outputs}
    elif len(outputs) > 1 and kept and in_file.has_any("loss_weights"):
        weights_found = {name: float(in_file.part("loss_weights", name))
                         if in_file.has("loss_weights", name) else 1.0 for name in outputs}
        origin["loss_weights"] = {name: FROM_FILE for name in outputs}
    return Chosen(parts["loss"], parts["metrics"], parts["weighted_metrics"], weights_found, origin)


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


class _FileObjective:
    """The parts of a model file's compile config, each rebuilt (Keras' deserialization, as
    `compile_from_config` does on load) when first asked for, by output: a dict by output
    name, a list by position, or one value for every output."""

    def __init__(self, config: dict, outputs: list[str], safe_mode: bool):
        self.config, self.outputs, self.safe_mode = config, outputs, safe_mode
        self.rebuilt: dict[str, dict] = {}

    def has_any(self, part: str) -> bool:
        return self.config.get(part) not in (None, [], {})

    def has(self, part: str, output: str) -> bool:
        return output in self._by_output(part)

    def part(self, part: str, output: str) -> Any:
        return self._by_output(part)[output]

    def _by_output(self, part: str) -> dict:
        if part not in self.rebuilt:
            value = self._rebuild(part) if self.has_any(part) else None
            self.rebuilt[part] = _by_output(value, self.outputs, listed=part in ("metrics", "weighted_metrics"))
        return self.rebuilt[part]

    def _rebuild(self, part: str) -> Any:
        try:
            return keras.saving.deserialize_keras_object(self.config[part], safe_mode=self.safe_mode)
        except Exception as e:
            flag = {"loss": "--loss", "loss_weights": "--loss_weights"}.get(part, "--metrics")
            raise DistftError(f"--model was compiled with {part.replace('_', ' ')} that Keras "
                              f"{keras.__version__} cannot rebuild here ({type(e).__name__}: "
                              f"{_first_line(e)}): pass --import=MODULE for the module that "
                              f"registers them, or {flag}=... to replace them") from e


def _by_output(value: Any, outputs: list[str], listed: bool) -> dict[str, Any]:
    """A compile() argument as Keras reads it for each output; `listed`: metrics (a list per
    output)."""
    if value is None:
        return {}
    if isinstance(value, dict):
        found = {name: value[name] for name in outputs if name in value and value[name] is not None}
    elif isinstance(value, (list, tuple)) and len(outputs) > 1 and len(value) == len(outputs) and \
            (not listed or all(isinstance(v, (list, tuple)) or v is None for v in value)):
        found = {name: v for name, v in zip(outputs, value) if v is not None}
    else:
        found = {name: value for name in outputs}
    if listed:
        found = {name: list(v) if isinstance(v, (list, tuple)) else [v] for name, v in found.items()}
        found = {name: v for name, v in found.items() if v}
    return found


def loss_object(named: specs.Named) -> Any:
    """`--loss`'s item as compile() takes it: the name itself without arguments (Keras resolves
    it, with its "crossentropy"), else the Keras loss made with the arguments."""
    if not named.args:
        if named.name.lower() in ("crossentropy", "ce"):
            return named.name
        try:
            keras.losses.get(named.name)
            return named.name
        except ValueError:
            pass
    found = _lookup(named.name, keras.losses.Loss, keras.losses)
    if found is None:
        raise DistftError(f"--loss={named.text()}: {named.name} is not a Keras loss: use a Keras "
                          "name (e.g. sparse_categorical_crossentropy, categorical_crossentropy, "
                          "binary_crossentropy, mean_squared_error, huber) or a class that "
                          "--import registers, with arguments NAME:KEY=VALUE, e.g. "
                          f"--loss={specs.EXAMPLES['loss']}")
    if inspect.isclass(found):
        return _made(found, named, "loss")
    _check_arguments(found, named, "loss", skip=2)  # y_true, y_pred
    return _WithArguments(found, named.name, named.kwargs) if named.args else found


class _WithArguments(keras.losses.Loss):
    """A registered loss function called with arguments (`NAME:KEY=VALUE` of a function)."""

    def __init__(self, fn, name: str, kwargs: dict):
        super().__init__(name=name)
        self.fn, self.kwargs = fn, kwargs

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self.kwargs)

    def get_config(self) -> dict:
        return {"name": self.name, **self.kwargs}


def metric_object(named: specs.Named) -> Any:
    """`--metrics`' item as compile() takes it: the name itself without arguments, else the
    Keras metric made with the arguments (named as given, unless `name=` is one)."""
    if not named.args:
        return named.name
    if named.name.lower() in ("accuracy", "acc", "crossentropy", "ce"):
        raise DistftError(f"--metrics={named.text()}: Keras picks {named.name}'s kind from the "
                          "targets and takes no arguments for it: name the kind, e.g. "
                          "sparse_categorical_accuracy, categorical_accuracy or "
                          "binary_accuracy:threshold=0 (for logits)")
    found = _lookup(named.name, keras.metrics.Metric, keras.metrics)
    if found is None:
        raise DistftError(f"--metrics={named.text()}: {named.name} is not a Keras metric: use "
                          "Keras names (e.g. accuracy, auc, precision, recall, f1_score, "
                          "sparse_top_k_categorical_accuracy) with arguments NAME:KEY=VALUE, "
                          f"e.g. --metrics={specs.EXAMPLES['metrics']}")
    kwargs = {"name": named.name, **named.kwargs}
    if inspect.isclass(found):
        return _made(found, specs.Named(named.name, tuple(kwargs.items())), "metrics", named)
    _check_arguments(found, named, "metrics", skip=2)
    return keras.metrics.MeanMetricWrapper(found, **kwargs)


def _norm(name: str) -> str:
    return name.replace("_", "").lower()


def _lookup(name: str, base: type, module) -> Any:
    """The Keras class (a subclass of `base` in `module`, or registered by --import) or the
    registered function that `name` names: a class's name or snake-case name, or a function
    of the module whose class does the same (mse: MeanSquaredError)."""
    registered = keras.saving.get_registered_object(name)
    if registered is not None:
        return registered
    classes = {_norm(n): c for n, c in vars(module).items()
               if inspect.isclass(c) and issubclass(c, base) and c is not base}
    if _norm(name) in classes:
        return classes[_norm(name)]
    try:
        function = module.get(name)
    except ValueError:
        return None
    key = _norm(getattr(function, "__name__", type(function).__name__))
    return classes.get(key, type(function) if isinstance(function, base) else None)


def _parameters(target: Any, skip: int = 0) -> tuple[list[str], bool]:
    """The keyword parameters of a class's constructor or a function (after the first `skip`),
    and whether it takes any keyword (**kwargs)."""
    signature = inspect.signature(target.__init__ if inspect.isclass(target) else target)
    params = [p for p in signature.parameters.values() if p.name != "self"][skip:]
    names = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    return names, any(p.kind == p.VAR_KEYWORD for p in params)


def _check_arguments(target: Any, named: specs.Named, flag: str, skip: int = 0,
                     given: Optional[specs.Named] = None) -> None:
    names, any_keyword = _parameters(target, skip)
    unknown = [k for k in named.kwargs if k not in names]
    if unknown and not any_keyword:
        title = getattr(target, "__name__", named.name)
        raise DistftError(f"--{flag}={(given or named).text()}: {title} takes no argument "
                          f"{', '.join(unknown)}: its arguments are {', '.join(names) or 'none'}")


def _made(cls: type, named: specs.Named, flag: str, given: Optional[specs.Named] = None) -> Any:
    """`cls(**arguments)`, or one error line naming the argument or value it refuses."""
    _check_arguments(cls, named, flag, given=given)
    try:
        return cls(**named.kwargs)
    except (TypeError, ValueError) as e:
        raise DistftError(f"--{flag}={(given or named).text()}: {cls.__name__} refuses these "
                          f"arguments ({_first_line(e)}): fix the values") from None


def describe(item: Any) -> str:
    """A loss or metric as the start line shows it: its name, or its class with the arguments
    that differ from the class's defaults, e.g. SparseCategoricalCrossentropy(from_logits=True)."""
    if isinstance(item, str):
        return item
    if isinstance(item, _WithArguments):
        return f"{item.name}({', '.join(f'{k}={v!r}' for k, v in item.kwargs.items())})"
    if not isinstance(item, (keras.losses.Loss, keras.metrics.Metric)):
        return getattr(item, "__name__", type(item).__name__)
    config = _config(item)
    try:
        defaults = _config(type(item)())
    except Exception:  # a class without defaults: show every argument
        defaults = {}
    shown = {k: v for k, v in config.items() if k not in ("name", "dtype", "fn") and
             (k not in defaults or defaults[k] != v)}
    if "name" in config and "name" in defaults and not _numbered(config["name"], defaults["name"]):
        shown = {"name": config["name"], **shown}
    if not shown and defaults and isinstance(config.get("name"), str):
        return config["name"]  # as made by name: sparse_categorical_accuracy
    return f"{type(item).__name__}({', '.join(f'{k}={v!r}' for k, v in shown.items())})"


def _numbered(name: str, default: str) -> bool:
    """`name` is the class's default name as Keras numbers it per process (auc, auc_1, ...)."""
    base = re.sub(r"_\d+$", "", default)
    return re.fullmatch(rf"{re.escape(base)}(_\d+)?", str(name)) is not None


def _config(item: Any) -> dict:
    try:
        return dict(item.get_config())
    except Exception:
        return {}


def options(item: Any) -> dict:
    """A loss's arguments (its config), {} for a name or a function."""
    return _config(item) if isinstance(item, (keras.losses.Loss, keras.metrics.Metric)) else {}


def loss_kind(item: Any) -> str:
    """The snake-case kind of a loss: its name, or its class's (sparse_categorical_crossentropy)."""
    if isinstance(item, str):
        try:
            return _snake(keras.losses.get(item))
        except ValueError:  # "crossentropy": Keras picks the kind by the shapes
            return item
    return _snake(item)


def _snake(item: Any) -> str:
    if isinstance(item, keras.losses.Loss):
        fn = getattr(item, "fn", None)
        if fn is not None and type(item).__name__ in ("LossFunctionWrapper", "_WithArguments"):
            return getattr(fn, "__name__", "")
        import re

        return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", type(item).__name__).lower()
    return getattr(item, "__name__", type(item).__name__)


_READS = {"sparse_categorical_crossentropy": "softmax", "categorical_crossentropy": "softmax",
          "categorical_focal_crossentropy": "softmax", "binary_crossentropy": "sigmoid",
          "binary_focal_crossentropy": "sigmoid"}


def reads_logits(loss: Any) -> Optional[str]:
    """'softmax' or 'sigmoid': the activation that a crossentropy loss made with
    from_logits=True applies to its output itself; None for any other loss."""
    if isinstance(loss, str) or not options(loss).get("from_logits"):
        return None
    return _READS.get(loss_kind(loss))


def is_sparse(loss: Any) -> bool:
    """True for a loss that takes class ids (sparse_categorical_crossentropy, ...)."""
    return loss_kind(loss).startswith("sparse_")


def activation(model: keras.Model, loss: Any = None, output: Optional[str] = None) -> str:
    """The output's activation as its loss reads it: a linear output under a crossentropy
    from logits is read as the softmax or sigmoid that the loss applies."""
    act = output_activation(model, output)
    if act == "linear" and loss is not None:
        return reads_logits(loss) or act
    return act


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__

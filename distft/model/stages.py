"""Which layers train when, and how fast: staged unfreezing and layer-wise learning rates.

Grammar (SPEC is the `--unfreeze` grammar: none|all|last:N|from:NAME|re:PATTERN, comma-separated):
- `--unfreeze_schedule=EPOCH:SPEC,EPOCH:SPEC,...`: from epoch EPOCH (0-based) on, SPEC trains
  (plus the new head, always). Stages are split at a comma followed by `DIGITS:`, so a SPEC
  may hold commas itself (`0:last:2,re:^bn,4:all` is two stages); the first stage is at 0.
- `--lr_mult=SPEC=FACTOR,SPEC=FACTOR,...`: the learning rate of the matching layers' weights is
  multiplied by FACTOR (>= 0); later groups win over earlier ones, other layers keep 1.

Example:
    parse_schedule("0:last:2,3:from:block_13,6:all")   # [Stage(0, 'last:2'), Stage(3, ...), ...]
    plan = Plan(ft, parse_schedule("0:none,2:last:2"))
    plan.apply(plan.index_at(epoch=2))                 # last:2 and the head train
    parse_lr_mult("re:^block_(1[0-2])=0.1,re:^Conv_1=0.5")  # [('re:^block_(1[0-2])', 0.1), ...]
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

from distft.errors import DistftError

if TYPE_CHECKING:  # parsing runs in config checks, before TensorFlow is imported
    import tensorflow as tf

    from distft.model.prepare import FineTuneModel

_STAGE = re.compile(r"^\s*(\d+)\s*:(.+)$", re.S)
_GROUP = re.compile(r"(.+?)=\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(?:,|$)", re.S)


@dataclass(frozen=True)
class Stage:
    epoch: int
    spec: str


def parse_schedule(text: str) -> list[Stage]:
    """The stages of `--unfreeze_schedule`, checked for syntax and order (not yet for layers)."""
    stages = []
    for part in re.split(r",(?=\s*\d+\s*:)", text):
        m = _STAGE.match(part)
        if not m or not m.group(2).strip():
            raise DistftError(f"--unfreeze_schedule: stage '{part}' is not EPOCH:SPEC, "
                              "e.g. --unfreeze_schedule=0:last:2,3:all")
        stages.append(Stage(int(m.group(1)), m.group(2).strip()))
    if stages[0].epoch != 0:
        raise DistftError(f"--unfreeze_schedule: the first stage starts at epoch {stages[0].epoch}: "
                          "start it at 0 (e.g. 0:none,...)")
    for a, b in zip(stages, stages[1:]):
        if b.epoch <= a.epoch:
            raise DistftError(f"--unfreeze_schedule: stage epochs must increase ({a.epoch} then "
                              f"{b.epoch})")
    return stages


def parse_lr_mult(text: str) -> list[tuple[str, float]]:
    """The (SPEC, FACTOR) groups of `--lr_mult`, checked for syntax (not yet for layers)."""
    groups, pos = [], 0
    while pos < len(text):
        m = _GROUP.match(text, pos)
        if not m or not m.group(1).strip():
            raise DistftError(f"--lr_mult: '{text[pos:]}' is not SPEC=FACTOR, e.g. "
                              "--lr_mult=re:^block_1=0.1,last:1=2")
        factor = float(m.group(2))
        if factor < 0:
            raise DistftError(f"--lr_mult: factor {factor} of '{m.group(1)}' is negative: use >= 0")
        groups.append((m.group(1).strip(), factor))
        pos = m.end()
    if not groups:
        raise DistftError("--lr_mult is empty: pass SPEC=FACTOR,... or leave it out")
    return groups


class Plan:
    """The stages of a schedule bound to a model: each stage's layer set, checked on creation.

    Without a schedule there is one stage, the layers `prepare` left trainable.
    """

    def __init__(self, ft: FineTuneModel, stages: list[Stage] | None, train_bn: bool = False):
        from distft.model import unfreeze as unfreezing

        self.ft, self.train_bn = ft, train_bn
        head = set(ft.head)
        self.body = [l for l in unfreezing.flatten(ft.model) if l.name not in head]
        self.stages = stages or [Stage(0, "")]
        if stages:
            self.chosen = [unfreezing.select(self.body, s.spec, train_bn, "--unfreeze_schedule")
                           for s in stages]
        else:
            self.chosen = [{i for i, l in enumerate(self.body) if l.trainable}]
        self.current = 0
        for i in self._each_stage():
            if not ft.model.trainable_weights:
                stage = self.stages[i]
                raise DistftError(f"--unfreeze_schedule stage {stage.epoch}:{stage.spec} leaves no "
                                  "weight to train: unfreeze some layers or add a head with "
                                  "--num_classes")

    def index_at(self, epoch: int) -> int:
        """The stage in effect during `epoch` (0-based)."""
        return max(i for i, s in enumerate(self.stages) if s.epoch <= epoch)

    def apply(self, index: int) -> list[str]:
        """Make stage `index`'s layers (and the head) trainable; return the trainable layer names."""
        from distft.model import unfreeze as unfreezing

        unfreezing.apply(self.ft.model, self.body, self.chosen[index], self.train_bn)
        self.current = index
        return self.trainable_layers()

    def trainable_layers(self) -> list[str]:
        from distft.model import unfreeze as unfreezing

        return [l.name for l in unfreezing.flatten(self.ft.model) if l.trainable and l.weights]

    def _each_stage(self) -> Iterator[int]:
        """Apply each stage in turn, yielding its index; then the current one again."""
        current = self.current
        try:
            for i in range(len(self.stages)):
                self.apply(i)
                yield i
        finally:
            self.apply(current)

    def variables(self) -> list[tf.Variable]:
        """Every variable trainable in some stage (model/variables.py's `classify`), in a fixed
        order, stage by stage: the optimizer keeps state (slots) for all of them from the
        start, so a stage switch keeps what it learnt."""
        from distft.model.variables import classify

        seen, out = set(), []
        for _ in self._each_stage():
            for v in classify(self.ft.model).trainable:
                if id(v) not in seen:
                    seen.add(id(v))
                    out.append(v)
        return out

    def ever_trainable(self) -> set[str]:
        """Names of the layers that train in some stage (`classify(model, ever_trainable=...)`
        classes their variables as when they train)."""
        return {name for _ in self._each_stage() for name in self.trainable_layers()}

    def describe(self, index: int) -> str:
        stage = self.stages[index]
        return f"stage {index} (from epoch {stage.epoch + 1}: {stage.spec or 'as --unfreeze'})"


def lr_groups(ft: FineTuneModel, groups: list[tuple[str, float]],
              train_bn: bool = False) -> list[tuple[str, float, list[str], list[tf.Variable]]]:
    """(SPEC, FACTOR, layer names, trainable-kind variables) per `--lr_mult` group; a layer in
    several groups belongs to the last one."""
    from distft.model import unfreeze as unfreezing

    layers = unfreezing.flatten(ft.model)
    owner: dict[int, int] = {}
    for g, (spec, _) in enumerate(groups):
        for i in unfreezing.select(layers, spec, train_bn, flag="--lr_mult"):
            owner[i] = g
    out = []
    for g, (spec, factor) in enumerate(groups):
        mine = [layers[i] for i in sorted(owner) if owner[i] == g]
        out.append((spec, factor, [l.name for l in mine],
                    [w for l in mine for w in _trainable_kind(l)]))
    return out


def _trainable_kind(layer) -> list:
    """The weights `layer` trains when unfrozen (not e.g. BatchNormalization's moving
    statistics), whether or not it is frozen now: Keras 3 sets a frozen layer's variables'
    `trainable` to False, so that flag cannot tell."""
    return list(layer._trainable_variables)

"""Where a run is, and the state it carries across a stop, a resume and an elastic reset.

`Position` is a place in the run (epoch, steps done in it, steps per epoch); `rescaled` finds the
same place on another number of workers, for `--resume` and elastic resets alike. `RunState` is
what a checkpoint's `state.json` holds and what elastic mode commits in memory, versioned so
that checkpoints written by older distft still resume.

Example:
    where = Position(epoch=2, skip=40, steps=100)
    where.rescaled(50)                       # Position(epoch=2, skip=20, steps=50) on twice the workers
    state = RunState(epoch=2, step_in_epoch=40, steps_per_epoch=100, stopped_by="SIGTERM")
    RunState.from_json(state.to_json()) == state
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional


@dataclass(frozen=True)
class Position:
    """Step `skip` of epoch `epoch` (both 0-based: `skip` steps of it are done), with `steps` steps
    per epoch (0: unknown, only ever at an epoch's start)."""

    epoch: int = 0
    skip: int = 0
    steps: int = 0

    @property
    def done(self) -> int:
        """Steps trained before this place."""
        return self.epoch * self.steps + self.skip

    def rescaled(self, steps: int) -> Position:
        """The same fraction of the epoch with `steps` steps per epoch (another number of
        workers); past its last step, the next epoch's start."""
        skip = self.skip * steps // self.steps if self.skip else 0
        return Position(self.epoch + 1, 0, steps) if skip >= steps else Position(self.epoch, skip, steps)

    def next_step(self) -> str:
        """The step training goes on with: `epoch 3 step 41 of 100`, or `epoch 3` at its start."""
        return f"epoch {self.epoch + 1} step {self.skip + 1} of {self.steps}" if self.skip else \
            f"epoch {self.epoch + 1}"

    def stopped_at(self) -> str:
        """Where training stopped: `epoch 3 step 40`, or `epoch 2` after that epoch's end."""
        return f"epoch {self.epoch + 1} step {self.skip}" if self.skip else f"epoch {self.epoch}"


@dataclass(frozen=True)
class RunState:
    """A run's state beside its weights: a checkpoint's `state.json`, an elastic commit.

    Version 1 (distft before RunState) wrote the same keys without `version`; the fields it
    lacks take their defaults."""

    VERSION: ClassVar[int] = 2

    epoch: int = 0  # the epoch to go on in
    step_in_epoch: int = 0  # its steps done
    steps_per_epoch: int = 0  # then (0: not recorded; at an epoch's start it does not matter)
    stage: int = 0  # --unfreeze_schedule's stage at `epoch`
    stopped_by: Optional[str] = None  # the signal or fault that stopped the run here
    logs: dict = field(default_factory=dict)  # the metrics of the epoch that ended here
    before: dict = field(default_factory=dict)  # validation before fine-tuning
    steps_run: int = 0  # steps trained over all attempts (TensorBoard's step)
    best: dict = field(default_factory=dict)  # --keep_best's best epoch so far: {monitor, value, epoch}
    # Elastic mode's, in memory: whether rank 0 announced the run, the worker count that the
    # learning rate's `lr_offset` was set for, and the resets so far.
    announced: bool = False
    size: Optional[int] = None
    lr_offset: float = 0.0
    resets: int = 0

    @property
    def position(self) -> Position:
        return Position(self.epoch, self.step_in_epoch, self.steps_per_epoch)

    def at(self, position: Position, **changes: Any) -> RunState:
        """This state at `position`, with `changes`."""
        return dataclasses.replace(self, epoch=position.epoch, step_in_epoch=position.skip,
                                   steps_per_epoch=position.steps, **changes)

    def to_json(self) -> dict[str, Any]:
        return {"version": self.VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunState:
        """A state written by this or an older version; keys it does not know are ignored."""
        version = data.get("version", 1)
        if version > cls.VERSION:
            raise ValueError(f"state version {version} is newer than this distft's {cls.VERSION}")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["steps_per_epoch"] = values.get("steps_per_epoch") or 0  # version 1 wrote null
        return cls(**values)

"""Checkpoints on disk: written atomically (temporary folder, then rename), newest complete
one found for `--resume`, old ones pruned to `keep`.

A checkpoint folder `checkpoints/epoch-0003/` holds a TensorFlow checkpoint of the model and
optimizer (state `ckpt.*`) and `state.json` (the run's `RunState`: the epoch reached and the rest).

Example:
    store = CheckpointStore("runs/a/checkpoints", keep=3)
    store.save(tf.train.Checkpoint(model=model, optimizer=opt), RunState(epoch=3))
    latest = store.latest()       # ("runs/a/checkpoints/epoch-0003", RunState(epoch=3, ...))
"""
from __future__ import annotations

import json
import os
import re
import shutil
from typing import Optional

import tensorflow as tf

from distft.errors import DistftError, Stopped, root_cause
from distft.train.state import RunState

_NAME = re.compile(r"^epoch-(\d+)$")


class CheckpointStore:
    def __init__(self, folder: str, keep: int = 3):
        self.folder, self.keep = folder, keep

    def save(self, checkpoint: tf.train.Checkpoint, state: RunState, name: Optional[str] = None) -> str:
        """Write checkpoint + state for `state.epoch` (as `name`, default `epoch-NNNN`; another
        name is never pruned, nor found by `latest`); return the final folder."""
        os.makedirs(self.folder, exist_ok=True)
        name = name or f"epoch-{state.epoch:04d}"
        final = os.path.join(self.folder, name)
        tmp = os.path.join(self.folder, f".tmp-{name}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            checkpoint.write(os.path.join(tmp, "ckpt"))
            with open(os.path.join(tmp, "state.json"), "w") as f:
                json.dump(state.to_json(), f)
        except (tf.errors.OpError, OSError) as e:  # a full or read-only disk: keep what is there
            shutil.rmtree(tmp, ignore_errors=True)
            raise self._unwritten(state.epoch, e) from e
        if os.path.exists(final):  # the same epoch again (a resumed run): replace it whole
            old = final + f".old-{os.getpid()}"
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        self._prune()
        return final

    def complete(self) -> list[tuple[int, str]]:
        """(epoch, folder) of every complete checkpoint, oldest first."""
        if not os.path.isdir(self.folder):
            return []
        found = []
        for name in os.listdir(self.folder):
            m = _NAME.match(name)
            path = os.path.join(self.folder, name)
            if m and os.path.exists(os.path.join(path, "state.json")):
                found.append((int(m.group(1)), path))
        return sorted(found)

    def latest(self) -> Optional[tuple[str, RunState]]:
        """The newest complete checkpoint folder and its state, or None."""
        for _, path in reversed(self.complete()):
            try:
                with open(os.path.join(path, "state.json")) as f:
                    return path, RunState.from_json(json.load(f))
            except (OSError, ValueError, TypeError):
                continue  # unreadable state: fall back to an older checkpoint
        return None

    def _unwritten(self, epoch: int, error: Exception) -> DistftError:
        """The one line for a checkpoint that could not be written: why, the space left, the
        checkpoint that is intact, and how to go on (exit code 75, as a stop: resume later)."""
        if isinstance(error, tf.errors.OpError):  # "{{function_node ...}} PATH; No space left on device [Op:SaveV2]"
            first = (error.message or "").strip().splitlines()[:1] or [root_cause(error.message)]
            why = re.sub(r"\s*\[Op:\w+\]$", "", first[0].split("; ")[-1])
        else:
            why = error.strerror or str(error)
        try:
            free = f"{shutil.disk_usage(self.folder).free / 2**20:.2f} MB free"
        except OSError:
            free = "free space unknown"
        return DistftError(f"could not write the epoch {epoch} checkpoint in {self.folder} ({why}; "
                           f"{free}): {self.intact()}; make room there, then run the same command with --resume",
                           exit_code=Stopped.EXIT_CODE, local=True)

    def intact(self) -> str:
        """Which checkpoint `--resume` goes on from: 'the epoch 3 checkpoint (PATH) is intact'."""
        latest = self.latest()
        return f"the epoch {latest[1].epoch} checkpoint ({latest[0]}) is intact" if latest else \
            "no earlier checkpoint is complete, so --resume starts over"

    @staticmethod
    def restore(checkpoint: tf.train.Checkpoint, path: str) -> None:
        checkpoint.read(os.path.join(path, "ckpt")).assert_existing_objects_matched()

    def _prune(self) -> None:
        for name in os.listdir(self.folder):
            if name.startswith(".tmp-") or ".old-" in name:
                shutil.rmtree(os.path.join(self.folder, name), ignore_errors=True)
        if self.keep:
            for _, path in self.complete()[:-self.keep]:
                shutil.rmtree(path, ignore_errors=True)

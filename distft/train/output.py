"""The run folder: refuse to clobber a finished run, find the checkpoint to resume from,
and write final files atomically. Rank 0 only.

Layout: `config.yaml`, `checkpoints/epoch-NNNN/`, `tensorboard/{train,validation}/`,
`model.keras`, `adapter.npz` (--save_adapter), `metrics.json` (its presence marks a finished
run), `classes.json` (class names, when the data has them: image folders, CSV class-name labels,
shards' manifests).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Optional

from distft.errors import DistftError
from distft.files import atomic_write, write_json
from distft.train.checkpoint import CheckpointStore

OUTPUTS = ("checkpoints", "tensorboard", "model.keras", "model_ema.keras", "metrics.json",
           "config.yaml", "classes.json", "adapter.npz")


class RunFolder:
    """Example: run = RunFolder("runs/a"); run.check(resume=False, overwrite=False)."""

    def __init__(self, path: str, keep_checkpoints: int = 3):
        self.path = path
        self.checkpoints = CheckpointStore(os.path.join(path, "checkpoints"), keep_checkpoints)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    @property
    def finished(self) -> bool:
        return os.path.exists(self.file("metrics.json"))

    def check(self, resume: bool, overwrite: bool) -> Optional[str]:
        """Validate the folder for a new, resumed or overwriting run; return the checkpoint
        folder to resume from (or None). Writes nothing."""
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise DistftError(f"--output_dir={self.path} is a file: pass a folder path")
        parent = self.path if os.path.isdir(self.path) else _existing_parent(self.path)
        try:  # a real write: permission bits say nothing for root or read-only mounts
            os.rmdir(tempfile.mkdtemp(prefix=".distft-write-test-", dir=parent))
        except OSError as e:
            raise DistftError(f"--output_dir={self.path} is not writable ({parent}: "
                              f"{e.strerror}): pass a folder you can write to") from None
        latest = self.checkpoints.latest()
        if overwrite:
            return None
        if self.finished:
            raise DistftError(f"--output_dir={self.path} holds a finished run: pass --overwrite "
                              "to replace it, or choose a new --output_dir")
        if resume:
            return latest[0] if latest else None
        if latest:
            raise DistftError(f"--output_dir={self.path} holds an unfinished run (checkpoint "
                              f"{os.path.basename(latest[0])}): pass --resume to continue it or "
                              "--overwrite to start again")
        return None

    def prepare(self, overwrite: bool) -> None:
        """Create the folder; with overwrite, remove the previous run's outputs first."""
        if overwrite:
            for name in OUTPUTS:
                path = self.file(name)
                if os.path.isdir(path):
                    shutil.rmtree(path)
                elif os.path.exists(path):
                    os.remove(path)
        os.makedirs(self.path, exist_ok=True)

    def write_json(self, name: str, data: dict) -> None:
        write_json(self.file(name), data)

    def save_model(self, model, name: str = "model.keras") -> str:
        path = self.file(name)
        atomic_write(path, lambda tmp: model.save(tmp), suffix=".keras")
        return path


def _existing_parent(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise DistftError(f"--output_dir: {path} is a file, so no folder can be made below it")
    return path

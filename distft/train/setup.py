"""A run's first stage: stop signals caught, the user's callbacks built, the run folder agreed
and checked, the data opened.

Example (under `horovodrun -np 2`):
    setup = Setup.open(cfg, Worker.start())
    setup.folder.path, setup.resume_from       # "runs/a", "runs/a/checkpoints/epoch-0002" or None
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import keras

from distft import log
from distft.config import TrainConfig
from distft.data.dataset import Source
from distft.errors import DistftError
from distft.train.callbacks import user
from distft.train.callbacks.stopping import StopSignals
from distft.train.gpu import check_gpus
from distft.train.output import RunFolder
from distft.train.runtime import Worker


@dataclass(frozen=True)
class Setup:
    """What a run starts from: its options (run folder decided), the stop signals it listens
    to, the user's callbacks (--callbacks, --early_stopping: made once, so that elastic mode's
    attempts share them), its folder and the checkpoint to resume from, and its data as opened
    (made ready for the model by the trainee)."""

    cfg: TrainConfig
    signals: StopSignals
    folder: RunFolder
    started: float
    resume_from: Optional[str]
    train_data: Source
    val_data: Optional[Source]
    user_callbacks: tuple[user.UserCallback, ...] = ()
    refused: Optional[DistftError] = None  # elastic mode: the folder's error, raised unless the run is underway

    @classmethod
    def open(cls, cfg: TrainConfig, worker: Worker) -> Setup:
        started = time.time()
        signals = StopSignals()
        signals.install()  # remember a signal that arrives while the run is being set up
        keras.utils.set_random_seed(cfg.seed)
        check_gpus(worker, cfg.require_gpu)
        user_callbacks = tuple(user.build(cfg))  # the same options on every worker: all raise alike
        if cfg.profile:
            cfg.profiled_ranks(worker.size)  # before the run folder is written
        chosen = cfg.with_run_folder(worker.agree)  # launched without --output_dir: rank 0's choice
        if chosen is not cfg and worker.rank == 0:
            log.info("run folder: %s (choose one with --output_dir)", chosen.output_dir)
        folder = RunFolder(chosen.output_dir, cfg.keep_checkpoints)
        resume_from, refused = None, None
        try:
            resume_from = worker.agree(lambda: folder.check(cfg.resume, cfg.overwrite))
        except DistftError as e:
            if not worker.env.elastic:
                raise
            refused = e  # a worker that joins a run underway finds its folder in use
        train_data, val_data = worker.all_ok(lambda: _open_data(cfg))
        return cls(chosen, signals, folder, started, resume_from, train_data, val_data, user_callbacks,
                   refused)


def _open_data(cfg: TrainConfig) -> tuple[Source, Optional[Source]]:
    train = Source.open(cfg.data, cfg.label, cfg.val_split, cfg.x_key, cfg.y_key, named_csv=True,
                        text=cfg.text())
    if cfg.val_data:
        return train, Source.open(cfg.val_data, cfg.label, 0.0, cfg.x_key, cfg.y_key, flag="val_data",
                                  named_csv=True, text=cfg.text())
    return train, None

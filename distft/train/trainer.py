"""One worker's fine-tuning run: the Horovod recipe, start to finish, as typed stages (a
`Setup`, a `Trainee`, the `RunState` it starts from; train/phases.py has the steps between
them; in elastic mode train/elastic.py runs them in attempts).

Example (under `horovodrun -np 2`):
    metrics = run(TrainConfig.resolve(model="base_model.h5", data="shards/", output_dir="runs/a",
                                      num_classes=5, unfreeze="last:2"))
"""
from __future__ import annotations

from typing import Any, Optional

from distft.config import TrainConfig
from distft.train.phases import fit, inputs, restore, sync
from distft.train.report import announce, finish
from distft.train.run_callbacks import callbacks
from distft.train.runtime import Worker
from distft.train.setup import Setup
from distft.train.stall.watchdog import horovod_settings, watching
from distft.train.trainee import Trainee


def run(cfg: TrainConfig, worker: Optional[Worker] = None) -> dict[str, Any]:
    """Fine-tune as one worker of the job; returns the final metrics (same on every worker)."""
    # hvd.init(), a GPU or cores for this local rank; Horovod's time-outs after the watchdog's
    worker = worker or Worker.start(cfg.threads, horovod=horovod_settings(cfg.stall_timeout))
    if worker.env.elastic:
        from distft.train import elastic

        return elastic.run(cfg, worker)
    setup = Setup.open(cfg, worker)          # stop signals caught, run folder checked, data opened
    with watching(worker, cfg.stall_timeout, setup.folder):  # a stalled rank named, exit 75
        return _train(setup, worker)


def _train(setup: Setup, worker: Worker) -> dict[str, Any]:
    """The run after its set-up, in a fixed-size job."""
    trainee = Trainee.build(setup, worker)   # model bound to the data, optimizer, averager, EMA
    state = restore(setup, trainee, worker)  # --resume: the checkpoint, and where to go on from
    placement = sync(setup, trainee, worker, state.position)  # the step for these workers; rank 0's state
    announce(setup, trainee, worker, state, placement)        # rank 0 prepares the folder, logs the run
    data = inputs(setup, trainee, worker, state.position)     # this worker's shard, batched, from there
    cbs = callbacks(setup, trainee, worker, state, data.model, placement)
    return finish(setup, trainee, worker, state, fit(setup, state.position, data, cbs), cbs)

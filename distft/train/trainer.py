"""One worker's fine-tuning run: the Horovod recipe, start to finish (the phases are in
train/phases.py; in elastic mode train/elastic.py runs them in attempts).

Example (under `horovodrun -np 2`):
    metrics = run(TrainConfig.resolve(model="base_model.h5", data="shards/", output_dir="runs/a",
                                      num_classes=5, unfreeze="last:2"))
"""
from __future__ import annotations

from typing import Any, Optional

from distft.config import TrainConfig
from distft.train.phases import announce, build, callbacks, finish, fit, inputs, open_job, restore, sync
from distft.train.runtime import Worker


def run(cfg: TrainConfig, worker: Optional[Worker] = None) -> dict[str, Any]:
    """Fine-tune as one worker of the job; returns the final metrics (same on every worker)."""
    worker = worker or Worker.start(cfg.threads)  # hvd.init(), a GPU or cores for this local rank
    if worker.env.elastic:
        from distft.train import elastic

        return elastic.run(cfg, worker)
    job = open_job(cfg, worker)  # stop signals caught, run folder checked, data opened
    build(job)                   # model bound to the data, optimizer, gradient averager, EMA
    restore(job)                 # --resume: the checkpoint, and the epoch and step to go on from
    sync(job)                    # compiled with the allreduce step; rank 0's state broadcast
    announce(job)                # rank 0 prepares the run folder and logs the run
    data = inputs(job)           # this worker's shard, batched, from where the run starts
    cbs = callbacks(job, data)
    return finish(job, fit(job, data, cbs), cbs)  # the workers agree; rank 0 saves the model

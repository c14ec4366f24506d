"""GPU honesty: a node with NVIDIA GPUs whose TensorFlow sees none (tensorflow-cpu, or a CUDA
build that does not match the driver) would train on its CPU without a word. Rank 0 says so in
one warning line; with --require_gpu every rank stops with that line as the error.

Example:
    check_gpus(worker, require=cfg.require_gpu)   # on every rank, after Worker.start
"""
from __future__ import annotations

import glob
import shutil
import subprocess

from distft import log
from distft.errors import DistftError
from distft.train.runtime import Worker


def nvidia_gpus() -> list[str]:
    """This node's NVIDIA GPUs as `nvidia-smi -L` lists them, else its /dev/nvidiaN devices;
    [] when it has neither."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.TimeoutExpired):
            listed = ""
        gpus = [line.strip() for line in listed.splitlines() if line.startswith("GPU ")]
        if gpus:
            return gpus
    return sorted(glob.glob("/dev/nvidia[0-9]*"))


def check_gpus(worker: Worker, require: bool) -> None:
    """Warn (rank 0, one line) when a worker runs on CPU on a node with NVIDIA GPUs; with
    `require`, raise that on every rank instead, or that a worker has no GPU at all."""
    on_cpu = worker.device == "CPU"
    ranks = worker.gather((worker.node_name, nvidia_gpus() if on_cpu else None))
    unseen = [(rank, node, gpus) for rank, (node, gpus) in enumerate(ranks) if gpus]
    if unseen:
        import tensorflow as tf

        rank, node, gpus = unseen[0]
        build = ("built without CUDA: tensorflow-cpu?" if not tf.test.is_built_with_cuda() else
                 f"built for CUDA {tf.sysconfig.get_build_info().get('cuda_version')}: check the "
                 "driver and CUDA_VISIBLE_DEVICES")
        message = (f"{len(unseen)} worker(s) run on CPU although their node has NVIDIA GPUs "
                   f"(rank {rank} on {node}: {len(gpus)} GPU(s), {gpus[0]}); TensorFlow {tf.__version__} "
                   f"sees none ({build}): install the GPU build matching the node's CUDA (pip "
                   f"install 'tensorflow[and-cuda]=={tf.__version__}'), then distft install-horovod --gpu")
        if require:
            raise DistftError(f"--require_gpu: {message}")
        if worker.rank == 0:
            log.warning("%s", message)
    elif require and any(gpus is not None for _, gpus in ranks):
        bare = [str(rank) for rank, (_, gpus) in enumerate(ranks) if gpus is not None]
        raise DistftError(f"--require_gpu: rank(s) {','.join(bare)} ({ranks[int(bare[0])][0]}) "
                          "have no GPU (TensorFlow sees none, and there is no nvidia-smi or "
                          "/dev/nvidia*): run on GPU nodes, or leave out --require_gpu")

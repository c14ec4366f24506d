"""A user's own callback, in a module passed with --import (tests/test_user_callbacks.py)."""
import keras

from distft.launch.environment import detect


class StopOnOneRank(keras.callbacks.Callback):
    """Sets `stop_training` on rank `rank` alone, after step `step` of epoch `epoch` (1-based),
    or at that epoch's end without `step`: the callback that leaves the other workers of a
    plain Horovod job waiting for ever."""

    def __init__(self, rank: int = 1, epoch: int = 1, step: int = 0):
        super().__init__()
        self.rank, self.epoch, self.step, self.now = rank, epoch, step, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.now = epoch + 1

    def on_train_batch_end(self, batch, logs=None):
        if self.step and (self.now, batch + 1) == (self.epoch, self.step):
            self._stop()

    def on_epoch_end(self, epoch, logs=None):
        if not self.step and epoch + 1 == self.epoch:
            self._stop()

    def _stop(self):
        if detect().rank == self.rank:
            self.model.stop_training = True


class CollectiveOnOneRank(keras.callbacks.Callback):
    """At the end of epoch `epoch` (1-based), rank `rank` alone calls a Horovod allreduce: the
    divergence that leaves every rank waiting in a collective the others never enter."""

    def __init__(self, rank: int = 0, epoch: int = 2):
        super().__init__()
        self.rank, self.epoch = rank, epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epoch and detect().rank == self.rank:
            import horovod.tensorflow as hvd
            import tensorflow as tf

            hvd.allreduce(tf.constant(1.0), name="planted")


class Allocate(keras.callbacks.Callback):
    """At the start of epoch `epoch` (1-based), rank `rank` alone fills `megabytes` of memory
    (a leak, or a batch too large for its host)."""

    def __init__(self, rank: int = 1, epoch: int = 2, megabytes: int = 4000):
        super().__init__()
        self.rank, self.epoch, self.megabytes, self.held = rank, epoch, megabytes, None

    def on_epoch_begin(self, epoch, logs=None):
        if epoch + 1 == self.epoch and detect().rank == self.rank:
            import numpy as np

            self.held = np.ones(self.megabytes * 2 ** 20, np.uint8)  # touched: resident


class Throttle(keras.callbacks.Callback):
    """As training starts, rank `rank` alone moves itself into the cgroup `cgroup` (a CPU quota
    the test set): that rank computes slower for real, whatever else runs on the machine."""

    def __init__(self, cgroup: str, rank: int = 1):
        super().__init__()
        self.cgroup, self.rank = cgroup, rank

    def on_train_begin(self, logs=None):
        if detect().rank == self.rank:
            import os

            with open(os.path.join(self.cgroup, "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))  # every thread of the process

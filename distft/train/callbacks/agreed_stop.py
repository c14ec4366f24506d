"""The user's callbacks (`--callbacks`, `--early_stopping`) on every worker, with their stop
agreed by all workers.

A Keras callback stops training by setting `model.stop_training`, and `fit` leaves its loop
after that step. Set on one worker only (a callback that reads its own worker's figures or
files), that worker leaves while the others wait in the next step's allreduce for ever: the
classic early-stopping deadlock of data-parallel Keras. Here the user's callbacks run after
every figure of the epoch's logs (the training metrics and validation over all workers, the
same on every worker), and a stop that one of them sets is held back until the workers agree:
at the next periodic stop check of `GracefulStop` (its allreduce carries the vote: every 10 to
1000 steps, no collective of its own) or at the epoch's end (one allgather of a flag an epoch);
then every worker stops after the same step. On one worker the rule is the same, so a run
stops where it would on any number of workers.

Example:
    agreed = AgreedStop(user.build(cfg), worker, epochs=20)
    stop = GracefulStop(signals, worker.size, vote=agreed)
    model.fit(..., callbacks=[EpochMetrics(worker), stop, Validation(...), agreed, ...])
    agreed.stopped   # {"epoch": 5, "step": None, "epochs": 20, "ranks": [0, 1],
                     #  "reason": "val_loss did not improve for 2 epochs (best 0.3012 after epoch 3)"}
    stop_line(agreed.stopped)
    # "early stopping: val_loss did not improve for 2 epochs (...); stopped after epoch 5 of 20"
"""
from __future__ import annotations

from typing import Optional

import keras

from distft.errors import DistftError
from distft.train.callbacks.user import UserCallback
from distft.train.runtime import Worker

# Every hook of keras.callbacks.Callback, passed on to the user's callbacks.
HOOKS = ("on_train_begin", "on_train_end", "on_epoch_begin", "on_epoch_end", "on_train_batch_begin",
         "on_train_batch_end", "on_test_begin", "on_test_end", "on_test_batch_begin",
         "on_test_batch_end", "on_predict_begin", "on_predict_end", "on_predict_batch_begin",
         "on_predict_batch_end")


class AgreedStop(keras.callbacks.Callback):
    """Runs `callbacks` (a stop they set held back: `voters`) and agrees on their stop."""

    def __init__(self, callbacks: list[UserCallback], worker: Worker, epochs: int):
        super().__init__()
        self.callbacks, self.worker, self.epochs = callbacks, worker, epochs
        self.voters: list[UserCallback] = []  # this worker's callbacks that asked to stop
        self.agreed: Optional[tuple[int, int]] = None  # (epoch, step; 0: its end) of the agreed stop
        self.stopped: Optional[dict] = None  # the stop, for metrics.json (the same on every worker)
        self._checked = False

    def set_model(self, model):
        super().set_model(model)
        for user in self.callbacks:
            user.callback.set_model(model)

    def set_params(self, params):
        super().set_params(params)
        for user in self.callbacks:
            user.callback.set_params(params)

    @property
    def wanted(self) -> bool:
        """Whether a callback on this worker asked to stop (GracefulStop's vote)."""
        return bool(self.voters)

    def stop_at(self, epoch: int, step: int) -> None:
        """On every worker: the workers agreed to stop after `step` of `epoch` (0: its end)."""
        self.agreed = (epoch, step)
        self.model.stop_training = True

    def _run(self, hook: str, *args, **kwargs) -> None:
        for user in self.callbacks:
            before = self.model.stop_training
            getattr(user.callback, hook)(*args, **kwargs)
            if self.model.stop_training and not before:  # held until the workers agree
                self.model.stop_training = False
                self.voters.append(user)

    def on_epoch_end(self, epoch, logs=None):
        if not self._checked:  # every worker's logs have the same keys: all raise together
            self._check_monitors(logs or {})
            self._checked = True
        self._run("on_epoch_end", epoch, logs)
        if self.agreed is None:
            votes = self.worker.gather_floats([float(self.wanted)], "distft_callbacks_stop")
            if not any(vote for vote, in votes):
                return
            self.stop_at(epoch, 0)
        reasons = self.worker.gather(self._reason() if self.voters else None)  # once, at the stop
        ranks = [r for r, reason in enumerate(reasons) if reason]
        only = f" (on rank {', '.join(map(str, ranks))} only)" if len(ranks) < self.worker.size else ""
        self.stopped = {"epoch": epoch + 1, "step": self.agreed[1] or None, "epochs": self.epochs,
                        "ranks": ranks, "reason": reasons[ranks[0]] + only}

    def _reason(self) -> str:
        """Why this worker's callbacks asked to stop: Keras's EarlyStopping's own figures."""
        found = []
        for user in self.voters:
            cb = user.callback
            if isinstance(cb, keras.callbacks.EarlyStopping) and cb.best is not None:
                found.append(f"{cb.monitor} did not improve for {cb.wait} epoch{'s' if cb.wait != 1 else ''} "
                             f"(best {float(cb.best):.4f} after epoch {cb.best_epoch + 1})")
            else:
                found.append(f"{user.option} set stop_training")
        return "; ".join(dict.fromkeys(found))

    def _check_monitors(self, logs: dict) -> None:
        """A callback that monitors a metric the logs lack would never act (Keras warns only)."""
        for user in self.callbacks:
            monitor = getattr(user.callback, "monitor", None)
            if isinstance(monitor, str) and monitor not in logs:
                raise DistftError(f"{user.option}: it monitors {monitor}, which the epoch's logs do "
                                  f"not have: monitor one of {', '.join(sorted(logs))}")


def _forward(hook: str):
    def run(self, *args, **kwargs):
        self._run(hook, *args, **kwargs)

    run.__name__ = hook
    return run


for _hook in HOOKS:
    if _hook != "on_epoch_end":
        setattr(AgreedStop, _hook, _forward(_hook))


def stop_line(stopped: dict) -> str:
    """The log's line for an agreed stop (AgreedStop.stopped)."""
    where = f"after epoch {stopped['epoch']} of {stopped['epochs']}"
    if stopped["step"]:
        where = f"in epoch {stopped['epoch']} of {stopped['epochs']}, after its step {stopped['step']}"
    return f"early stopping: {stopped['reason']}; stopped {where}"

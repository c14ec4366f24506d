"""What a language model says as it trains: at each epoch's end, rank 0 continues a few prompts
with the model's own `generate` (and sampler) and writes them to TensorBoard's Text tab, as one
Markdown table (prompt | generated) under the tag `generations`, step = the epochs done (as
TensorBoardLogger's `epoch_` tags). A generation that fails is a warning, not the run's end.

Example:
    samples = Generations(model, ["The cat", "Once upon"], "runs/a/tensorboard/validation",
                          max_length=32, rank=worker.rank)
    samples.write(0)                              # before training
    model.fit(..., callbacks=[..., samples])      # then after each epoch
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import keras
import tensorflow as tf

from distft import log
from distft.launch.environment import detect
from distft.model.generation import continuations

TAG = "generations"


class Generations(keras.callbacks.Callback):
    """`model_or_fn`: the Keras Hub `CausalLM` to generate with, or a function that returns it
    (called at each write: the run's current model); `max_length`: tokens in all, prompt
    included; `rank`: this worker's (default: the launcher's), only rank 0 writes; `every`:
    epochs between writes."""

    def __init__(self, model_or_fn: Union[keras.Model, Callable[[], keras.Model]],
                 prompts: Sequence[str], writer_folder: str, max_length: int = 64,
                 rank: Optional[int] = None, tag: str = TAG, every: int = 1):
        super().__init__()
        self.every = every
        self.model_or_fn, self.prompts = model_or_fn, list(prompts)
        self.writer_folder, self.max_length, self.tag = writer_folder, int(max_length), tag
        self.rank = detect().rank if rank is None else rank
        self.writer: Optional[tf.summary.SummaryWriter] = None
        self.failed = False

    def lm(self) -> keras.Model:
        """The model to generate with now."""
        if isinstance(self.model_or_fn, keras.Model):
            return self.model_or_fn
        return self.model_or_fn()

    def write(self, step: int) -> None:
        """Generate from the prompts and write the table at `step` (rank 0; nothing elsewhere)."""
        if self.rank != 0 or self.failed or not self.prompts:
            return
        try:
            texts = continuations(self.lm(), self.prompts, self.max_length)
        except Exception as e:  # the run goes on: it is a view of the model, not part of it
            self.failed = True
            log.warning("TensorBoard: no generations are written (%s: %s)", type(e).__name__,
                        str(e).splitlines()[0] if str(e) else "")
            return
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(self.writer_folder)
        with self.writer.as_default():
            tf.summary.text(self.tag, markdown(self.prompts, texts), step=step)
        self.writer.flush()

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every == 0:
            self.write(epoch + 1)


def markdown(prompts: Sequence[str], texts: Sequence[str]) -> str:
    """Prompts and their texts as a two-column Markdown table, each cell shown as written
    (Markdown's marks escaped, a line break as <br>).

    Example:
        markdown(["the cat"], ["the cat sat"])
        # | prompt | generated |
        # |---|---|
        # | the cat | the cat sat |
    """
    rows = [f"| {_cell(p)} | {_cell(t)} |" for p, t in zip(prompts, texts)]
    return "\n".join(["| prompt | generated |", "|---|---|", *rows])


def _cell(text: str) -> str:
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    for mark in "\\`*_[]#|":
        text = text.replace(mark, "\\" + mark)
    return text.replace("\r\n", "\n").replace("\n", "<br>")

"""Text from a Keras Hub causal language model (a `CausalLM` saved with its preprocessor).

`causal_lm` loads one with distft's loader and checks it is one; `generate` compiles it with
one of keras_hub's samplers and continues each prompt with the model's own `generate`;
`continuations` is that generation alone, for a model being trained (no compile). `prompts_from`
reads the prompts the CLI was given; `write_jsonl` writes prompts and texts, one object a line.

Example:
    lm = causal_lm("runs/a")                  # a run folder's model.keras, or a .keras file
    generate(lm, ["the cat"], sampler="greedy", max_length=16)   # ["the cat sat on the mat"]
"""
from __future__ import annotations

import json
import sys
import warnings
from typing import TYPE_CHECKING, Optional, Sequence, Union

from distft.errors import DistftError, root_cause

if TYPE_CHECKING:  # TensorFlow is imported once the input is checked
    import keras

# keras_hub's samplers that work by name alone ("speculative" needs a second, draft model).
SAMPLERS = ("greedy", "top_k", "top_p", "random", "beam", "contrastive")


def check(sampler: str, max_length: object, batch_size: object = 1) -> tuple[str, int, int]:
    """`sampler`, `max_length` and `batch_size` checked (before any model is loaded).

    Example:
        check("greedy", "64")          # ("greedy", 64, 1)
    """
    if sampler not in SAMPLERS:
        raise DistftError(f"--sampler={sampler} is not one of keras_hub's samplers that work by "
                          f"name: pass one of {', '.join(SAMPLERS)}")
    numbers = []
    for name, value in (("max_length", max_length), ("batch_size", batch_size)):
        if isinstance(value, bool) or not str(value).isdigit() or int(value) < 1:
            raise DistftError(f"--{name}={value!r} is not a positive integer: fix the value")
        numbers.append(int(value))
    return sampler, numbers[0], numbers[1]


def prompts_from(prompt: Optional[str], prompts_file: Optional[str]) -> list[str]:
    """The one prompt `prompt`, or the lines of the file `prompts_file` (blank lines skipped).

    Example:
        prompts_from("the cat", None)            # ["the cat"]
        prompts_from(None, "prompts.txt")        # one prompt a line of the file
    """
    if (prompt is None) == (prompts_file is None):
        raise DistftError("--prompt and --prompts are two ways to give prompts: pass one"
                          if prompt is not None else
                          "no prompt: pass --prompt=TEXT or --prompts=FILE (one prompt a line)")
    if prompt is not None:
        return [prompt]
    try:
        with open(prompts_file, encoding="utf-8") as f:
            lines = [line.rstrip("\r\n") for line in f]
    except (OSError, UnicodeDecodeError) as e:
        raise DistftError(f"--prompts={prompts_file} cannot be read ({type(e).__name__}): pass a "
                          "UTF-8 text file, one prompt a line") from None
    found = [line for line in lines if line.strip()]
    if not found:
        raise DistftError(f"--prompts={prompts_file} holds no prompt: write one prompt a line")
    return found


def causal_lm(model: Union[str, keras.Model]) -> keras.Model:
    """The Keras Hub `CausalLM` in `model` (a .keras file, or a run folder holding model.keras;
    or the model itself), with its preprocessor; one DistftError line for any other model."""
    from distft.model import loading

    name = f"--model={model}" if isinstance(model, str) else "the model"
    if isinstance(model, str):
        with warnings.catch_warnings():  # a file saved after compile: generation needs no optimizer
            warnings.filterwarnings("ignore", message="Skipping variable loading for optimizer")
            model = loading.load(loading.model_file(model))
    hub = sys.modules.get("keras_hub")  # imported by the loader when the file names its classes
    if hub is None or not isinstance(model, hub.models.CausalLM):
        raise DistftError(f"{name} is a {type(model).__name__}, not a Keras Hub causal language "
                          "model: pass a CausalLM's .keras file (e.g. a GemmaCausalLM saved with "
                          "its preprocessor) or the run folder that fine-tuned one")
    if model.preprocessor is None:
        raise DistftError(f"{name} is a {type(model).__name__} saved without its preprocessor, "
                          "so it cannot read text: save it with one (preprocessor="
                          f"{type(model).__name__}Preprocessor(tokenizer, sequence_length=...))")
    return model


def generate(model: keras.Model, prompts: Sequence[str], sampler: str = "greedy",
             max_length: int = 64, seed: Optional[int] = None, batch_size: int = 16) -> list[str]:
    """Each prompt's text as `model.generate` gives it (the prompt, then its continuation),
    after `model.compile(sampler=sampler)`; `seed` makes a random sampler's choices repeatable.
    The compile resets the model's training set-up: compile it again before `fit`.

    Example:
        generate(lm, ["the cat", "a bird"], sampler="top_k", max_length=32, seed=1)
    """
    import keras

    if seed is not None:
        keras.utils.set_random_seed(int(seed))  # the sampler's seed generator draws from it
    model.compile(sampler=sampler)
    try:
        return continuations(model, prompts, max_length, batch_size)
    except Exception as e:
        raise DistftError(f"{type(model).__name__} could not generate with --sampler={sampler} "
                          f"--max_length={max_length} ({type(e).__name__}: {root_cause(str(e))}): "
                          "try --sampler=greedy or a --max_length the model takes") from e


def continuations(model: keras.Model, prompts: Sequence[str], max_length: int,
                  batch_size: int = 16) -> list[str]:
    """`model.generate`'s text for each prompt, `batch_size` prompts a call, with the sampler
    the model has (a model in training keeps its compile).

    Example:
        continuations(lm, ["the cat"], max_length=16)     # ["the cat sat on the mat"]
    """
    texts: list[str] = []
    for start in range(0, len(prompts), batch_size):
        out = model.generate(list(prompts[start:start + batch_size]), max_length=max_length)
        texts += [t.decode() if isinstance(t, bytes) else str(t) for t in out]
    return texts


def write_jsonl(path: str, prompts: Sequence[str], texts: Sequence[str]) -> None:
    """One `{"prompt": ..., "generated": ...}` line per prompt, written whole or not at all."""
    from distft.files import atomic_write

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            for prompt, text in zip(prompts, texts):
                f.write(json.dumps({"prompt": prompt, "generated": text}, ensure_ascii=False) + "\n")

    atomic_write(path, write, suffix=".jsonl")

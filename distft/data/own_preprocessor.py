"""The model's own preprocessor: a Keras Hub task's, saved with it, which turns raw records into
the model's inputs. distft runs it in tf.data on each worker (and trains with `keras.Model.fit`,
so the task does not run it again): raw text through its tokenizer (data/formats/text.py), raw
images through its image converter (data/formats/base.py's `XY`). Found by what it holds, so
that keras_hub is not imported for other models.

Example:
    text_preprocessor(lm)             # a GemmaCausalLMPreprocessor: tokenizes text
    image_preprocessor(classifier)    # a ResNetImageClassifierPreprocessor: resizes and scales
    describe(image_preprocessor(classifier))
    # "the model's ResNetImageClassifierPreprocessor (resize to 16x16, scale 0.003922)"
"""
from __future__ import annotations

from typing import Any, Optional

import numpy as np


def text_preprocessor(model: Any) -> Any:
    """The model's own preprocessor when it turns raw text into the model's inputs (a Keras Hub
    task's, with a tokenizer); None otherwise."""
    preprocessor = getattr(model, "preprocessor", None)
    return preprocessor if getattr(preprocessor, "tokenizer", None) is not None else None


def image_preprocessor(model: Any) -> Any:
    """The model's own preprocessor when it turns raw images into the model's inputs (a Keras Hub
    image task's, e.g. an ImageClassifierPreprocessor, with an image converter and no
    tokenizer); None otherwise."""
    preprocessor = getattr(model, "preprocessor", None)
    if getattr(preprocessor, "image_converter", None) is None or text_preprocessor(model) is not None:
        return None
    return preprocessor


def image_size(preprocessor: Any) -> Optional[tuple[int, int]]:
    """The (height, width) the preprocessor resizes images to (None: it keeps their size)."""
    size = getattr(preprocessor.image_converter, "image_size", None)
    return tuple(size) if size and None not in size else None


def describe(preprocessor: Any) -> str:
    """What an image preprocessor does, for the log: its class, size, scale and offset."""
    converter = preprocessor.image_converter
    size = image_size(preprocessor)
    steps = [f"resize to {size[0]}x{size[1]}" if size else "no resize"]
    for name in ("scale", "offset"):
        value = getattr(converter, name, None)
        if value is not None:
            steps.append(f"{name} {_numbers(value)}")
    return f"the model's {type(preprocessor).__name__} ({', '.join(steps)})"


def _numbers(value: Any) -> str:
    return ",".join(f"{v:.4g}" for v in np.ravel(value))

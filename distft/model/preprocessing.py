"""`--preprocess=auto`: feed a model the pixel range its own first layers expect.

A model that starts with its own preprocessing expects pixels in [0, 255]: `Rescaling(1/255)`
first (as in Keras's tutorials), or keras.applications' MobileNetV3, EfficientNet(V2) and
ConvNeXt (their `rescaling` / `*_prestem_normalization` layers). Augmentation and resizing layers
before it (RandomFlip, Resizing, ...) and nesting are looked through. Other models get pixels
scaled to [0, 1], as before. Evaluate and predict feed what the training run fed: its
config.yaml beside the model records the value it used.

A Keras Hub image task saved with its preprocessor (an ImageClassifierPreprocessor) brings its
own: the data is bound to it (data/own_preprocessor.py), which resizes and scales the raw pixels
in [0, 255], in training, evaluate and predict alike, as stock keras_hub does in the task's
`predict`. An explicit --preprocess is then refused: the model's own is the one it was made for.

Example:
    feed = choose("auto", keras.applications.MobileNetV3Small(weights=None), data.layout)
    feed.preprocess   # "none": pixels in [0, 255], as they are
    feed.report()     # preprocess: model starts with Rescaling(0.00784, offset -1) (layer
                      # rescaling) -> feeding pixels in [0, 255]
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional

import keras
import numpy as np
from keras.src.layers.preprocessing.image_preprocessing.base_image_preprocessing_layer import (
    BaseImagePreprocessingLayer)

from distft import log
from distft.data.own_preprocessor import describe
from distft.errors import DistftError
from distft.files import load_yaml
from distft.model.families import PREPROCESSING
from distft.data.formats import Layout
from distft.model.unfreeze import flatten

AUTO = "auto"
# A Rescaling factor up to this maps [0, 255] to a few units (1/255, 1/127.5): made for pixels
# in [0, 255]. Factors made for [0, 1] inputs are about 1 or more (2 for [-1, 1]).
PIXEL_FACTOR = 0.1


@dataclass(frozen=True)
class Found:
    """Preprocessing at the start of a model: its description and the input range it expects."""
    layer: str  # e.g. "Rescaling(0.00392) (layer rescaling)"
    pixels: bool  # True: pixels in [0, 255]; False: in [0, 1]

    @property
    def preprocess(self) -> str:
        return "none" if self.pixels else "scale"


@dataclass(frozen=True)
class Feed:
    """What to feed (a --preprocess value other than auto), and why, for the log."""
    preprocess: str
    note: Optional[str] = None
    warning: Optional[str] = None

    def report(self) -> None:
        """Log the choice (rank 0 calls this)."""
        if self.note:
            log.info("preprocess: %s", self.note)
        if self.warning:
            log.warning("preprocess: %s", self.warning)


def detect(model: keras.Model) -> Optional[Found]:
    """The Rescaling or Normalization layer that first sees the images, if any."""
    for layer in flatten(model):
        if isinstance(layer, BaseImagePreprocessingLayer) or not _sees_images(layer):
            continue
        if isinstance(layer, keras.layers.Rescaling):
            factor = float(np.max(np.abs(layer.scale)))
            offset = np.ravel(layer.offset)
            shown = f"{factor:.3g}" + (f", offset {_numbers(offset)}" if np.any(offset) else "")
            return Found(f"Rescaling({shown}) (layer {layer.name})", factor <= PIXEL_FACTOR)
        if isinstance(layer, keras.layers.Normalization):
            # The mean it was given or adapted on tells the range; not adapted yet: [0, 255].
            mean = np.ravel(keras.ops.convert_to_numpy(layer.mean)) if layer.built else np.zeros(1)
            shown = f"mean {_numbers(mean)}" if np.any(mean) else "not adapted"
            return Found(f"Normalization({shown}) (layer {layer.name})",
                         not np.any(mean) or float(np.max(np.abs(mean))) > 1.0)
        return None
    return None


def choose(preprocess: str, model: keras.Model, layout: Layout, trained: Optional[str] = None) -> Feed:
    """The --preprocess to use for `model` on data of `layout`. `auto` feeds what the training
    run fed (`trained`, from its config.yaml), else what the model's first layers expect; an
    explicit value wins, with a warning when it differs from that."""
    if layout.has_images and layout.preprocessor is not None:
        own = describe(layout.preprocessor)
        if preprocess != AUTO:
            raise DistftError(f"--preprocess={preprocess}: {own} resizes and scales the images, and "
                              "distft feeds them to it: leave --preprocess out")
        return Feed(AUTO, f"{own}, applied to the raw pixels in [0, 255] on each worker")
    if not layout.has_images or 0 in layout.pixel_scales:  # features, or floats that are not pixels
        return Feed("scale" if preprocess == AUTO else preprocess)
    found = detect(model)
    if trained:
        expected = trained
        why = f"the run that wrote the model used --preprocess={trained} (config.yaml beside it)"
    elif found:
        expected, why = found.preprocess, f"model starts with {found.layer}"
    else:
        expected, why = "scale", "no Rescaling or Normalization at the model's start"
    if preprocess == AUTO:
        return Feed(expected, f"{why} -> feeding {_fed(expected)}")
    warning = None
    if preprocess != expected and (trained or found):
        warning = (f"--preprocess={preprocess} feeds {_fed(preprocess)}, but {why}: the model expects "
                   f"{_fed(expected)}; leave --preprocess out (auto) to feed that")
    return Feed(preprocess, f"--preprocess={preprocess} -> feeding {_fed(preprocess)}", warning)


def trained_with(model_path: str) -> Optional[str]:
    """The --preprocess that the distft run which wrote `model_path` used, from the config.yaml
    beside it; None without one (or with another tool's), and for app:NAME."""
    if model_path.startswith("app:"):
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.yaml")
    value = load_yaml(path).get("preprocess") if os.path.exists(path) else None
    return value if value in PREPROCESSING and value != AUTO else None


def _fed(preprocess: str) -> str:
    if preprocess == "scale":
        return "pixels in [0, 1]"
    if preprocess == "none":
        return "pixels in [0, 255]"
    return f"keras.applications.{preprocess}.preprocess_input of pixels in [0, 255]"


def _sees_images(layer: keras.layers.Layer) -> bool:
    """Whether `layer` takes (batch, H, W, C) inputs (in a model with other inputs too)."""
    try:
        return len(layer.input.shape) == 4
    except (AttributeError, ValueError):  # several inputs, or a layer never called
        return False


def _numbers(values: np.ndarray) -> str:
    return ",".join(f"{v:.4g}" for v in values)

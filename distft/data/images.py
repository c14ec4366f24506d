"""Images: a folder of class subfolders as a source, and the per-record maps of an image
stream (decode and resize, augment, preprocess), run in parallel tf.data maps.

Example:
    paths, labels, classes = scan("flowers/")            # flowers/daisy/1.jpg, ...
    img = decode(tf.io.read_file(paths[0]), (96, 96, 3))   # float32 in [0, 255]
    img = augmenter(("flip", "crop"), seed=0)(img, tf.constant([0, 1], tf.int64))
    x = preprocessor("mobilenet_v2")(img)
"""
from __future__ import annotations

import math
import os
from typing import Callable

import keras
import tensorflow as tf

from distft.errors import DistftError

EXTENSIONS = (".jpg", ".jpeg", ".png")
ROTATION = math.pi / 12  # rotate: up to 15 degrees either way
CROP = 1.15  # crop: enlarge by up to 15%, then cut the input size at a random place


def scan(folder: str, flag: str = "input") -> tuple[list[str], list[int], list[str]]:
    """Image paths, their class indices and the class names (sorted subfolder names);
    `flag` names the option in errors."""
    if not os.path.isdir(folder):
        raise DistftError(f"--{flag}={folder} is not a folder: pass a folder with one subfolder "
                          "of images per class")
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    paths, labels = [], []
    for label, name in enumerate(classes):
        for root, _, files in sorted(os.walk(os.path.join(folder, name))):
            for f in sorted(files):
                if f.lower().endswith(EXTENSIONS):
                    paths.append(os.path.join(root, f))
                    labels.append(label)
    if not paths:
        raise DistftError(f"--{flag}={folder} holds no JPEG/PNG image in class subfolders: put "
                          "the images of each class in a subfolder named for it")
    return paths, labels, classes


def decode(data: tf.Tensor, input_shape: tuple, resize: bool = True) -> tf.Tensor:
    """Encoded PNG/JPEG bytes -> float32 image of `input_shape`, values in [0, 255]
    (`resize` False: of its own height and width, with the channels of `input_shape`)."""
    h, w, c = input_shape
    img = tf.cast(tf.io.decode_image(data, channels=c, expand_animations=False), tf.float32)
    if not resize:
        return tf.ensure_shape(img, (None, None, c))
    return tf.ensure_shape(tf.image.resize(img, (h, w)), (h, w, c))


def from_pixels(x: tf.Tensor, input_shape: tuple, scale: float, resize: bool = True) -> tf.Tensor:
    """An (H, W, C) pixel array -> float32 image of `input_shape`: times `scale` (to [0, 255];
    0 keeps the values), grey/RGB converted, resized when the sizes differ (and `resize`)."""
    h, w, c = input_shape
    img = tf.cast(x, tf.float32) * (scale or 1.0)
    if img.shape[-1] != c:
        img = tf.image.grayscale_to_rgb(img) if c == 3 else tf.image.rgb_to_grayscale(img)
    if not resize:
        return img
    if tuple(img.shape[:2]) != (h, w):
        img = tf.image.resize(img, (h, w))
    return tf.ensure_shape(img, (h, w, c))


def preprocessor(name: str) -> Callable[[tf.Tensor], tf.Tensor]:
    """`scale`: x / 255; `none`: x as it is; else keras.applications.<name>.preprocess_input
    (x in [0, 255])."""
    if name == "scale":
        return lambda x: x / 255.0
    if name == "none":
        return lambda x: x
    family = getattr(keras.applications, name, None)
    if family is None or not hasattr(family, "preprocess_input"):
        raise DistftError(f"--preprocess={name} is not a keras.applications family: use scale "
                          "or e.g. mobilenet_v2, resnet50, efficientnet")
    return family.preprocess_input


def augmenter(kinds: tuple, seed: int) -> Callable[[tf.Tensor, tf.Tensor], tf.Tensor]:
    """fn(image in [0, 255], record seed (2 int64)) -> randomly flipped, cropped, rotated and/or
    colour-jittered image; the same seed gives the same result."""
    def augment(img: tf.Tensor, record_seed: tf.Tensor) -> tf.Tensor:
        seeds = tf.random.experimental.stateless_split(record_seed + [seed, 0], 5)
        h, w, c = img.shape
        if "flip" in kinds:
            img = tf.image.stateless_random_flip_left_right(img, seeds[0])
        if "crop" in kinds:
            scale = tf.random.stateless_uniform([], seeds[1], 1.0, CROP)
            size = tf.cast(tf.math.ceil(scale * [h, w]), tf.int32)
            img = tf.image.stateless_random_crop(tf.image.resize(img, size), (h, w, c), seeds[2])
        if "rotate" in kinds:
            angle = tf.random.stateless_uniform([], seeds[3], -ROTATION, ROTATION)
            img = _rotate(img, angle)
        if "color" in kinds:
            img = tf.image.stateless_random_brightness(img, 0.1 * 255, seeds[4])
            img = tf.image.stateless_random_contrast(img, 0.8, 1.2, seeds[4] + 1)
            if c == 3:
                img = tf.image.stateless_random_saturation(img, 0.8, 1.2, seeds[4] + 2)
            img = tf.clip_by_value(img, 0.0, 255.0)
        return tf.ensure_shape(img, (h, w, c))

    return augment


def _rotate(img: tf.Tensor, angle: tf.Tensor) -> tf.Tensor:
    """Rotate about the centre (bilinear, edges filled with the nearest pixel)."""
    h, w = float(img.shape[0]), float(img.shape[1])
    cos, sin = tf.cos(angle), tf.sin(angle)
    # Output pixel (x, y) samples input (a0 x + a1 y + a2, b0 x + b1 y + b2).
    cx, cy = (w - 1) / 2, (h - 1) / 2
    transform = tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0])[None]
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=img[None], transforms=transform, output_shape=tf.constant([int(h), int(w)]),
        fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
    return out[0]

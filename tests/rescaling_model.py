"""A Keras-tutorial style model built by stock Keras alone (run as a script; no distft import):
Rescaling(1/255) first, pretrained on digits 0-4 as 32x32 RGB pixels in [0, 255].

Example:
    python tests/rescaling_model.py base.keras
"""
import os
import sys

import keras
import numpy as np

# The demo's digits, read as data (no distft import): 64 grey levels 0-16, then the label.
DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "distft", "assets", "digits.csv.gz")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(DIGITS, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)


def pixels(images: np.ndarray) -> np.ndarray:
    """8x8 digits in [0, 16] -> 32x32 RGB uint8 in [0, 255]."""
    big = np.repeat(np.repeat(images * (255 / 16), 4, axis=1), 4, axis=2)
    return np.repeat(big[..., None], 3, axis=-1).round().astype(np.uint8)


if __name__ == "__main__":
    keras.utils.set_random_seed(0)
    images, target = load_digits()
    low = target < 5
    L = keras.layers
    model = keras.Sequential([
        L.Input((32, 32, 3)),
        L.Rescaling(1 / 255, name="rescaling"),
        L.Conv2D(16, 3, activation="relu", name="conv1"),
        L.MaxPooling2D(name="pool1"),
        L.Conv2D(32, 3, activation="relu", name="conv2"),
        L.MaxPooling2D(name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(32, activation="relu", name="features"),
        L.Dense(5, activation="softmax", name="classes"),
    ], name="rescaling_cnn")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(pixels(images[low]).astype("float32"), target[low], epochs=10,
              batch_size=32, verbose=0)
    model.save(sys.argv[1])

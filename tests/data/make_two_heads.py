"""Write a two-input, two-output model and its data with stock Keras and numpy only (no distft):
an image + metadata model with a digit head (softmax over 5 classes) and a size head (linear),
pretrained a little on digits 0-4; then `train.npz`/`val.npz` of digits 5-9 with arrays named
as the model's inputs and outputs (image, meta; digit, size).

    python tests/data/make_two_heads.py OUT_DIR
"""
import os
import sys

import keras
import numpy as np

# The demo's digits, read as data (no distft import): 64 grey levels 0-16, then the label.
DIGITS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "distft", "assets",
                      "digits.csv.gz")


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(DIGITS, delimiter=",")
    return rows[:, :-1].reshape(-1, 8, 8), rows[:, -1].astype(np.int64)


def arrays(images, labels, rng):
    meta = np.stack([images.mean(axis=(1, 2)), images.std(axis=(1, 2)), rng.random(len(images))], 1)
    size = (images > 8).mean(axis=(1, 2))  # the share of inked pixels: a regression target
    return {"image": images[..., None].astype(np.uint8), "meta": meta.astype(np.float32),
            "digit": labels.astype(np.int64), "size": size.astype(np.float32)}


def main(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(0)
    images, labels = load_digits()
    images = (images * 255 / 16).astype(np.uint8)
    rng = np.random.default_rng(0)
    image = keras.Input((8, 8, 1), name="image")
    meta = keras.Input((3,), name="meta")
    x = keras.layers.Rescaling(1.0 / 255)(image)
    x = keras.layers.Conv2D(8, 3, activation="relu", name="conv")(x)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Concatenate()([x, keras.layers.Dense(4, activation="relu", name="meta_dense")(meta)])
    x = keras.layers.Dense(32, activation="relu", name="shared")(x)
    digit = keras.layers.Dense(5, activation="softmax", name="digit")(x)
    size = keras.layers.Dense(1, name="size")(x)
    model = keras.Model([image, meta], [digit, size])
    model.compile("adam", loss={"digit": "sparse_categorical_crossentropy", "size": "mse"})
    low = labels < 5
    base = arrays(images[low], labels[low], rng)
    model.fit({k: base[k] for k in ("image", "meta")}, {k: base[k] for k in ("digit", "size")},
              epochs=3, batch_size=32, verbose=0)
    model.save(os.path.join(out, "two_heads.keras"))
    high = arrays(images[~low], labels[~low] - 5, rng)
    n = len(high["digit"])
    cut = n * 4 // 5
    np.savez(os.path.join(out, "train.npz"), **{k: v[:cut] for k, v in high.items()})
    np.savez(os.path.join(out, "val.npz"), **{k: v[cut:] for k, v in high.items()})


if __name__ == "__main__":
    main(sys.argv[1])

"""A small transformer-block text classifier and token data, written by stock Keras 3 (this
script imports keras and numpy only, never distft): the LoRA test's and benchmark's inputs.

The model: Embedding -> MultiHeadAttention (+ residual, LayerNorm) -> Dense FFN (+ residual,
LayerNorm) -> average pooling -> 3-class softmax `classes`, pretrained for a few epochs on task A.
Each record is SEQ token ids; task A's label is the marker token among 1-3 that occurs most
often, task B's (the fine-tuning data, 4 classes) among 4-7.

Writes FOLDER/transformer.keras, FOLDER/train.npz and FOLDER/val.npz (x: token ids, y: labels).

Example:
    python tests/data/make_transformer.py /tmp/lora --records=2048
"""
import argparse
import os

import keras
import numpy as np

SEQ, VOCAB, WIDTH = 16, 64, 32
FIRST_PLAIN = 8  # tokens below are markers


def tokens(rng: np.random.Generator, n: int, markers: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """`n` records of plain tokens in which the label's marker occurs 3 times and two other
    markers once each."""
    x = rng.integers(FIRST_PLAIN, VOCAB, (n, SEQ))
    y = rng.integers(0, len(markers), n)
    for i in range(n):
        others = rng.choice([m for j, m in enumerate(markers) if j != y[i]], 2)
        places = rng.choice(SEQ, 5, replace=False)
        x[i, places] = [markers[y[i]]] * 3 + list(others)
    return x, y


def build() -> keras.Model:
    inputs = keras.Input((SEQ,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, WIDTH, name="embed")(inputs)
    attended = keras.layers.MultiHeadAttention(2, WIDTH // 2, name="attention")(x, x)
    x = keras.layers.LayerNormalization(name="norm_1")(keras.layers.Add()([x, attended]))
    ffn = keras.layers.Dense(2 * WIDTH, activation="relu", name="ffn_1")(x)
    ffn = keras.layers.Dense(WIDTH, name="ffn_2")(ffn)
    x = keras.layers.LayerNormalization(name="norm_2")(keras.layers.Add()([x, ffn]))
    x = keras.layers.GlobalAveragePooling1D(name="pool")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="classes")(x))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("folder")
    p.add_argument("--records", type=int, default=2048, help="task B training records")
    args = p.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    model = build()
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(*tokens(rng, 2048, [1, 2, 3]), epochs=3, batch_size=64, verbose=0)
    model.save(os.path.join(args.folder, "transformer.keras"))
    for name, n in (("train", args.records), ("val", max(256, args.records // 4))):
        x, y = tokens(rng, n, [4, 5, 6, 7])
        np.savez(os.path.join(args.folder, f"{name}.npz"), x=x, y=y)


if __name__ == "__main__":
    main()

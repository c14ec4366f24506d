"""Write the model files and data of tests/test_custom_objects.py with stock Keras, in a process
that does not import distft (as a user's own script would).

    python tests/custom_models.py FOLDER   # mymod.py, custom.keras (uses mymod>Scale), a Keras Hub model and its data
"""
import os
import sys

import numpy as np

MYMOD = '''"""A user's module with a registered custom layer."""
import keras


@keras.saving.register_keras_serializable(package="mymod")
class Scale(keras.layers.Layer):
    def __init__(self, factor=1.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
'''


def write(folder: str) -> None:
    """mymod.py; custom.keras, a classifier of 8 numbers through mymod.Scale, and its
    numbers_train.npz and numbers_val.npz (the class: whether the first number is positive); with keras_hub
    installed also hub_classifier.keras, a tiny BertTextClassifier (random weights, no
    preprocessor, softmax output `logits`) and its train.npz and val.npz: token_ids (0 after
    each record's length), segment_ids, a bool padding_mask, and `logits`, the class: whether
    the first token is below 50."""
    with open(os.path.join(folder, "mymod.py"), "w") as f:
        f.write(MYMOD)
    sys.path.insert(0, folder)
    import keras
    import mymod

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(4, name="hidden")(mymod.Scale(0.5, name="scale")(inputs))
    keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="out")(x)).save(
        os.path.join(folder, "custom.keras"))
    rng = np.random.default_rng(0)
    for name, n in (("numbers_train", 512), ("numbers_val", 128)):
        x = rng.normal(size=(n, 8)).astype("float32")
        np.savez(os.path.join(folder, f"{name}.npz"), x=x, y=(x[:, 0] > 0).astype("int64"))
    try:
        import keras_hub
    except ImportError:  # Python 3.10, or an environment without the hub extra
        return
    backbone = keras_hub.models.BertBackbone(vocabulary_size=100, num_layers=1, num_heads=2,
                                             hidden_dim=16, intermediate_dim=32,
                                             max_sequence_length=16)
    keras_hub.models.BertTextClassifier(backbone, num_classes=2, preprocessor=None,
                                        activation="softmax").save(
        os.path.join(folder, "hub_classifier.keras"))
    rng = np.random.default_rng(0)
    for name, n in (("train", 256), ("val", 128)):
        ids = rng.integers(1, 100, size=(n, 16)).astype("int32")
        ids[np.arange(16) >= rng.integers(8, 17, size=(n, 1))] = 0
        np.savez(os.path.join(folder, f"{name}.npz"), token_ids=ids, segment_ids=0 * ids,
                 padding_mask=ids > 0, logits=(ids[:, 0] < 50).astype("int64"))


if __name__ == "__main__":
    write(sys.argv[1])

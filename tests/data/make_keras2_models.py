"""Write the Keras 2 model files the tests load (run once, with TensorFlow 2.15 / tf.keras 2.15).

    python3.11 -m venv /tmp/tf215 && /tmp/tf215/bin/pip install tensorflow==2.15.1
    /tmp/tf215/bin/python tests/data/make_keras2_models.py

Both files hold the same small functional CNN (its conv layers in a nested Sequential) for 8x8x1 inputs (the demo's digits), ending in a 5-class
softmax: `keras2_cnn.h5` (legacy HDF5) and `keras2_cnn.keras` (the Keras 2.15 zip format, which
Keras 3 cannot deserialize). `keras2_cnn.json` records the weight sum of each layer.
"""
import json
import os

import numpy as np
import tensorflow as tf

assert tf.__version__.startswith("2.15"), "run this with TensorFlow 2.15 (tf.keras 2.x)"
here = os.path.dirname(os.path.abspath(__file__))
tf.keras.utils.set_random_seed(0)
L = tf.keras.layers
# Functional, with a nested Sequential backbone, as keras.applications models are used.
backbone = tf.keras.Sequential([
    L.Input((8, 8, 1)),
    L.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
    L.BatchNormalization(name="bn1"),
    L.Conv2D(8, 3, padding="same", activation="relu", name="conv2"),
], name="backbone")
pixels = L.Input((8, 8, 1), name="pixels")
x = L.Flatten(name="flatten")(backbone(pixels))
x = L.Dense(16, activation="relu", name="features")(x)
model = tf.keras.Model(pixels, L.Dense(5, activation="softmax", name="classes")(x), name="keras2_cnn")
model.save(os.path.join(here, "keras2_cnn.h5"))
model.save(os.path.join(here, "keras2_cnn.keras"))
layers = [*backbone.layers, *model.layers[2:]]
sums = {l.name: float(sum(np.sum(w, dtype=np.float64) for w in l.get_weights()))
        for l in layers if l.weights}
with open(os.path.join(here, "keras2_cnn.json"), "w") as f:
    json.dump({"written_by": f"tf.keras (TensorFlow {tf.__version__})", "weight_sums": sums}, f, indent=1)
print("wrote keras2_cnn.h5, keras2_cnn.keras, keras2_cnn.json with TensorFlow", tf.__version__)

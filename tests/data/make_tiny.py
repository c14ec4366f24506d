"""Write the tiny model behind tests/data/v1-run with stock Keras only (no distft): 8x8x1
images, a Dense layer of 16 and a 5-class softmax head.

tests/data/v1-run/checkpoints/epoch-0002 is a checkpoint written by distft before RunState
(commit cc2d2d7, state.json without a version): this model fine-tuned on the demo's shards by
`distft train --model=tiny.keras --data='shards/train-*.tfrecord' --num_classes=5
--unfreeze=all --batch_size=2 --epochs=3 --np=2`, stopped by SIGTERM at epoch 3 step 120 of 179.

    python tests/data/make_tiny.py OUT.keras
"""
import sys

import keras

keras.utils.set_random_seed(0)
inputs = keras.Input((8, 8, 1), name="image")
x = keras.layers.Flatten(name="flat")(inputs)
x = keras.layers.Dense(16, activation="relu", name="features")(x)
outputs = keras.layers.Dense(5, activation="softmax", name="digits")(x)
keras.Model(inputs, outputs, name="tiny").save(sys.argv[1])

"""A Keras Hub image classifier saved with its preprocessor, by stock keras_hub alone (run as a
script; no distft import): a tiny ResNet (random weights) whose ImageClassifierPreprocessor
resizes images to 16x16 and scales them by 1/255; and stock keras_hub's predictions of a
saved one on the raw images of an image folder.

Example:
    python tests/hub_image_model.py write hub.keras
    python tests/hub_image_model.py predict val/ run/model.keras probabilities.npy [MODEL OUT ...]
"""
import os
import sys

import keras
import keras_hub
import numpy as np
import tensorflow as tf


def classifier() -> keras.Model:
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
        stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block",
        use_pre_activation=False, image_shape=(16, 16, 3))
    converter = keras_hub.layers.ResNetImageConverter(image_size=(16, 16), scale=1 / 255)
    preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(image_converter=converter)
    model = keras_hub.models.ImageClassifier(backbone=backbone, num_classes=5, preprocessor=preprocessor)
    model.compile()
    return model


def folder_images(folder: str) -> np.ndarray:
    """The RGB images of a folder of class subfolders, in sorted order (as distft reads them)."""
    paths = [os.path.join(folder, c, f) for c in sorted(os.listdir(folder))
             for f in sorted(os.listdir(os.path.join(folder, c)))]
    return np.stack([tf.io.decode_png(tf.io.read_file(p), channels=3).numpy() for p in paths])


if __name__ == "__main__":
    if sys.argv[1] == "write":
        classifier().save(sys.argv[2])
    else:
        images = folder_images(sys.argv[2])
        for path, out in zip(sys.argv[3::2], sys.argv[4::2]):
            model = keras.saving.load_model(path)
            assert type(model).__name__ == "ImageClassifier", model
            assert type(model.preprocessor).__name__ == "ResNetImageClassifierPreprocessor", model.preprocessor
            np.save(out, model.predict(images, verbose=0))  # its preprocessor runs

"""The names `--preprocess` takes: distft's own feeds and the keras.applications families whose
`preprocess_input` it applies (model/preprocessing.py). No TensorFlow here: options are
checked before it loads.

Example:
    "mobilenet_v2" in PREPROCESSING   # True
"""
PREPROCESSING = ("auto", "scale", "none", "convnext", "densenet", "efficientnet", "efficientnet_v2",
                 "inception_resnet_v2", "inception_v3", "mobilenet", "mobilenet_v2", "mobilenet_v3",
                 "nasnet", "regnet", "resnet", "resnet50", "resnet_rs", "resnet_v2", "vgg16", "vgg19",
                 "xception")

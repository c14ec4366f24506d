"""distft: fine-tune Keras models on Horovod workers over sharded data.

Example:
    import distft
    distft.train(model="base_model.h5", data="shards/", output_dir="runs/a",
                 num_classes=5, unfreeze="last:2", np=2)
"""
# The subpackages distft.train and distft.doctor first: loading one later (the trainer, the
# doctor's probe do) would rebind the package attribute `distft.train` (`distft.doctor`) from
# the function to the subpackage.
import distft.doctor  # noqa: F401  isort: skip
import distft.train  # noqa: F401  isort: skip
from distft.api import doctor, evaluate, generate, inspect, predict, shard, train
from distft.config import TrainConfig
from distft.errors import DistftError

__version__ = "0.1.0"
__all__ = ["train", "evaluate", "predict", "generate", "inspect", "shard", "doctor", "TrainConfig",
           "DistftError", "__version__"]

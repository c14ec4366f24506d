"""One readable log: rank 0 speaks, other ranks only warn (rank-prefixed); TF kept quiet.

Call `quiet_tensorflow()` before TensorFlow is imported, then `setup(rank, size)`.

Example:
    from distft import log
    log.setup(rank=0, size=2)
    log.info("trainable weights: %d", 1234)
"""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import warnings
from typing import Iterator

logger = logging.getLogger("distft")
_debug = False  # setup's, kept for a rank change (elastic mode)


def quiet_tensorflow(debug: bool = False) -> None:
    """Silence TensorFlow's C++ and Python chatter (and absl's) unless debugging."""
    if debug:
        return
    # Level 3: TF 2.15 logs CUDA plugin registration clashes as errors at every import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("AUTOGRAPH_VERBOSITY", "0")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*HDF5 file via `model.save\(\)`.*")
    for name in ("tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def import_tensorflow(debug: bool = False) -> None:
    """Import TensorFlow now, its C++ start-up lines (printed before TensorFlow sets up its
    logging, so TF_CPP_MIN_LOG_LEVEL does not reach them: 'oneDNN custom operations are on',
    twice per process) sent to /dev/null. Errors still surface as Python exceptions."""
    if "tensorflow" in sys.modules:
        return
    with _collector_spared():
        if debug:
            _import_without_matplotlib()
            return
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
        sys.stderr.flush()
        os.dup2(devnull, 2)
        try:
            _import_without_matplotlib()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


@contextlib.contextmanager
def _collector_spared() -> Iterator[None]:
    """Python's cyclic garbage collector paused while TensorFlow and Keras load, then one
    collection and `gc.freeze()`: their million-odd objects live as long as the process, and
    every full collection would scan them again (during the import alone ~650 collections, a
    tenth of a worker's start)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.collect()
        gc.freeze()


def _import_without_matplotlib() -> None:
    """Import TensorFlow and Keras with matplotlib hidden: Keras imports it for its plotting
    helpers when it is installed, ~0.6 CPU-s of a worker's ~4 s start. Those helpers
    (keras.visualization) then say matplotlib is missing; `import matplotlib` itself works."""
    hide = "matplotlib" not in sys.modules
    if hide:
        sys.modules["matplotlib"] = None  # type: ignore[assignment]  # import fails fast
    try:
        import keras  # noqa: F401
        import tensorflow  # noqa: F401
    finally:
        if hide:
            del sys.modules["matplotlib"]


def setup(rank: int = 0, size: int = 1, debug: bool = False) -> None:
    """Rank 0 logs INFO; other ranks log WARNING and up (INFO with --debug)."""
    global _debug
    _debug = debug
    prefix = f"[rank {rank}] " if size > 1 and rank != 0 else ""
    handler = logging.StreamHandler(sys.stdout if rank == 0 else sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s distft {prefix}%(message)s", "%H:%M:%S"))
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO if rank == 0 or debug else logging.WARNING)
    if not debug:
        import absl.logging  # installed with TensorFlow

        absl.logging.set_verbosity(absl.logging.ERROR)
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def rank_changed(rank: int, size: int) -> None:
    """Set up again for a new rank and size, as debugging or not as before."""
    setup(rank, size, _debug)


def info(msg: str, *args: object) -> None:
    logger.info(msg, *args)


def warning(msg: str, *args: object) -> None:
    logger.warning(msg, *args)

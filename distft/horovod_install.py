"""Horovod for distft: one line when it is missing, and one command that builds it here.

Horovod 0.28.1, its last release, ships only as source and always compiles xla_mpi_ops.cc,
which includes XLA headers that TensorFlow's wheels no longer ship since 2.19: a plain
`pip install horovod` fails there. `install()` builds it from the source release with that one
file left out, against the TensorFlow already in this environment, keeps the wheel for the next
install (per Python, TensorFlow and build), and checks what the result has built in.

Example:
    distft install-horovod          # TensorFlow ops with Gloo, and MPI when Open MPI is installed
    distft install-horovod --gpu    # also NCCL: needs CUDA's nvcc and headers, and nccl.h

    from distft import horovod_install
    hvd = horovod_install.load()    # horovod.tensorflow, or one line naming the command
"""
from __future__ import annotations

import glob
import importlib.machinery
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
from typing import Optional

from distft import log
from distft.errors import DistftError

HOROVOD_VERSION = "0.28.1"
COMMAND = "distft install-horovod"
# Horovod's build switches for distft; MPI and NCCL are added when found or asked for.
BUILD_FLAGS = {"HOROVOD_WITH_TENSORFLOW": "1", "HOROVOD_WITHOUT_PYTORCH": "1",
               "HOROVOD_WITHOUT_MXNET": "1", "HOROVOD_WITH_GLOO": "1"}
LEFT_OUT = "xla_mpi_ops.cc"  # Horovod's XLA ops: GPU only, off unless HOROVOD_ENABLE_XLA_OPS=1


def problem() -> Optional[str]:
    """Why this Python cannot run Horovod's TensorFlow ops, as one line naming the fix; None
    when it can. Cheap: imports neither TensorFlow nor Horovod's TensorFlow ops."""
    try:
        import horovod
    except ImportError:
        return f"Horovod is not installed in {sys.executable}: run '{COMMAND}'"
    if ops_library() is None:
        return (f"Horovod {horovod.__version__} in {sys.executable} was built without TensorFlow: "
                f"run '{COMMAND}'")
    return None


def ops_library() -> Optional[str]:
    """The path of Horovod's TensorFlow ops library (its `mpi_lib` extension), or None."""
    import horovod

    ops = os.path.join(os.path.dirname(horovod.__file__), "tensorflow", "mpi_lib")
    found = [ops + s for s in importlib.machinery.EXTENSION_SUFFIXES if os.path.exists(ops + s)]
    return found[0] if found else None


def require() -> None:
    """Raise `problem()` as a DistftError, if there is one."""
    found = problem()
    if found:
        raise DistftError(found)


def load():
    """`horovod.tensorflow`, or a one-line DistftError naming the command that fixes it."""
    require()
    import tensorflow as tf

    try:
        import horovod.tensorflow as hvd
    except (ImportError, tf.errors.NotFoundError) as e:
        reason = str(e).strip().splitlines()[0][:200]
        raise DistftError(f"Horovod in {sys.executable} does not load with TensorFlow "
                          f"{tf.__version__} ({reason}): it was built against another TensorFlow; "
                          f"run '{COMMAND} --rebuild'") from None
    return hvd


def horovodrun() -> str:
    """This environment's `horovodrun` (beside the Python running distft), else the one on PATH."""
    launcher = os.path.join(os.path.dirname(sys.executable), "horovodrun")
    return launcher if os.path.exists(launcher) else shutil.which("horovodrun") or "horovodrun"


def install(gpu: Optional[bool] = None, rebuild: bool = False) -> None:
    """Install Horovod, built with TensorFlow against this environment's TensorFlow, into this
    environment (`sys.executable`), then check what it has built in.

    `gpu`: also NCCL (default: when HOROVOD_GPU_OPERATIONS=NCCL is set, or TensorFlow is built
    with CUDA and nvcc is found). MPI is built in when Open MPI's `mpicxx` is on PATH.
    `rebuild`: build again even if a wheel for this Python and TensorFlow was kept.
    """
    tf = _tensorflow()
    log.setup()
    env = dict(os.environ, **BUILD_FLAGS)
    mpi = bool(shutil.which("mpicxx") or shutil.which("mpicc"))
    if mpi:
        env["HOROVOD_WITH_MPI"] = "1"
    else:
        env["HOROVOD_WITHOUT_MPI"] = "1"
        log.info("Open MPI not found (no mpicxx on PATH): Horovod gets Gloo only (distft's "
                 "default --controller=gloo); for --controller=mpi or srun --mpi=pmix install "
                 "Open MPI (apt-get install libopenmpi-dev openmpi-bin, or module load openmpi) "
                 "and run '%s --rebuild'", COMMAND)
    gpu = _gpu(gpu, tf, env)
    parts = ["TensorFlow", "Gloo", *(["MPI"] if mpi else []), *(["NCCL"] if gpu else [])]
    if not rebuild and not problem() and not _check_build(parts)[1]:
        log.info("Horovod %s with %s is already installed in %s", _installed(), ", ".join(parts),
                 sys.executable)
        return
    folder = os.path.join(_wheel_cache(), f"py{sys.version_info[0]}{sys.version_info[1]}-"
                          f"tf{tf.__version__}-{'NCCL' if gpu else 'cpu'}{'' if mpi else '-nompi'}")
    kept = sorted(glob.glob(os.path.join(folder, f"horovod-{HOROVOD_VERSION}-*.whl")))
    if kept and not rebuild:
        wheel = kept[-1]
        log.info("installing Horovod %s from %s (built here before)", HOROVOD_VERSION, wheel)
    else:
        _check_tools(env)
        log.info("building Horovod %s against TensorFlow %s with %s (a few minutes: about 4 on "
                 "2 cores)", HOROVOD_VERSION, tf.__version__, ", ".join(parts))
        wheel = _build(env, folder)
    # Over a Horovod already here (built without TensorFlow, or for another TensorFlow): replace
    # it alone; otherwise pip brings its few pure-Python dependencies too.
    _pip("install", wheel, *(["--force-reinstall", "--no-deps"] if _installed() else []),
         fix="pip could not install the wheel; see its message above")
    report, missing = _check_build(parts)
    log.info("%s", report)
    if missing:
        raise DistftError(f"Horovod lacks {', '.join(missing)} ({report}): "
                          f"run '{COMMAND} --rebuild'")
    log.info("Horovod %s is ready in %s: try 'distft demo'", HOROVOD_VERSION, sys.executable)


def _tensorflow():
    """This environment's TensorFlow module, or a DistftError saying how to install it."""
    try:
        log.import_tensorflow()
        import tensorflow as tf
    except ImportError as e:
        raise DistftError(f"TensorFlow does not import in {sys.executable} ({e}): Horovod is built "
                          "against it, so install it first (pip install tensorflow-cpu==2.21.0, "
                          "or 'tensorflow[and-cuda]==2.21.0' on GPU machines, or module load "
                          "tensorflow) and run this again") from None
    return tf


def _gpu(gpu: Optional[bool], tf, env: dict) -> bool:
    """Whether to build NCCL in; when so, set Horovod's GPU variables in `env` after checking
    that nvcc and nccl.h are there."""
    cuda = tf.test.is_built_with_cuda()
    nvcc = shutil.which("nvcc")
    if gpu is None:
        gpu = os.environ.get("HOROVOD_GPU_OPERATIONS") == "NCCL" or bool(cuda and nvcc)
        if cuda and not gpu:
            log.info("TensorFlow is built with CUDA but nvcc is not on PATH: building for CPU "
                     "only (pass --gpu to require NCCL)")
    if not gpu:
        env.pop("HOROVOD_GPU_OPERATIONS", None)
        return False
    if not cuda:
        raise DistftError(f"--gpu: TensorFlow {tf.__version__} here is built without CUDA "
                          "(tensorflow-cpu?): install 'tensorflow[and-cuda]==2.21.0' or a GPU "
                          "build of TensorFlow first")
    if not nvcc:
        raise DistftError("--gpu: nvcc is not on PATH: load the CUDA toolkit of TensorFlow's CUDA "
                          f"{tf.sysconfig.get_build_info().get('cuda_version', '')} (module load "
                          "cuda, or add its bin folder to PATH)")
    cuda_home = (os.environ.get("HOROVOD_CUDA_HOME")
                 or os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    nccl_home = os.environ.get("HOROVOD_NCCL_HOME") or os.environ.get("NCCL_HOME", "")
    headers = [os.environ.get("HOROVOD_NCCL_INCLUDE", ""), os.path.join(nccl_home, "include"),
               os.path.join(cuda_home, "include"), "/usr/include", "/usr/local/include"]
    if not any(d and os.path.exists(os.path.join(d, "nccl.h")) for d in headers):
        raise DistftError("--gpu: nccl.h (NCCL's development files) not found: apt-get install "
                          "libnccl-dev, or module load nccl and set HOROVOD_NCCL_HOME to the "
                          "folder holding include/nccl.h and lib/libnccl.so")
    env.update(HOROVOD_GPU_OPERATIONS="NCCL", HOROVOD_CUDA_HOME=cuda_home)
    if nccl_home:
        env["HOROVOD_NCCL_HOME"] = nccl_home
    return True


def _check_tools(env: dict) -> None:
    """The build's tools (cmake, make, a C++ compiler; setuptools and wheel in this
    environment), each missing one as a DistftError naming its fix."""
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")  # pip's cmake
    tools = [("cmake", "pip install cmake (or apt-get install cmake, or module load cmake)"),
             ("make", "apt-get install make"),
             (env.get("CXX", "g++"), "apt-get install g++ (or module load gcc)")]
    for tool, fix in tools:
        if not shutil.which(tool, path=env["PATH"]):
            raise DistftError(f"{tool} is not on PATH (Horovod's build needs it): {fix}")
    from packaging.version import Version  # TensorFlow's dependency

    setuptools = _installed("setuptools")
    if not setuptools:
        raise DistftError(f"setuptools is not installed in {sys.executable} (Horovod's build needs "
                          "it): pip install 'setuptools<81' wheel")
    # setuptools builds wheels itself only since 70.1; before, with the `wheel` package.
    if Version(setuptools) < Version("70.1") and not _installed("wheel"):
        raise DistftError(f"wheel is not installed in {sys.executable} (setuptools {setuptools} "
                          "needs it to build Horovod): pip install wheel")


def _build(env: dict, folder: str) -> str:
    """Build Horovod's wheel from its source release without xla_mpi_ops.cc; return it, moved
    into `folder`."""
    with tempfile.TemporaryDirectory(prefix="distft-horovod-") as src:
        _pip("download", "--no-deps", "--no-binary", ":all:", "-d", src,
             f"horovod=={HOROVOD_VERSION}", fix="check that PyPI (or your pip index) is reachable")
        subprocess.run(["tar", "-xzf", os.path.join(src, f"horovod-{HOROVOD_VERSION}.tar.gz"),
                        "-C", src], check=True)
        tree = os.path.join(src, f"horovod-{HOROVOD_VERSION}")
        leave_out_xla_ops(os.path.join(tree, "horovod", "tensorflow", "CMakeLists.txt"))
        # No build isolation: the build must see this environment's TensorFlow.
        _pip("wheel", "--no-build-isolation", "--no-deps", "-w", os.path.join(src, "wheel"), tree,
             env=env, fix="Horovod's build failed (its output is above); check the "
                          "prerequisites in docs/install.md's 'Your own environment' section")
        os.makedirs(folder, exist_ok=True)
        built = glob.glob(os.path.join(src, "wheel", "horovod-*.whl"))[0]
        return shutil.move(built, os.path.join(folder, os.path.basename(built)))


def leave_out_xla_ops(cmakelists: str) -> None:
    """Delete the line of Horovod's horovod/tensorflow/CMakeLists.txt that compiles
    xla_mpi_ops.cc (as `sed -i '/xla_mpi_ops.cc/d'`): TensorFlow >= 2.19 wheels lack the XLA
    headers it includes, and nothing else changes."""
    with open(cmakelists) as f:
        lines = f.readlines()
    kept = [line for line in lines if LEFT_OUT not in line]
    if len(lines) - len(kept) != 1:
        raise DistftError(f"{cmakelists} names {LEFT_OUT} on {len(lines) - len(kept)} lines, not "
                          f"1: this is not Horovod {HOROVOD_VERSION}'s source release")
    with open(cmakelists, "w") as f:
        f.writelines(kept)


def _check_build(parts: list[str]) -> tuple[str, list[str]]:
    """What Horovod in this environment has built in (as `horovodrun --check-build` says, in one
    process instead of one per framework), and which of `parts` it lacks."""
    probe = ("import json, horovod.tensorflow as h; print(json.dumps({'TensorFlow': True, "
             "'Gloo': h.gloo_built(), 'MPI': h.mpi_built(), 'NCCL': h.nccl_built()}))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if done.returncode or not os.path.exists(horovodrun()):
        reason = (done.stderr.strip().splitlines() or [f"no {horovodrun()}"])[-1]
        return f"Horovod does not load: {reason}", parts
    built = json.loads(done.stdout.strip().splitlines()[-1])
    report = ", ".join(f"[{'X' if built[p] else ' '}] {p}" for p in built)
    return f"Horovod {_installed()}: {report}", [p for p in parts if not built[p]]


def _installed(name: str = "horovod") -> Optional[str]:
    """The version of package `name` installed in this environment, or None."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def cache_dir() -> str:
    """distft's cache folder: $XDG_CACHE_HOME/distft, else ~/.cache/distft."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "distft")


def _wheel_cache() -> str:
    """Where built Horovod wheels are kept: $DISTFT_WHEEL_CACHE, else ~/.cache/distft/wheels."""
    return os.environ.get("DISTFT_WHEEL_CACHE") or os.path.join(cache_dir(), "wheels")


def _pip(*args: str, fix: str, env: Optional[dict] = None) -> None:
    """Run pip in this environment; a failure becomes a DistftError ending in `fix`."""
    done = subprocess.run([sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"],
                          env=env)
    if done.returncode:
        raise DistftError(f"pip {args[0]} failed (exit code {done.returncode}): {fix}")

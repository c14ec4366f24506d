#!/usr/bin/env bash
# Set up distft in ./.venv: system packages, TensorFlow (Keras 3), distft[dev], Horovod (MPI + Gloo).
# Re-running is quick: each step is skipped when already done.
#
# Environment:
#   PYTHON                   interpreter to build the venv from (default: python3; 3.10-3.13)
#   DISTFT_TF                TensorFlow requirement (default: tensorflow-cpu==2.21.0;
#                            use 'tensorflow[and-cuda]==2.21.0' on GPU machines)
#   HOROVOD_GPU_OPERATIONS   set to NCCL on GPU machines to build Horovod with NCCL
#   DISTFT_WHEEL_CACHE       where built Horovod wheels are kept (default ~/.cache/distft/wheels)
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TF_REQ=${DISTFT_TF:-tensorflow-cpu==2.21.0}
HUB_REQ=keras-hub==0.32.0  # the version tested; its extra in pyproject.toml is keras-hub>=0.32
VENV=.venv

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

# A pyenv shim for a version that is installed but not selected (python3.12 with pyenv's global
# 3.11): use that version's interpreter directly.
if ! "$PYTHON" --version >/dev/null 2>&1 && command -v pyenv >/dev/null && [[ $PYTHON =~ ^python(3\.[0-9]+)$ ]]; then
  version=$(pyenv versions --bare | grep -E "^${BASH_REMATCH[1]}(\.|$)" | sort -V | tail -1)
  [[ -n $version ]] && PYTHON=$(pyenv root)/versions/$version/bin/$PYTHON
fi
"$PYTHON" --version >/dev/null 2>&1 || die "'$PYTHON' not found; install Python 3.10-3.13 or set PYTHON=/path/to/python3.12"
"$PYTHON" - <<'PY' || die "Python 3.10-3.13 is required (TensorFlow 2.21 supports no other); set PYTHON=/path/to/python3.12"
import sys
sys.exit(0 if (3, 10) <= sys.version_info[:2] <= (3, 13) else 1)
PY

APT_PKGS=(cmake g++ make libopenmpi-dev openmpi-bin)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    die "missing system packages; run: sudo apt-get install -y ${missing[*]}"
  fi
fi

if [[ -x $VENV/bin/python ]] && ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  die "$VENV was made by an older Python (the Keras 2 stack); remove it (rm -rf $VENV) and run again"
fi
if [[ ! -x $VENV/bin/python ]]; then
  say "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
unwarned() {  # a command, without the warnings some machines' pip.conf causes for each package
  "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
pip_install() { unwarned "${PIP[@]}" "$@"; }
# Horovod's build needs setuptools and (for setuptools < 70.1, as Python 3.11's venv has) wheel.
pip_install "setuptools<81" wheel

if ! "$VENV/bin/python" -c "import keras, tensorflow; assert keras.__version__ >= '3'" 2>/dev/null; then
  say "installing $TF_REQ"
  pip_install "$TF_REQ"
fi

say "installing distft (editable, with dev extras)"
pip_install -e ".[dev]"
pip_install -e ".[profile]"  # TensorBoard's Profile tab (distft train --profile)
# ml_dtypes 0.7.0, which TensorFlow 2.21 takes (>= 0.5.1), spends ~0.5 CPU-s in its own import,
# in every worker; 0.6.0 does not (python -m benchmarks launch). Not a dependency of distft's:
# `pip install distft` changes no package already installed (docs/install.md suggests it).
pip_install "ml_dtypes>=0.5.1,<0.7"
# tf-keras (Keras 2 on this TensorFlow) for the benchmark's MultiWorkerMirroredStrategy contender,
# without its dependencies: it requires the 'tensorflow' package, which pip would install over
# tensorflow-cpu (the same files), breaking TensorFlow.
pip_install --no-deps "tf-keras==${TF_REQ##*==}"
# Keras Hub (the 'hub' extra), and tensorflow-text for its tokenizers (text in), without the
# 'tensorflow' package that both require: pip would install it over tensorflow-cpu (the same
# files, and the same version as tensorflow-text's .so files are built for), breaking TensorFlow.
# tensorflow-text's ops load against tensorflow-cpu's libtensorflow_framework. Python 3.11+ only.
TEXT_REQ="tensorflow-text~=${TF_REQ##*==}"  # the release built for this TensorFlow (2.21.1 for 2.21.0)
if "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  if ! "$VENV/bin/python" -c "import keras_hub, tensorflow_text" 2>/dev/null; then
    say "installing $HUB_REQ and $TEXT_REQ (without the 'tensorflow' package)"
    pip_install --no-deps "$HUB_REQ" "$TEXT_REQ"
    mapfile -t hub_deps < <("$VENV/bin/python" - <<'PY'
from importlib.metadata import requires
from packaging.requirements import Requirement
for r in map(Requirement, requires("keras-hub")):
    if r.name != "tensorflow-text" and (r.marker is None or r.marker.evaluate({"extra": ""})):
        print(f"{r.name}{r.specifier}")
PY
)
    pip_install --no-warn-conflicts "${hub_deps[@]}"
  fi
else
  say "Keras Hub needs Python 3.11 or newer: skipped (Keras Hub models will not load)"
fi

# Horovod, built against that TensorFlow by distft's own command (docs/install.md's way for any
# environment): the wheel is kept in ~/.cache/distft/wheels per Python and TensorFlow, so a
# second set-up on this machine (another clone, CI) installs it in seconds instead of compiling.
unwarned "$VENV/bin/distft" install-horovod
# distft's own bytecode, written once: where PYTHONDONTWRITEBYTECODE is set (some CI images),
# each worker would otherwise compile distft's modules again (~0.1 CPU-s a process).
"$VENV/bin/python" -m compileall -q distft tests benchmarks
say "ready: source $VENV/bin/activate"

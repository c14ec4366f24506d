#!/usr/bin/env bash
# Set up distft in ./.venv: system packages, TensorFlow, Horovod (MPI + Gloo), distft[dev].
# Re-running is quick: each step is skipped when already done.
#
# Environment:
#   PYTHON                   interpreter to build the venv from (default: python3)
#   DISTFT_TF                TensorFlow requirement (default: tensorflow==2.15.1;
#                            use 'tensorflow[and-cuda]==2.15.1' on GPU machines)
#   HOROVOD_GPU_OPERATIONS   set to NCCL on GPU machines to build Horovod with NCCL
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TF_REQ=${DISTFT_TF:-tensorflow==2.15.1}
HVD_REQ=horovod==0.28.1
VENV=.venv

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null || die "'$PYTHON' not found; install Python 3.11 or set PYTHON=/path/to/python3.11"
"$PYTHON" - <<'PY' || die "Python 3.9-3.11 is required (TensorFlow 2.15 supports no other); set PYTHON=/path/to/python3.11"
import sys
sys.exit(0 if (3, 9) <= sys.version_info[:2] <= (3, 11) else 1)
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

if [[ ! -x $VENV/bin/python ]]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
pip_install() {  # pip, without the warnings some machines' pip.conf causes for each package
  "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}
# tensorboard 2.15 imports pkg_resources, which setuptools>=81 no longer ships.
pip_install "setuptools<81" wheel

if ! "$VENV/bin/python" -c "import tensorflow" 2>/dev/null; then
  say "installing $TF_REQ"
  pip_install "$TF_REQ"
fi

if ! "$VENV/bin/python" -c "import horovod.tensorflow.keras" 2>/dev/null; then
  say "building $HVD_REQ against TensorFlow (MPI + Gloo; a few minutes the first time)"
  HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 \
  HOROVOD_WITH_GLOO=1 HOROVOD_WITH_MPI=1 \
    pip_install --no-build-isolation "$HVD_REQ"
fi

say "installing distft (editable, with dev extras)"
pip_install -e ".[dev]"

check=$(TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/horovodrun" --check-build 2>/dev/null)
parts=(TensorFlow MPI Gloo)
[[ ${HOROVOD_GPU_OPERATIONS:-} == NCCL ]] && parts+=(NCCL)
for part in "${parts[@]}"; do
  grep -q "\[X\] $part" <<<"$check" \
    || die "Horovod lacks $part support: see '$VENV/bin/horovodrun --check-build'"
done
say "ready: source $VENV/bin/activate"

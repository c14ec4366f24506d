"""distft in the user's own environment. Without Horovod, each command that needs it stops with
one line naming `distft install-horovod`, and the others work. A fresh virtual environment with
TensorFlow 2.21 already in it takes `pip install` of distft (nothing already there changes),
then `distft install-horovod`, then runs the demo."""
import importlib.metadata
import os
import re
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from conftest import run
from distft.errors import DistftError
from distft.horovod_install import leave_out_xla_ops
from test_cli_errors import one_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def missing_line(python: str) -> str:
    return f"Horovod is not installed in {python}: run 'distft install-horovod'"


def test_without_horovod_commands_that_need_it_say_so_and_the_others_work(tmp_path):
    # `import horovod` fails as it does where Horovod is not installed.
    shim = tmp_path / "hidden" / "horovod"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'horovod'\")\n")
    np.savez(tmp_path / "d.npz", x=np.zeros((20, 6), np.float32), y=np.arange(20) % 5)
    train = ["train", "--model=m.keras", "--data=d/*", f"--output_dir={tmp_path}/run"]
    commands = {
        "train": train,  # one worker here, or one of srun's/mpirun's
        "train --np": [*train, "--np=2"],
        "evaluate --np": ["evaluate", "--model=m.keras", "--data=d/*", "--np=2"],
        "demo": ["demo", f"--output_dir={tmp_path}/demo"],
        "shard": ["shard", f"--input={tmp_path}/d.npz", f"--output_dir={tmp_path}/shards",
                  "--num_shards=2"],
        "inspect": ["inspect", f"--model={ROOT}/tests/data/keras2_cnn.h5"],
        "slurm": ["slurm", f"--script={tmp_path}/job.sbatch", "--model=m.keras", "--data=d/*"],
        "help": ["--help"],
        # On tensorflow-cpu --gpu stops before anything is installed; no index and no kept
        # wheels, so that even a wrong turn could not install into this environment.
        "install-horovod --gpu": ["install-horovod", "--gpu"],
    }
    env = {"PYTHONPATH": os.pathsep.join([str(shim.parent), ROOT]), "PIP_NO_INDEX": "1",
           "DISTFT_WHEEL_CACHE": str(tmp_path / "no-wheels")}
    def distft(args: list[str]):
        return run([sys.executable, "-m", "distft", *args], timeout=300, cwd=str(tmp_path), env=env)

    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(commands, pool.map(distft, commands.values())))

    for name in ("train", "train --np", "evaluate --np", "demo"):
        assert one_error(results[name], missing_line(sys.executable)).endswith(
            missing_line(sys.executable)), name
    assert not os.path.exists(tmp_path / "demo"), "the demo started before finding Horovod missing"
    assert results["shard"].code == 0, results["shard"].out[-2000:]
    assert len([f for f in os.listdir(tmp_path / "shards") if f.endswith(".tfrecord")]) == 2
    inspect, slurm = results["inspect"], results["slurm"]
    assert inspect.code == 0 and "6 layers" in inspect.out, inspect.out
    assert slurm.code == 0 and os.path.exists(tmp_path / "job.sbatch"), slurm.out
    assert results["help"].code == 0 and "install_horovod" in results["help"].out
    try:
        importlib.metadata.version("tensorflow-cpu")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the --gpu check below needs TensorFlow built without CUDA (tensorflow-cpu)")
    one_error(results["install-horovod --gpu"], "--gpu: TensorFlow 2.21.0 here is built without "
                                                "CUDA")


def test_leaving_out_xla_ops_deletes_exactly_horovods_one_line(tmp_path):
    # The line as Horovod 0.28.1's horovod/tensorflow/CMakeLists.txt has it, among its neighbours.
    cmake = tmp_path / "CMakeLists.txt"
    kept = ['list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/mpi_ops.cc")\n',
            "set(Tensorflow_CXX11 ${Tensorflow_CXX11} PARENT_SCOPE)\n"]
    cmake.write_text(kept[0] + 'list(APPEND TF_SOURCES "${PROJECT_SOURCE_DIR}/horovod/tensorflow/'
                     'xla_mpi_ops.cc")\n' + kept[1])
    leave_out_xla_ops(str(cmake))
    assert cmake.read_text() == "".join(kept)
    with pytest.raises(DistftError, match="names xla_mpi_ops.cc on 0 lines, not 1: this is not "
                                          "Horovod 0.28.1's source release"):
        leave_out_xla_ops(str(cmake))


@pytest.mark.environment
@pytest.mark.multiworker  # the demo: 2 workers
@pytest.mark.timeout(1800)  # 2.5 min here with the Horovod wheel kept; a build adds about 4
def test_fresh_venv_with_tensorflow_then_pip_install_then_install_horovod_runs_the_demo(tmp_path):
    venv, src = tmp_path / "venv", tmp_path / "src"
    python, distft = str(venv / "bin" / "python"), str(venv / "bin" / "distft")
    env = {"PYTHONPATH": ""}  # this environment's own packages only

    def ok(cmd: list[str], timeout: float = 900):
        result = run(cmd, timeout=timeout, cwd=str(tmp_path), env=env)
        assert result.code == 0, f"{' '.join(cmd)}\n{result.out[-4000:]}"
        return result

    def packages() -> dict[str, str]:
        listed = ok([python, "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"])
        return dict(line.split("==") for line in listed.lines if "==" in line)

    # The interpreter this suite's venv was made from, and the TensorFlow that scripts/setup.sh
    # installs: set-up's kept Horovod wheel (same Python and TensorFlow) fits this venv.
    ok([getattr(sys, "_base_executable", sys.executable), "-m", "venv", str(venv)])
    with open(os.path.join(ROOT, "scripts", "setup.sh")) as f:
        tensorflow = re.search(r"^TF_REQ=\$\{DISTFT_TF:-(\S+)\}$", f.read(), re.M).group(1)
    pip = [python, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    ok([*pip, tensorflow])
    before = packages()

    # A user's `pip install .`, from a copy of what it needs (the checkout stays clean).
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(os.path.join(ROOT, name), src / name)
    shutil.copytree(os.path.join(ROOT, "distft"), src / "distft",
                    ignore=shutil.ignore_patterns("__pycache__"))
    ok([*pip, str(src)])
    after = packages()
    assert {name: after.get(name) for name in before} == before, "pip install changed packages"
    assert "distft" in after and "horovod" not in after

    result = run([distft, "demo", f"--output_dir={tmp_path}/demo"], cwd=str(tmp_path), env=env)
    one_error(result, missing_line(python))

    installed = ok([distft, "install-horovod"], timeout=1200)
    assert "[X] TensorFlow, [X] Gloo, [X] MPI" in installed.out, installed.out[-3000:]
    now = packages()
    assert {name: now.get(name) for name in before} == before, "install-horovod changed packages"

    demo = ok([distft, "demo", f"--output_dir={tmp_path}/demo", "--epochs=2"], timeout=600)
    before_acc, after_acc = map(float, re.search(
        r"validation accuracy on digits 5-9: (\S+) before fine-tuning, (\S+) after \(2 epochs on "
        r"2 workers", demo.out).groups())
    assert before_acc < 0.5 and after_acc > 0.8, demo.out[-2000:]

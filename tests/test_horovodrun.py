"""distft's horovodrun (distft/launch/horovodrun.py): Horovod's own launcher, with its build check
answered from a cache keyed by the extension file, so that a launch imports no TensorFlow."""
import json
import os
import subprocess
import sys

from conftest import LAUNCHER, run
from distft.horovod_install import ops_library
from distft.launch import horovodrun


def test_the_build_check_runs_once_per_build_of_the_extension(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = tmp_path / "distft" / horovodrun.CACHE
    assert horovodrun.built() == {"gloo": True, "mpi": True}  # Horovod's own check: this build
    kept = json.loads(cache.read_text())
    assert kept["key"].startswith(os.path.realpath(ops_library()))
    kept["built"]["mpi"] = False  # what is read now is the cache, not a new check
    cache.write_text(json.dumps(kept))
    assert horovodrun.built() == {"gloo": True, "mpi": False}
    kept["key"] += "0"  # another build of the extension: checked again
    cache.write_text(json.dumps(kept))
    assert horovodrun.built() == {"gloo": True, "mpi": True}
    cache.write_text("{half a fi")  # a damaged cache is a cache miss, not an error
    assert horovodrun.built() == {"gloo": True, "mpi": True}


def test_a_launch_imports_no_tensorflow_and_keeps_horovodruns_exit_codes(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path)}
    script = "import sys, horovod; print('worker', 'tensorflow' in sys.modules)"
    first = run([*LAUNCHER, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-c", script],
                env=env, timeout=120)
    assert first.code == 0 and first.out.count("worker False") == 2, first.out
    # With the cache written, the launcher process itself never imports TensorFlow.
    probe = ("import sys; from distft.launch import horovodrun; horovodrun.built(); "
             "print('tensorflow' in sys.modules)")
    checked = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, **env),
                             capture_output=True, text=True, timeout=60)
    assert checked.stdout.strip() == "False", checked.stderr
    failed = run([*LAUNCHER, "-np", "2", "-H", "localhost:2", "--gloo", sys.executable, "-c",
                  "import os, sys; sys.exit(int(os.environ['HOROVOD_RANK']) * 3)"], env=env, timeout=120)
    assert failed.code != 0 and "Exit code: 3" in failed.out, failed.out

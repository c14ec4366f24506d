"""The launcher side of elastic training: flag checks, horovodrun's elastic command, the
environment a worker sees under it, and the log of a job that falls below --min_np
(tests/test_slurm.py runs the Slurm discovery script on the real local cluster)."""
import dataclasses
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import Job, distft
from distft.config import STALL_MARGIN, TrainConfig
from distft.errors import DistftError
from distft.launch import environment
from distft.launch.elastic import Elastic
from distft.launch.spawn import JobLog, horovodrun_command
from test_cli_errors import one_error
from test_environment import clean_env  # noqa: F401 (fixture)

# A worker that reports what distft detects, then allreduces until a peer is lost and joins
# the next rendezvous as an elastic worker does (`hvd.init()` after `hvd.shutdown()`).
WORKER = """
import os, time
import horovod.tensorflow as hvd
import tensorflow as tf
from distft.launch.environment import detect
e = detect()
hvd.init()
hvd.allreduce(tf.ones(1))  # connected: a kill during hvd.init() may abort the others (gloo::IoException)
print('worker', e.name, e.rank, e.size, e.elastic, os.environ['HOROVOD_HOSTNAME'], flush=True)
while True:
    try:
        hvd.allreduce(tf.ones(1))
        time.sleep(0.2)
    except tf.errors.UnknownError:  # what a lost peer raises
        hvd.shutdown()
        hvd.init()
"""


@pytest.fixture
def scripts(tmp_path):
    (tmp_path / "hosts.sh").write_text("#!/bin/sh\necho localhost:1\n")
    (tmp_path / "hosts.sh").chmod(0o755)
    (tmp_path / "plain.sh").write_text("#!/bin/sh\necho localhost:1\n")
    return tmp_path


@pytest.mark.parametrize("args, expected", [
    (["--np=3", "--min_np=4"], "elastic workers need --min_np <= --np <= --max_np, got 4 <= 3 <= 3"),
    (["--np=3", "--max_np=2", "--hosts=a:1,b:1"], "got 3 <= 3 <= 2: pass e.g. --min_np=2"),
    (["--min_np=2"], "make an --np job elastic: pass --np=N too"),
    (["--np=3", "--min_np=2", "--hosts=a:1,b:1", "--controller=mpi"],
     "runs on Gloo only: pass --controller=gloo"),
    (["--np=3", "--min_np=2", "--hosts=a:1,b:1", "--host_discovery={d}/hosts.sh"],
     "--hosts and --host_discovery exclude each other: pass one"),
    (["--np=3", "--host_discovery={d}/none.sh"], "/none.sh does not exist: pass the path of a "
                                                 "script that prints host:slots lines"),
    (["--np=3", "--min_np=2", "--host_discovery={d}/plain.sh"], "/plain.sh is not executable: chmod +x"),
    (["--np=3", "--min_np=2", "--hosts=a:3"], "elastic mode needs at least 2 hosts"),
    (["--np=3", "--min_np=2"], "elastic mode needs at least 2 hosts"),
    (["--commit_every=0"], "--commit_every must be at least 1, got 0: pass e.g. --commit_every=100"),
])
def test_elastic_flag_errors(scripts, args, expected):
    result = distft(["train", "--model=m.h5", "--data=d", f"--output_dir={scripts}/o",
                     *(a.format(d=scripts) for a in args)], timeout=60)
    one_error(result, expected)


def test_what_elastic_mode_cannot_do_is_refused_before_a_worker_starts(monkeypatch):
    """The launcher's config check refuses it (distft.train.elastic checks again on workers
    that a user's own elastic horovodrun started)."""
    elastic = dict(model="m", data="d", np=2, min_np=1)
    with pytest.raises(DistftError, match="elastic mode needs --output_dir"):
        TrainConfig.resolve(**elastic)
    with pytest.raises(DistftError, match="--keep_best does not work in elastic mode yet"):
        TrainConfig.resolve(**elastic, output_dir="o", keep_best="val_loss", val_split=0.2)
    TrainConfig.resolve(**elastic, output_dir="o")
    TrainConfig.resolve(model="m", data="d", np=2, keep_best="val_loss", val_split=0.2)  # a fixed job
    monkeypatch.setenv("HOROVOD_FUSION_THRESHOLD", "67108864")
    with pytest.raises(DistftError, match="HOROVOD_FUSION_THRESHOLD is set"):
        TrainConfig.resolve(**elastic, output_dir="o")


def test_elastic_options_make_horovodrun_command(scripts):
    cfg = TrainConfig.resolve(model="m", data="d", output_dir="out", np=3, min_np=2, commit_every=20,
                              elastic_timeout=30, host_discovery=str(scripts / "hosts.sh"))
    assert (cfg.elastic, cfg.commit_every) == (True, 20)
    assert not TrainConfig.resolve(model="m", data="d", np=3).elastic
    assert TrainConfig().commit_every == 100
    cmd = horovodrun_command(["train", "--epochs=1"], 3, None, "gloo", Elastic.of(cfg))
    assert cmd[:3] == [sys.executable, "-m", "distft.launch.horovodrun"]
    # Gloo's time-out (its collectives' too) comes after the stall watchdog's, which evicts.
    gloo = os.environ.get("HOROVOD_GLOO_TIMEOUT_SECONDS", str(TrainConfig.stall_timeout + STALL_MARGIN))
    assert cmd[3:] == ["-np", "3", "--host-discovery-script", str(scripts / "hosts.sh"),
                       "--min-np", "2", "--elastic-timeout", "30", "--gloo-timeout-seconds",
                       gloo, "--gloo", sys.executable, "-m", "distft", "train", "--epochs=1"]
    off = Elastic.of(dataclasses.replace(cfg, stall_timeout=0)).horovodrun_args()
    assert off[-1] == os.environ.get("HOROVOD_GLOO_TIMEOUT_SECONDS", "30")  # --elastic_timeout's
    assert horovodrun_command(["x"], 2, None, "mpi")[3:7] == ["-np", "2", "-H", "localhost:2"]
    # A fixed host list becomes a discovery script that lives as long as the job.
    with Elastic(max_np=3).resolved("n1:2, n2") as ready:
        script = ready.host_discovery
        assert subprocess.run([script], capture_output=True, text=True).stdout == "n1:2\nn2:1\n"
        assert ready.horovodrun_args()[:4] == ["--host-discovery-script", script, "--max-np", "3"]
    assert not os.path.exists(script)


@pytest.mark.multiworker
def test_elastic_workers_and_a_job_below_min_np(tmp_path, capsys, monkeypatch):
    """Two workers under the command distft builds (each host name of this machine is its own
    elastic host): they detect elastic mode; one killed leaves fewer than --min_np=2, so after
    HOROVOD_ELASTIC_TIMEOUT horovodrun stops the survivor, and the log ends in one clear line."""
    with Elastic(min_np=2).resolved("localhost:1,127.0.0.1:1") as ready:
        cmd = horovodrun_command([], 2, None, "gloo", ready)
        cmd = cmd[:-2] + ["-c", WORKER]  # [..., python, "-m", "distft"]
        monkeypatch.setenv("HOROVOD_ELASTIC_TIMEOUT", "3")
        monkeypatch.setenv("HOROVOD_GLOO_TIMEOUT_SECONDS", "5")  # a lost peer is noticed in 5 s
        job = Job(cmd, str(tmp_path / "job.log"))
        deadline = time.time() + 120
        while len(re.findall(r"\]<stdout>:worker", job.out)) < 2 and time.time() < deadline \
                and job.proc.poll() is None:
            time.sleep(0.2)
        workers = sorted(line.split()[1:] for line in re.findall(r"\]<stdout>:(worker .*)", job.out))
        assert [w[:4] for w in workers] == [["horovodrun", "0", "2", "True"],
                                            ["horovodrun", "1", "2", "True"]], job.out
        assert {w[4] for w in workers} == {"localhost", "127.0.0.1"}
        killed = time.time()
        os.kill(job.worker_pid(1), 9)
        code = job.wait(timeout=60)
    took = time.time() - killed
    assert code != 0 and took < 30, (took, job.out)
    log = JobLog()
    for line in job.out.splitlines(keepends=True):
        log.relay(line)
    with pytest.raises(DistftError) as stop:
        log.finish(code)
    assert stop.value.exit_code == 75
    assert str(stop.value) == ("the job stopped: fewer than --min_np=2 workers left (rank 1 died "
                               "(SIGKILL, exit code 137)) and no new host within 3 s; continue "
                               "from the last checkpoint with --resume")
    relayed = capsys.readouterr()
    assert "worker horovodrun" in relayed.out
    assert not re.search(r"Traceback|ERROR:root|Process \d|Timed out", relayed.out + relayed.err)


def test_worker_death_alone_is_no_failure_in_elastic_mode(capsys):
    """Lines horovodrun printed in a probe where a worker was killed and the job finished on
    the others (exit code 0): the death is no failure, and it is not relayed as noise."""
    log = JobLog()
    for line in ("[2]<stderr>:Killed\n", "Process 2 exit with status code 137.\n",
                 "[0]<stdout>:training goes on\n"):
        log.relay(line)
    log.finish(0)
    assert capsys.readouterr().out == "training goes on\n"


def test_elastic_environment_needs_horovod_elastic(clean_env):  # noqa: F811
    for k, v in dict(HOROVOD_RANK="1", HOROVOD_SIZE="2", HOROVOD_LOCAL_RANK="0",
                     HOROVOD_LOCAL_SIZE="1", HOROVOD_CROSS_RANK="1").items():
        clean_env.setenv(k, v)
    assert not environment.detect().elastic  # a fixed-size horovodrun does not set it
    clean_env.setenv("HOROVOD_ELASTIC", "1")
    assert environment.detect().elastic

"""Elastic mode with real processes: `distft train --np=N --min_np=M` over Gloo, three names of
this machine (localhost, 127.0.0.1, its host name) as three 1-slot hosts, so that a killed worker
takes only its own host out. Workers are killed with SIGKILL mid-epoch; a discovery script adds a
host mid-run."""
import json
import os
import re
import signal
import socket
import time

import pytest

from conftest import DISTFT, Job, distft, one_line

pytestmark = pytest.mark.multiworker

HOSTS = ["localhost", "127.0.0.1", socket.gethostname()]


def args(demo_data, out, epochs: int = 4) -> list[str]:
    return ["train", f"--model={demo_data['model']}", f"--data={demo_data['data']}", "--num_classes=5",
            "--unfreeze=last:2",
            f"--epochs={epochs}", "--batch_size=4", "--val_split=0.2", "--log_every=20",
            "--commit_every=10", f"--output_dir={out}"]


def metrics(out) -> dict:
    with open(os.path.join(out, "metrics.json")) as f:
        return json.load(f)


def hosts(n: int) -> str:
    return ",".join(f"{h}:1" for h in HOSTS[:n])


def test_a_killed_worker_leaves_two_that_finish_in_sync(demo_data, tmp_path):
    """The undisturbed run first (3 workers, not elastic), then the same run in elastic mode with
    rank 2 killed mid-epoch: it goes on with 2 workers within seconds and ends near the
    undisturbed run's accuracy, with identical weights; TensorBoard shows the size change."""
    base = distft([*args(demo_data, tmp_path / "base"), "--np=3", f"--hosts={hosts(3)}"], timeout=300)
    assert base.code == 0, base.out[-3000:]
    out = tmp_path / "run"
    job = Job([DISTFT, *args(demo_data, out), "--np=3", "--min_np=2", f"--hosts={hosts(3)}", "--keep_checkpoints=0"],
              str(tmp_path / "log"))
    job.wait_for("epoch 2/4  step 20/")
    os.kill(job.worker_pid(2), signal.SIGKILL)
    killed = time.time()
    job.wait_for("lost: continuing with 2 workers", timeout=90)
    going_on = time.time() - killed
    assert going_on < 30, going_on  # not Gloo's time-out (--elastic_timeout, 120 s): links broken
    assert job.wait(240) == 0, job.out[-3000:]
    line = one_line(job.out, "lost: continuing")
    assert "rank 2 (host " in line and "from epoch 2 step " in line, line
    m, b = metrics(out), metrics(tmp_path / "base")
    assert m["workers"] == 2 and m["elastic"]["resets"] == 1
    assert len(m["weights_checksums"]) == 2 and len(set(m["weights_checksums"])) == 1
    assert m["validation"]["accuracy"] > 0.9 and abs(m["validation"]["accuracy"] - b["validation"]["accuracy"]) < 0.05
    assert "Traceback" not in job.out and "distft: error" not in job.out
    # The survivors' rank 0 checkpointed the commit it went back to.
    state = json.load(open(os.path.join(out, "checkpoints", "epoch-0001", "state.json")))
    assert state["stopped_by"] == "a lost worker" and state["step_in_epoch"] % 10 == 0
    from test_tensorboard import Server

    tb = Server(str(out / "tensorboard"))
    try:
        tb.wait_for("data/plugin/scalars/tags", lambda tags: "workers" in tags.get("train", {}))
        sizes = [value for _, value in tb.scalars("train", "workers")]
    finally:
        tb.proc.terminate()
        tb.proc.wait(timeout=30)
    assert sizes == [3.0, 2.0], sizes
    print(f"kill -> going on: {going_on:.1f}s; validation accuracy {m['validation']['accuracy']:.4f} "
          f"(undisturbed {b['validation']['accuracy']:.4f})")


def test_a_stopped_worker_is_evicted_and_the_other_two_finish_in_sync(demo_data, tmp_path):
    """3 workers in elastic mode, rank 1 SIGSTOPped mid-epoch (as a rank hung in a dead NFS read
    would be): within --stall_timeout + 10 s the watchdog names it (host, pid, stopped) and
    evicts it, stall-report.txt holds the live ranks' stacks, and the other two go on from their
    last commit and finish with identical weights."""
    # The survivors' set-up for 2 workers (a new train function, their shards) took 16 s and more
    # on a loaded machine: not a stall.
    timeout, out = 30, tmp_path / "run"
    job = Job([DISTFT, *args(demo_data, out), "--np=3", "--min_np=2", f"--hosts={hosts(3)}",
               f"--stall_timeout={timeout}", "--keep_checkpoints=0"], str(tmp_path / "log"))
    job.wait_for("epoch 2/4  step 20/")
    pid = job.worker_pid(1)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.time()
    try:
        job.wait_for("lost: continuing with 2 workers", timeout=timeout + 60)
        going_on = time.time() - stopped
        code = job.wait(240)
    finally:  # were it left, it must not stay stopped
        for sig in (signal.SIGKILL, signal.SIGCONT):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
    print(f"SIGSTOP of rank 1 -> going on with 2 workers: {going_on:.1f} s (--stall_timeout={timeout})")
    assert going_on < timeout + 10 and code == 0, (going_on, code, job.out[-3000:])
    line = one_line(job.out, "evicted")
    # Its state is read from /proc only on its own node (the 3 hosts here are 3 names of this
    # machine, as the lab's nodes are namespaces of it): no heartbeat, as from another machine.
    assert re.search(rf"rank 1 \(host [^,]+, pid {pid}\) made no progress for \d+ s: no heartbeat "
                     r"\(hung hard, or unreachable\); last seen in .*; evicted: the others go on from "
                     r"their last commit; every live rank's stack .* in .*stall-report.txt", line), line
    assert "rank 1 (host " in one_line(job.out, "lost: continuing with 2 workers")
    report = (out / "stall-report.txt").read_text()
    sections = {int(part.split()[0]): part for part in report.split("\n== rank ")[1:]}
    assert re.match(rf"1 \(host [^,]+, pid {pid}\): last heartbeat ", sections[1]), report
    assert "Python stack: none (it did not answer)" in sections[1], report
    assert all(" in fit" in sections[rank] for rank in (0, 2)), report  # the live ranks' stacks
    m = metrics(out)
    assert m["workers"] == 2 and m["elastic"]["resets"] == 1
    assert len(m["weights_checksums"]) == 2 and len(set(m["weights_checksums"])) == 1
    assert m["validation"]["accuracy"] > 0.9
    assert "Traceback" not in job.out and "distft: error" not in job.out


def test_a_slow_host_joins_then_rank_0_is_killed(demo_data, tmp_path):
    """A discovery script lists two hosts, then a third, whose worker takes 30 s more than the
    others to start (as a new node does): the job waits for it and grows to 3 workers. Then
    rank 0 is killed: the next rank 0 finishes the run, writing into the same run folder."""
    slow = tmp_path / "slow"  # a sitecustomize that delays the third host's worker
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(
        f"import os, time\nif os.environ.get('HOROVOD_HOSTNAME') == {HOSTS[2]!r}:\n    time.sleep(30)\n")
    listed = tmp_path / "hosts.txt"
    listed.write_text(f"{HOSTS[0]}:1\n{HOSTS[1]}:1\n")
    script = tmp_path / "discover.sh"
    script.write_text(f"#!/bin/sh\ncat {listed}\n")
    script.chmod(0o755)
    out = tmp_path / "run"
    job = Job([DISTFT, *args(demo_data, out, epochs=5), "--np=2", "--min_np=2", "--max_np=3",
               f"--host_discovery={script}"], str(tmp_path / "log"),
              env={"PYTHONPATH": os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")]))})
    job.wait_for("epoch 1/5  step 20/")
    listed.write_text(f"{HOSTS[0]}:1\n{HOSTS[1]}:1\n{HOSTS[2]}:1\n")
    listed_at = time.time()
    job.wait_for("continuing with 3 workers", timeout=180)
    assert time.time() - listed_at > 30  # the others waited for the slow worker's start
    assert f"a worker joined (host {HOSTS[2]})" in one_line(job.out, "continuing with 3 workers")
    job.wait_for("epoch 3/5  step 20/")
    os.kill(job.worker_pid(0), signal.SIGKILL)
    assert job.wait(240) == 0, job.out[-3000:]
    assert "rank 0 (host " in one_line(job.out, "lost: continuing with 2 workers")
    m = metrics(out)
    assert m["workers"] == 2 and m["elastic"]["resets"] == 2
    assert len(set(m["weights_checksums"])) == 1 and m["validation"]["accuracy"] > 0.9
    assert os.path.exists(out / "model.keras")


def test_below_min_np_stops_with_a_checkpoint_that_resumes(demo_data, tmp_path):
    """2 workers, --min_np=2: a killed worker stops the job with one error line and the --resume
    hint; the survivor checkpointed its last commit, and --resume (on 2 workers) finishes."""
    out = tmp_path / "run"
    job = Job([DISTFT, *args(demo_data, out, epochs=3), "--np=2", "--min_np=2", f"--hosts={hosts(2)}",
               "--elastic_timeout=10"], str(tmp_path / "log"))
    job.wait_for("epoch 2/3  step 20/")
    os.kill(job.worker_pid(1), signal.SIGKILL)
    code = job.wait(120)
    assert code != 0
    line = one_line(job.out, "distft: error:")
    assert "--min_np" in line and "--resume" in line, line
    state = json.load(open(os.path.join(out, "checkpoints", "epoch-0001", "state.json")))
    assert state["step_in_epoch"] >= 10
    resumed = distft([*args(demo_data, out, epochs=3), "--np=2", "--resume"], timeout=300)
    assert resumed.code == 0, resumed.out[-3000:]
    assert f"step {state['step_in_epoch'] + 1} of" in one_line(resumed.out, "resuming from")
    assert metrics(out)["initial_epoch"] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_ctrl_c_stop_an_elastic_job_cleanly(demo_data, tmp_path, sig):
    """A signal is a stop request in elastic mode too, not a lost worker: a checkpoint, exit 75."""
    out = tmp_path / "run"
    job = Job([DISTFT, *args(demo_data, out, epochs=50), "--np=2", "--min_np=1", f"--hosts={hosts(2)}"],
              str(tmp_path / "log"))
    job.wait_for("epoch 2/50")
    os.kill(job.proc.pid, sig)
    assert job.wait(90) == 75, job.out[-3000:]
    line = one_line(job.out, "distft: stopped:")
    assert sig.name in line and "--resume" in line, line
    assert os.path.isdir(out / "checkpoints")
    assert "distft: error" not in job.out and "Traceback" not in job.out


def test_elastic_mode_without_failures_trains_exactly_like_a_fixed_job(demo_data, tmp_path):
    """Commits copy state and check for host changes; they change nothing: the same weights as
    the fixed job, accumulated gradients and EMA included."""
    common = [*args(demo_data, tmp_path / "x", epochs=2), "--np=2", f"--hosts={hosts(2)}", "--threads=1",
              "--grad_accum=2", "--ema=0.9", "--commit_every=3"]
    fixed = distft([*common, f"--output_dir={tmp_path / 'fixed'}"], timeout=300)
    elastic = distft([*common, f"--output_dir={tmp_path / 'elastic'}", "--min_np=1"], timeout=300)
    assert fixed.code == 0 and elastic.code == 0, (fixed.out + elastic.out)[-3000:]
    f, e = metrics(tmp_path / "fixed"), metrics(tmp_path / "elastic")
    assert e["elastic"]["commits"] >= e["epochs"] * e["steps_per_epoch"] // 3 and e["elastic"]["resets"] == 0
    assert e["weights_checksums"] == f["weights_checksums"]
    assert e["ema_checksums"] == f["ema_checksums"]


def test_a_fusion_threshold_is_refused_in_elastic_mode(demo_data, tmp_path):
    """Horovod 0.28.1's survivors crash (SIGSEGV) on an elastic reset when HOROVOD_FUSION_THRESHOLD
    is set: one error line before training instead."""
    result = distft([*args(demo_data, tmp_path / "run", epochs=1), "--np=2", "--min_np=1",
                     f"--hosts={hosts(2)}"], env={"HOROVOD_FUSION_THRESHOLD": "67108864"}, timeout=120)
    assert result.code == 2, result.out[-3000:]
    assert "HOROVOD_FUSION_THRESHOLD is set" in one_line(result.out, "distft: error:")

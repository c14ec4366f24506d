"""Faults on real workers: a killed or failing worker takes the job down quickly; a signal
stops every worker at the same step with a checkpoint that --resume continues from."""
import json
import os
import re
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

from conftest import (DISTFT, USER_CALLBACKS, Job, Started, distft, horovodrun_command, one_line,
                      remove_cgroup)

pytestmark = pytest.mark.multiworker


def resume_and_run_straight(args, run_dir: str, state, steps: int, tmp_path) -> str:
    """--resume the stopped run in `run_dir` (its checkpoint's `state`, `steps` an epoch) and
    run the same command straight in another folder (side by side), on 2 workers: both must end
    with the same weights (float tolerance). `args(folder)`: the command's arguments. The
    straight run's folder."""
    from test_multiworker import weights_by_layer

    straight = str(tmp_path / "straight")
    whole = Started(horovodrun_command(args(straight)), timeout=400)
    resumed = Job([DISTFT, *args(run_dir), "--np=2", "--resume"], str(tmp_path / "resumed.log"))
    assert resumed.wait(400) == 0, resumed.out[-3000:]
    assert f"(from epoch {state.epoch + 1} step {state.step_in_epoch + 1} of {steps})" in resumed.out
    whole = whole.result()
    assert whole.code == 0, whole.out[-3000:]
    a, b = (weights_by_layer(os.path.join(d, "model.keras")) for d in (run_dir, straight))
    diff = max(float(np.abs(x - y).max()) for layer in a for x, y in zip(a[layer], b[layer]))
    print(f"stopped at epoch {state.epoch + 1} step {state.step_in_epoch}; resumed vs never "
          f"stopped: largest weight difference {diff:.3g}")
    for layer in a:
        for x, y in zip(a[layer], b[layer]):
            np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, err_msg=layer)
    return straight


def train_args(demo_data, run_dir, epochs):
    return ["train", f"--model={demo_data['model']}", f"--data={demo_data['data']}",
            f"--val_data={demo_data['val_data']}", "--num_classes=5", "--unfreeze=last:2",
            f"--epochs={epochs}", "--batch_size=8", "--log_every=1000", f"--output_dir={run_dir}"]


def test_a_stopped_rank_is_named_and_resume_goes_on(demo_data, tmp_path):
    """Two jobs side by side, rank 1 SIGSTOPped mid-epoch in one and rank 0 (its watchdog with
    it) in the other: within --stall_timeout + 10 s one line names the rank (host, pid,
    stopped; rank 1 names a stopped rank 0), stall-report.txt holds the live rank's stack, the
    job exits 75 with the resume hint, and --resume goes on from the checkpoint kept to the end.
    A third job beside them, whose user callback calls a collective on rank 0 alone, ends the
    same way with rank 0 named as the divergence, with the line of the callback's call."""
    from distft.train.checkpoint import CheckpointStore

    timeout, started = 15, time.time()
    runs = {rank: tmp_path / f"rank{rank}" for rank in (1, 0)}
    args = {rank: [*train_args(demo_data, runs[rank], 5 if rank else 100), f"--stall_timeout={timeout}",
                   "--np=2"] for rank in runs}
    jobs = {rank: Job([DISTFT, *args[rank]], str(tmp_path / f"rank{rank}.log")) for rank in runs}
    # A third job, beside them: a user callback calls a collective on rank 0 alone (a divergence).
    planted = Job([DISTFT, *train_args(demo_data, tmp_path / "planted", 100), f"--stall_timeout={timeout}",
                   "--np=2", f"--import={USER_CALLBACKS}",
                   "--callbacks=user_callbacks.CollectiveOnOneRank(rank=0, epoch=2)"], str(tmp_path / "planted.log"))
    pids, stopped = {}, {}
    for rank, job in jobs.items():
        job.wait_for("epoch 2/")
        pids[rank] = job.worker_pid(rank)
        os.kill(pids[rank], signal.SIGSTOP)
        stopped[rank] = time.time()
    lines = {}
    for rank, job in jobs.items():
        try:
            code = job.wait(timeout + 60)
            ended = time.time() - stopped[rank]
        finally:  # the launcher kills it; were it left, it must not stay stopped
            for sig in (signal.SIGKILL, signal.SIGCONT):
                try:
                    os.kill(pids[rank], sig)
                except ProcessLookupError:
                    pass
        lines[rank] = line = one_line(job.out, "distft: error:")
        print(f"SIGSTOP of rank {rank} to the job's end with the line: {ended:.1f} s (--stall_timeout={timeout})")
        assert code == 75 and ended < timeout + 10, (code, ended, job.out[-3000:])
        assert line.startswith(f"distft: error: rank {rank} (host localhost, pid {pids[rank]}) made no "
                               "progress for "), line
        assert "Traceback" not in job.out and "Horovod has been shut down" not in job.out
    assert ": stopped (state T); last seen in " in lines[0] and "--resume" in lines[0], lines[0]
    assert planted.wait(timeout + 120) == 75, planted.out[-3000:]
    line = one_line(planted.out, "distft: error:")
    assert re.match(r"distft: error: rank 0 \(host localhost, pid \d+\) entered a different collective "
                    r"from the others: Horovod allreduce from user_callbacks\.py:\d+ in on_epoch_end ", line), line
    assert "while rank 1 is in collective #" in line and "--resume" in line, line
    with open(runs[0] / "stall-report.txt") as f:
        assert "written by rank 1" in f.read()

    line, run_dir = lines[1], runs[1]
    # Heartbeats go once a second: the last can be from epoch 2's end, before the stop.
    assert re.search(r": stopped \(state T\); last seen in (train step |collective #\d+ |callback \w+\.on_epoch_end)",
                     line), line
    kept = CheckpointStore(str(run_dir / "checkpoints")).latest()
    assert f"the epoch {kept[1].epoch} checkpoint ({kept[0]}) is intact; run the same command with " \
        f"--resume to continue from epoch {kept[1].epoch + 1}" in line, line
    report = str(run_dir / "stall-report.txt")
    assert line.endswith(f"every live rank's stack and last collectives are in {report}"), line
    with open(report) as f:
        text = f.read()
    assert f"== rank 1 (host localhost, pid {pids[1]}): last heartbeat " in text
    assert "Python stack: none (it did not answer)" in text  # the stopped rank
    assert "in quick_execute" in text and "in fit" in text  # rank 0's main thread, in the step
    assert re.search(r"#\d+ allreduce distft_stop from GracefulStop", text)
    resumed = Job([DISTFT, *args[1], "--resume"], str(tmp_path / "resumed.log"))
    assert resumed.wait(300) == 0, resumed.out[-3000:]
    assert f"{kept[0]}: {kept[1].epoch} epoch(s) done" in one_line(resumed.out, "resuming from")
    assert os.path.exists(run_dir / "model.keras")
    print(f"wall time with the resumed run: {time.time() - started:.0f} s")


def test_a_full_disk_keeps_the_last_checkpoint_and_resume_goes_on(demo_data, tmp_path):
    """The output disk fills mid-run (a 1.5 MB tmpfs, room for 3 checkpoints): one line names
    the folder, why, the space left and the checkpoint that is intact, exit 75 (as a stop), no
    half-written folder; with room again, --resume goes on from that checkpoint and finishes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(disk)], check=True)
    try:
        out = disk / "run"
        args = [*train_args(demo_data, out, 12), "--steps_per_epoch=5", "--keep_checkpoints=0", "--np=2"]
        full = distft(args)
        assert full.code == 75, full.out[-3000:]
        line = one_line(full.out, "distft: error:")
        assert f"checkpoint in {out}/checkpoints (No space left on device; " in line, line
        assert " MB free): the epoch " in line and line.endswith("run the same command with --resume"), line
        kept = re.search(r"the epoch (\d+) checkpoint \((\S+)\) is intact", line)
        assert kept and os.path.exists(os.path.join(kept.group(2), "state.json")), line
        assert not [n for n in os.listdir(out / "checkpoints") if n.startswith(".tmp-")]
        assert "Traceback" not in full.out and "SaveV2" not in full.out
        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        resumed = distft([*args, "--resume"])
        assert resumed.code == 0, resumed.out[-3000:]
        assert f"{kept.group(2)}: {kept.group(1)} epoch(s) done" in one_line(resumed.out, "resuming from")
        assert os.path.exists(out / "model.keras")
    finally:
        subprocess.run(["umount", "-l", str(disk)])


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_killed_worker_ends_the_job_within_60s(demo_data, tmp_path, controller):
    """SIGQUIT to a worker prints its Python stacks (it goes on); SIGKILL ends the job, the rank
    named."""
    job = Job([DISTFT, *train_args(demo_data, tmp_path / "run", 100), "--np=2",
               f"--controller={controller}"], str(tmp_path / "log"))
    job.wait_for("epoch 2/100")
    # SIGQUIT first: the worker prints every thread's Python stack and goes on.
    os.kill(job.worker_pid(1), signal.SIGQUIT)
    job.wait_for(" in fit", timeout=20)
    assert "Thread 0x" in job.out and "in _run" in job.out  # its threads', the stall link's too
    killed = time.time()
    os.kill(job.worker_pid(1), signal.SIGKILL)
    code = job.wait(60)
    ended = time.time() - killed
    print(f"SIGKILL of rank 1 ({controller}) to the job's end with the line: {ended:.1f} s")
    assert code != 0 and ended < 60
    line = one_line(job.out, "distft: error:")
    assert "rank 1" in line and ("137" in line or "signal 9" in line), line
    assert not os.path.exists(tmp_path / "run" / "model.keras")


def test_worker_that_fails_mid_run_ends_the_job(demo_data, tmp_path):
    # Two of the four files vanish mid-run: the worker that reads one names it.
    data = tmp_path / "data"
    data.mkdir()
    for name in os.listdir(os.path.dirname(demo_data["data"])):
        if name.startswith("train-"):
            os.symlink(os.path.join(os.path.dirname(demo_data["data"]), name), data / name)
    args = train_args(demo_data, tmp_path / "run", 100)
    args[2] = f"--data={data}/*.tfrecord"
    job = Job([DISTFT, *args, "--np=2"], str(tmp_path / "log"))
    job.wait_for("epoch 2/100")
    os.remove(data / "train-01.tfrecord")
    os.remove(data / "train-03.tfrecord")
    failed = time.time()
    code = job.wait(60)
    ended = time.time() - failed
    print(f"2 of 4 data files removed to the job's end with the line: {ended:.1f} s")
    assert code != 0 and ended < 60
    line = one_line(job.out, "distft: error:")
    # Rank 1 read them first; shards move between workers each epoch, so either may hit it.
    assert re.match(rf"distft: error: rank [01]: could not read {data}/train-0[13]\.tfrecord mid-run on host "
                    rf"{socket.gethostname()} \(No such file or directory\): make it readable again, then "
                    r"run the same command with --resume", line), line
    assert "Traceback" not in job.out


def test_a_worker_killed_by_the_oom_killer_is_named_with_memory(demo_data, tmp_path):
    """The job runs in a memory cgroup of its own (2.5 GB) and rank 1 fills 4 GB: the kernel's
    OOM killer ends it, and the job's one line says so, with the host."""
    from distft.launch.oom import memory_cgroup

    parent, version = memory_cgroup()
    cgroup = os.path.join(parent, f"distft-oom-test-{os.getpid()}")
    os.mkdir(cgroup)
    try:
        with open(os.path.join(cgroup, "memory.limit_in_bytes" if version == 1 else "memory.max"), "w") as f:
            f.write(str(2500 * 2 ** 20))
        enter = f'echo $$ > {cgroup}/cgroup.procs && exec "$0" "$@"'  # the launcher, and so its workers
        job = Job(["sh", "-c", enter, DISTFT, *train_args(demo_data, tmp_path / "run", 100), "--np=2",
                   f"--import={USER_CALLBACKS}", "--callbacks=user_callbacks.Allocate(rank=1, epoch=2)"],
                  str(tmp_path / "log"))
        assert job.wait(240) != 0
    finally:
        remove_cgroup(cgroup)
    line = one_line(job.out, "distft: error:")
    assert line == (f"distft: error: rank 1 died (SIGKILL, exit code 137): out of memory (the kernel's OOM "
                    f"killer, on host {socket.gethostname()}); give the job more memory or lower "
                    "--batch_size; the job was stopped"), job.out[-3000:]


def test_sigterm_mid_epoch_then_resume_ends_with_the_uninterrupted_weights(demo_data, tmp_path):
    """Stopped mid-epoch and resumed, a run ends where a run never stopped ends: the resumed
    epoch goes on at the step after the stop, in the same shuffled order, with the same
    optimizer state and schedule (Adam, cosine)."""
    from distft.train.checkpoint import CheckpointStore

    def args(run_dir):  # 400 steps an epoch: the workers compare notes every 10-100 steps
        return [*train_args(demo_data, run_dir, 3), "--steps_per_epoch=400", "--schedule=cosine"]

    run_dir = str(tmp_path / "stopped")
    job = Job([DISTFT, *args(run_dir), "--np=2"], str(tmp_path / "log"))
    job.wait_for("epoch 1/3")
    job.proc.send_signal(signal.SIGTERM)
    assert job.wait(60) == 75, job.out[-3000:]
    line = one_line(job.out, "distft: stopped:")
    _, state = CheckpointStore(os.path.join(run_dir, "checkpoints")).latest()
    assert state.stopped_by == "SIGTERM" and state.epoch in (1, 2), state
    assert 0 < state.step_in_epoch < 400, state  # mid-epoch, the case under test
    assert "SIGTERM received" in line and \
        f"--resume to continue from epoch {state.epoch + 1} step {state.step_in_epoch + 1}" in line
    assert not os.path.exists(os.path.join(run_dir, "model.keras"))

    straight = resume_and_run_straight(args, run_dir, state, 400, tmp_path)
    for d in (run_dir, straight):
        with open(os.path.join(d, "metrics.json")) as f:
            assert json.load(f)["optimizer_updates"] == 3 * 400


@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_sigusr1_to_one_worker_stops_all_at_the_same_step(demo_data, tmp_path, controller):
    run_dir = str(tmp_path / "run")
    job = Job(horovodrun_command(train_args(demo_data, run_dir, 100), controller=controller),
              str(tmp_path / "log"))
    job.wait_for("epoch 2/100")
    os.kill(job.worker_pid(1), signal.SIGUSR1)
    assert job.wait(60) != 0
    line = one_line(job.out, "distft: stopped:")
    assert "SIGUSR1 received" in line
    from distft.train.checkpoint import CheckpointStore

    _, state = CheckpointStore(os.path.join(run_dir, "checkpoints")).latest()
    assert state.stopped_by == "SIGUSR1"  # rank 0 saw no signal: the workers agreed
    assert state.step_in_epoch % 10 == 0 or state.step_in_epoch == 0


def test_ctrl_c_is_a_stop_request_every_time(demo_data, tmp_path):
    """A race before: three jobs side by side, each stopped at another epoch."""
    from distft.train.checkpoint import CheckpointStore

    jobs = [Job([DISTFT, *train_args(demo_data, tmp_path / f"run{attempt}", 100), "--np=2"],
                str(tmp_path / f"log{attempt}")) for attempt in range(3)]
    for attempt, job in enumerate(jobs):
        job.wait_for(f"epoch {2 + attempt}/100")
        os.killpg(job.proc.pid, signal.SIGINT)  # what the terminal sends its foreground group
    for attempt, job in enumerate(jobs):
        assert job.wait(90) == 75, job.out[-3000:]
        line = one_line(job.out, "distft: stopped:")
        assert "Ctrl-C (SIGINT) received" in line and "--resume" in line, line
        assert "distft: error:" not in job.out and "died" not in job.out, job.out[-3000:]
        _, state = CheckpointStore(str(tmp_path / f"run{attempt}" / "checkpoints")).latest()
        assert state.stopped_by == "Ctrl-C (SIGINT)" and state.epoch >= 1 + attempt


def test_a_second_ctrl_c_stops_at_once(demo_data, tmp_path):
    import psutil

    job = Job([DISTFT, *train_args(demo_data, tmp_path / "run", 100), "--np=2"],
              str(tmp_path / "log"))
    job.wait_for("epoch 2/100")
    workers = [job.worker_pid(0), job.worker_pid(1)]
    os.killpg(job.proc.pid, signal.SIGINT)
    # A second press, as a user makes it: Python runs one handler for signals that arrive
    # before it gets to run, so two back-to-back kills could count as one.
    job.wait_for("Ctrl-C again to stop at once", timeout=10)
    os.killpg(job.proc.pid, signal.SIGINT)
    started = time.time()
    assert job.wait(30) == 130, job.out[-3000:]
    assert time.time() - started < 15
    assert "Ctrl-C (SIGINT) twice" in one_line(job.out, "distft: stopped:")
    def alive() -> list[int]:
        return [p for p in workers if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]

    gone_by = time.time() + 1  # the workers are gone within a second
    while alive() and time.time() < gone_by:
        time.sleep(0.1)
    assert not alive()

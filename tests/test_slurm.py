"""The slurm/ templates on a real two-node Slurm cluster started on this machine.

Each template is submitted with CPU settings (its GPU line removed, one or two small workers
per node) and a tiny fine-tune, exactly as a user would submit it otherwise.
"""
import glob
import json
import os
import re
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from conftest import DISTFT, SLURM, run

pytestmark = pytest.mark.slurm
# n1 and n2 share one kernel here: Open MPI's shared-memory transport between the 4 workers of
# a "node" crashes on segments it sees from the other "node", so those go over TCP.
LOCAL_MPI = {"OMPI_MCA_btl": "self,tcp"}


@pytest.fixture
def workdir(cluster, demo_data, tmp_path):
    for name in ("base_model.keras", "shards"):
        os.symlink(os.path.join(demo_data["folder"], name), tmp_path / name)
    return tmp_path


def cpu_variant(template: str, dest, tasks_per_node: int = 1, **sbatch) -> str:
    """The template with CPU settings: no GPU line, small workers; only its parameter block changes."""
    text = open(os.path.join(SLURM, f"{template}.sbatch")).read()
    text = re.sub(r"^#SBATCH --gpus-per-node=.*\n", "", text, flags=re.M)
    text = re.sub(r"--ntasks-per-node=\d+", f"--ntasks-per-node={tasks_per_node}", text)
    text = re.sub(r"--cpus-per-task=\d+", "--cpus-per-task=1", text)
    text = re.sub(r"--time=\S+", "--time=00:20:00", text)
    for option, value in sbatch.items():
        text = re.sub(rf"^#SBATCH --{option}=\S+", f"#SBATCH --{option}={value}", text, flags=re.M)
    path = os.path.join(dest, f"{template}.sbatch")
    with open(path, "w") as f:
        f.write(text)
    return path


def submit(script: str, workdir, **env) -> str:
    exports = ",".join(["ALL", f"DISTFT={DISTFT}", "DATA=shards/train-*.tfrecord",
                        *(f"{k}={v}" for k, v in env.items())])
    out = subprocess.run(["sbatch", "--parsable", f"--export={exports}", script], cwd=workdir,
                         capture_output=True, text=True, check=True).stdout
    return out.strip().split(";")[0]


def job_state(job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S+)", out))


def wait_done(job: str, workdir, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_state(job)
        if state.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                     "OUT_OF_MEMORY"):
            return state
        time.sleep(0.5)
    subprocess.run(["scancel", job])
    logs = run(["bash", os.path.join(SLURM, "local-cluster.sh"), "logs"]).out
    pytest.fail(f"job {job} not done after {timeout}s: {job_state(job)}\n{log_of(job, workdir)}\n{logs}")


def log_of(job: str, workdir) -> str:
    paths = glob.glob(os.path.join(workdir, f"slurm-{job}*.out"))
    return "\n".join(open(p).read() for p in sorted(paths))


def check_run(run_dir: str, epochs: int) -> dict:
    m = json.load(open(os.path.join(run_dir, "metrics.json")))
    assert m["epochs"] == epochs and len(set(m["weights_checksums"])) == 1
    assert os.path.exists(os.path.join(run_dir, "model.keras"))
    assert glob.glob(os.path.join(run_dir, "tensorboard", "train", "events.out.tfevents.*"))
    return m


def test_multi_node_template_runs_one_worker_on_each_node(workdir):
    job = submit(cpu_variant("multi-node", workdir), workdir, EPOCHS=2)
    state = wait_done(job, workdir)
    log = log_of(job, workdir)
    assert state["JobState"] == "COMPLETED", log
    assert re.search(r"rank 0 on n1 \(SLURM_NODEID 0\).*?, rank 1 on n2 \(SLURM_NODEID 1\)", log), log
    assert check_run(os.path.join(workdir, "runs", job), 2)["launcher"] == "srun"


def test_single_node_template_runs_two_workers_on_one_node(workdir):
    job = submit(cpu_variant("single-node", workdir, tasks_per_node=2), workdir, EPOCHS=2)
    state = wait_done(job, workdir)
    log = log_of(job, workdir)
    assert state["JobState"] == "COMPLETED", log
    assert re.search(r"rank 0 on (n\d) \(SLURM_NODEID \d\).*?, rank 1 on \1 ", log), log
    assert check_run(os.path.join(workdir, "runs", job), 2)["workers"] == 2


def test_gloo_template_starts_workers_with_horovodrun_over_the_allocation(workdir):
    job = submit(cpu_variant("multi-node-gloo", workdir), workdir, EPOCHS=2,
                 HOROVODRUN=os.path.join(os.path.dirname(sys.executable), "horovodrun"))
    state = wait_done(job, workdir)
    log = log_of(job, workdir)
    assert state["JobState"] == "COMPLETED", log
    assert "2 workers on n1:1,n2:1" in log and re.search(r"rank 0 on n1.*?, rank 1 on n2", log), log
    assert check_run(os.path.join(workdir, "runs", job), 2)["launcher"] == "horovodrun"


def epoch_steps(run_dir: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(os.path.join(run_dir, "tensorboard", "train"), size_guidance={"tensors": 0})
    acc.Reload()
    return [e.step for e in acc.Tensors("epoch_loss")]


def test_requeue_template_checkpoints_on_usr1_requeues_and_finishes(workdir):
    epochs = 30
    job = submit(cpu_variant("requeue", workdir), workdir, EPOCHS=epochs, BATCH_SIZE=8,
                 EXTRA_ARGS="--log_every=1000")
    deadline = time.time() + 240
    while f"epoch 3/{epochs}" not in log_of(job, workdir):
        assert time.time() < deadline, log_of(job, workdir)
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
    # Slurm holds a requeued job for 2 minutes (its begin time); the wait is Slurm's, not the
    # template's. Once requeued and its nodes have cleaned up the stopped run (idle again; a
    # step started before then fails to launch), it may start again.
    deadline = time.time() + 240
    while (state := job_state(job)).get("Restarts") != "1" or state.get("JobState") != "PENDING":
        assert time.time() < deadline and state.get("JobState") in ("RUNNING", "COMPLETING", "PENDING",
                                                                    "REQUEUED"), (state, log_of(job, workdir))
        time.sleep(0.5)
    while subprocess.run(["sinfo", "-h", "-N", "-n", "n1,n2", "-o", "%T"], capture_output=True,
                         text=True).stdout.split() != ["idle", "idle"]:
        assert time.time() < deadline, subprocess.run(["sinfo", "-N"], capture_output=True, text=True).stdout
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now+10"], check=True)
    state = wait_done(job, workdir, timeout=600)
    log = log_of(job, workdir)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", log
    assert "SIGUSR1 received" in log and "requeueing job" in log and "(restart 1)" in log
    run_dir = os.path.join(workdir, "runs", job)
    m = check_run(run_dir, epochs)
    assert 3 <= m["initial_epoch"] < epochs
    assert epoch_steps(run_dir) == list(range(1, epochs + 1))  # continuous, none twice


def test_sweep_template_one_run_folder_per_array_task(workdir):
    job = submit(cpu_variant("sweep", workdir), workdir, EPOCHS=2, UNFREEZES="last:1 last:2",
                 LRS="1e-3 3e-4")
    deadline = time.time() + 600
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        assert time.time() < deadline
        time.sleep(0.5)
    runs = sorted(glob.glob(os.path.join(workdir, "runs", f"sweep-{job}", "task-*")))
    assert [os.path.basename(r) for r in runs] == [
        "task-0-unfreeze-last_1-lr-1e-3", "task-1-unfreeze-last_1-lr-3e-4",
        "task-2-unfreeze-last_2-lr-1e-3", "task-3-unfreeze-last_2-lr-3e-4"], log_of(job, workdir)
    configs = []
    for r in runs:
        check_run(r, 2)
        configs.append(open(os.path.join(r, "config.yaml")).read())
    assert len(set(configs)) == 4


def test_distft_slurm_writes_and_submits_a_multi_node_job(workdir):
    """`distft slurm` fills the template from train's options and submits it. The job runs one
    worker a node: the local cluster's two nodes are one machine under one host name, where two
    srun tasks on each node hang in MPI_Init (a real cluster's nodes are separate hosts); two
    tasks on one node are the single-node template's test."""
    options = ["--cpu_only", "--cpus_per_task=1", "--time=00:20:00", "--model=base_model.keras",
               "--data=shards/train-*.tfrecord", "--num_classes=5", "--epochs=2", "--lr=0.002"]
    written = run([DISTFT, "slurm", "--nodes=2", "--gpus_per_node=2", "--script=four.sbatch", *options],
                  cwd=str(workdir))
    assert written.code == 0, written.out
    script = (workdir / "four.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --ntasks-per-node=2" in script, script
    assert "--gpus-per-node" not in script and "--lr=0.002" in script, script

    result = run([DISTFT, "slurm", "--nodes=2", "--gpus_per_node=1", *options, "--submit"],
                 cwd=str(workdir), env=LOCAL_MPI)
    assert result.code == 0, result.out
    job = re.search(r"submitted job (\d+)", result.out).group(1)
    assert "tensorboard --logdir runs/" in result.out
    state = wait_done(job, workdir)
    log = log_of(job, workdir)
    assert state["JobState"] == "COMPLETED", log
    m = check_run(os.path.join(workdir, "runs", job), 2)
    assert m["workers"] == 2  # --gpus_per_node workers on each node
    assert "rank 1 on n2 (SLURM_NODEID 1)" in log
    assert json.load(open(os.path.join(workdir, "runs", job, "metrics.json")))["launcher"] == "srun"
    assert "lr: 0.002" in open(os.path.join(workdir, "runs", job, "config.yaml")).read()


def test_distft_warns_about_starting_it_the_wrong_way_in_an_allocation(workdir):
    script = os.path.join(workdir, "wrong.sbatch")
    with open(script, "w") as f:
        f.write(f"""#!/bin/bash
#SBATCH --nodes=1
#SBATCH --ntasks=2
#SBATCH --cpus-per-task=1
#SBATCH --output=slurm-%j.out
{DISTFT} train --model=base_model.keras --data='shards/train-*.tfrecord' --num_classes=5 \\
  --epochs=1 --output_dir=runs/plain
{DISTFT} train --model=base_model.keras --data='shards/train-*.tfrecord' --num_classes=5 \\
  --epochs=1 --output_dir=runs/np --np=2
""")
    job = submit(script, workdir)
    state = wait_done(job, workdir)
    log = log_of(job, workdir)
    assert state["JobState"] == "COMPLETED", log
    assert "this Slurm allocation has 2 tasks but distft runs as one process" in log
    assert "--np inside a Slurm allocation starts the workers with horovodrun" in log
    assert json.load(open(os.path.join(workdir, "runs", "np", "metrics.json")))["workers"] == 2


def test_elastic_template_goes_on_without_a_node_whose_worker_died(workdir):
    """elastic.sbatch on the 2-node cluster: horovodrun's workers on n1 and n2 (found by
    discover_hosts.sh); the worker on n2 is killed mid-run and the job finishes on n1."""
    job = submit(cpu_variant("elastic", workdir, nodes=2), workdir, EPOCHS=6, BATCH_SIZE=4,
                 MIN_NODES=1, DISCOVER=os.path.join(SLURM, "discover_hosts.sh"),
                 EXTRA_ARGS="--log_every=20 --commit_every=10")
    deadline = time.time() + 240
    while "epoch 2/6" not in log_of(job, workdir):
        assert time.time() < deadline and job_state(job).get("JobState") in ("PENDING", "RUNNING"), \
            log_of(job, workdir)
        time.sleep(0.5)
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit() and _is_worker_on(int(p), b"n2")]
    assert len(pids) == 1, pids
    os.kill(pids[0], 9)
    state = wait_done(job, workdir)
    log = log_of(job, workdir)
    assert state["JobState"] == "COMPLETED", log
    assert re.search(r"rank \d \(host n2\) lost: continuing with 1 worker from epoch", log), log
    assert check_run(os.path.join(workdir, "runs", job), 6)["workers"] == 1


def _is_worker_on(pid: int, node: bytes) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read().split(b"\0")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
    except OSError:
        return False
    return b"HOROVOD_HOSTNAME=" + node in environ and b"distft" in cmd and b"horovodrun" not in cmd


@pytest.mark.slurm
def test_discovery_script_lists_the_allocations_usable_nodes(cluster, tmp_path):
    from distft.launch import slurm

    script = os.path.join(SLURM, "discover_hosts.sh")
    env = {"SLURM_JOB_NODELIST": "n[1-2]", "SLURM_NTASKS_PER_NODE": "2"}

    def listed() -> list[str]:
        result = run([script], timeout=30, env=env)
        assert result.code == 0, result.out
        return result.lines

    def wait_listed(expected: list[str]) -> None:
        deadline = time.time() + 60
        while listed() != expected and time.time() < deadline:
            time.sleep(0.5)
        assert listed() == expected

    wait_listed(["n1:2", "n2:2"])
    # DOWN kills a job running on the node: wait until n2 runs none (other Slurm tests).
    deadline = time.time() + 120
    while run(["squeue", "-h", "-w", "n2"]).out.strip() and time.time() < deadline:
        time.sleep(0.5)
    try:
        for state in ("DOWN", "DRAIN"):
            run(["scontrol", "update", "nodename=n2", f"state={state}", "reason=distft-test"])
            assert listed() == ["n1:2"], state
            run(["scontrol", "update", "nodename=n2", "state=resume"])
            wait_listed(["n1:2", "n2:2"])
    finally:
        run(["scontrol", "update", "nodename=n2", "state=resume"])
    # `distft slurm --template=elastic` points the job at this script, wherever it runs.
    path = slurm.write_script("elastic", str(tmp_path / "job.sbatch"), 2, 0, 1, "00:10:00", None,
                              None, {"model": "m.keras", "lr": 0.01})
    text = open(path).read()
    assert f"DISCOVER=${{DISCOVER:-{script}}}" in text and "#SBATCH --no-kill" in text
    assert "EXTRA_ARGS=${EXTRA_ARGS:---lr=0.01}" in text
    test = run(["sbatch", "--test-only", path], timeout=30)
    assert "to start at" in test.out, test.out

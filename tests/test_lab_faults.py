"""Faults on a 2-node job in the cluster lab (benchmarks/netlab.py: nodes as network namespaces
on 1 Gbit links, reached by the lab's ssh; one worker a node, launched from the first node as
on a real cluster). Two jobs side by side on a 4-node lab: rank 1 SIGSTOPped in one, rank 1's
link taken down in the other. Each is named with its node within --stall_timeout + 10 s, the
job exits 75 with the resume hint, and --resume goes on to the end."""
import os
import signal
import sys
import time

import pytest

from benchmarks import netlab
from conftest import Job, one_line

pytestmark = pytest.mark.multiworker

TIMEOUT = 15  # --stall_timeout
EPOCHS = 8  # of 20 steps, about a second each: the faults come in epoch 3


def job(lab: netlab.Lab, first: int, demo_data: dict, run_dir: str, log: str, *more: str) -> Job:
    """distft on nodes `first` and `first` + 1, launched from node `first`."""
    hosts = ",".join(f"{netlab.namespace(k)}:1" for k in (first, first + 1))
    args = ["train", f"--model={demo_data['model']}", f"--data={demo_data['data']}", "--num_classes=5",
            "--unfreeze=last:2", f"--epochs={EPOCHS}", "--steps_per_epoch=20", "--batch_size=8", "--log_every=1000",
            f"--output_dir={run_dir}", f"--stall_timeout={TIMEOUT}", "--np=2", f"--hosts={hosts}", *more]
    # HOME: horovodrun caches the interfaces it found under ~/.horovod; the lab's own is empty.
    env = {"PATH": f"{lab.bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": lab.home}
    return Job([*lab.run_in(first), sys.executable, "-m", "distft", *args], log, env=env)


def gone(pid: int, within: float = 10) -> bool:
    """Whether process `pid` ended (or is a zombie, ended but not yet reaped) within `within` s."""
    import psutil

    deadline = time.time() + within
    while time.time() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False


def test_a_stopped_rank_and_a_lost_link_are_named_with_their_node_and_resume_goes_on(demo_data, tmp_path):
    with netlab.Lab(nodes=4, rate="1gbit", bin_dir=str(tmp_path / "bin")) as lab:
        faults = {"stopped": 1, "link down": 3}  # the first node of each job
        runs = {fault: str(tmp_path / fault.replace(" ", "_")) for fault in faults}
        jobs = {fault: job(lab, first, demo_data, runs[fault], f"{runs[fault]}.log")
                for fault, first in faults.items()}
        pids, started, deadline = {}, {}, time.time() + 300
        while len(started) < len(jobs):  # each fault as soon as its job has ended epoch 2
            for fault, j in jobs.items():
                if fault in started:
                    continue
                if f"epoch 2/{EPOCHS}" not in j.out:
                    assert j.proc.poll() is None and time.time() < deadline, j.out[-3000:]
                    continue
                pids[fault] = j.worker_pid(1)
                if fault == "stopped":
                    os.kill(pids[fault], signal.SIGSTOP)
                else:
                    netlab.sh("ip", "-n", netlab.namespace(faults[fault] + 1), "link", "set", netlab.IFACE, "down")
                started[fault] = time.time()
            time.sleep(0.1)
        for fault, j in jobs.items():
            code = j.wait(TIMEOUT + 60)
            ended = time.time() - started[fault]
            line = one_line(j.out, "distft: error:")
            print(f"{fault}: the job ended {ended:.1f} s after the fault (--stall_timeout={TIMEOUT}): {line}")
            node = netlab.namespace(faults[fault] + 1)
            assert code == 75 and ended < TIMEOUT + 10, (code, ended, j.out[-3000:])
            # Rank 0 names it: another node's process state is not known, only its silence.
            assert line.startswith(f"distft: error: rank 1 (host {node}, pid {pids[fault]}) made no progress "
                                   "for "), line
            assert ": no heartbeat (hung hard, or unreachable); last seen in " in line, line
            assert "is intact; run the same command with --resume to continue from epoch " in line, line
            with open(os.path.join(runs[fault], "stall-report.txt")) as f:
                assert f"== rank 1 (host {node}, pid {pids[fault]}): last heartbeat " in f.read()
            assert "Traceback" not in j.out
        assert gone(pids["stopped"]), "the launcher left the stopped rank behind"
        netlab.sh("ip", "-n", netlab.namespace(4), "link", "set", netlab.IFACE, "up")
        resumed = {fault: job(lab, first, demo_data, runs[fault], f"{runs[fault]}-resumed.log", "--resume")
                   for fault, first in faults.items()}
        for fault, j in resumed.items():
            assert j.wait(300) == 0, j.out[-3000:]
            assert "epoch(s) done" in one_line(j.out, "resuming from"), j.out[-3000:]
            assert f"epoch {EPOCHS}/{EPOCHS}" in j.out and os.path.exists(os.path.join(runs[fault], "model.keras"))

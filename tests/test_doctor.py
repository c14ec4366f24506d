"""`distft doctor`: on this machine, and on the emulated cluster (benchmarks/netlab.py: real
network namespaces, tc-shaped links, its fake ssh) with one fault at a time: a slow link, a
down link, a missing interface, data that one node does not see, a host ssh cannot reach."""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import time

import horovod
import keras
import pytest
import tensorflow as tf

import distft
from benchmarks import netlab
from conftest import Result, run
from distft.doctor import Report
from distft.doctor.problems import find as problems_of
from distft.doctor.probe import OPS

DOCTOR = [sys.executable, "-m", "distft", "doctor"]
PREFIX = "distft: doctor: "


def problems(result: Result) -> dict[str, list[str]]:
    """The problem lines of a doctor's output, by the host each names."""
    found: dict[str, list[str]] = {}
    for line in result.lines:
        if line.startswith(PREFIX + "host "):
            host = line[len(PREFIX + "host "):].split(":")[0]
            found.setdefault(host, []).append(line)
    return found


def test_a_healthy_machine_reports_its_real_versions_ops_and_data(tmp_path):
    data = tmp_path / "shards"
    data.mkdir()
    for k in range(3):
        (data / f"train-{k}.tfrecord").write_bytes(b"x" * 10)
    out = tmp_path / "new" / "runs"  # not there yet: checked, and not left behind
    result = run([*DOCTOR, f"--data={data}/train-*.tfrecord", f"--output_dir={out}"], timeout=120)
    assert result.code == 0, result.out
    row = next(line for line in result.lines if line.startswith("localhost ")).split()
    import horovod.tensorflow as hvd

    ops = ",".join(label for name, label in OPS.items() if getattr(hvd, f"{name}_built")())
    assert row[1:7] == [platform.python_version(), tf.__version__, keras.__version__,
                        horovod.__version__, distft.__version__, ops], result.out
    assert "3 files" in " ".join(row) and row[-1] == "writable", result.out
    assert result.lines[-1] == "1 host(s): healthy"
    assert not (tmp_path / "new").exists()
    report = distft.doctor(data=str(data / "*.tfrecord"), output_dir=str(tmp_path))
    assert report.healthy and report.probes["localhost"]["data"]["files"] == 3
    assert report.probes["localhost"]["versions"]["tensorflow"] == tf.__version__
    taken = tmp_path / "taken"
    taken.write_text("a file, not a folder")
    result = run([*DOCTOR, f"--output_dir={taken}"], timeout=120)
    assert result.code == 1 and list(problems(result)) == ["localhost"], result.out
    assert f"--output_dir={taken} is not writable (a file is there" in result.out


def test_a_host_with_other_versions_or_another_horovod_build_is_named():
    """Hosts that differ from the others, found in real reports (this machine's, as three hosts
    whose third has another TensorFlow and a Horovod without MPI)."""
    mine = distft.doctor().probes["localhost"]
    hosts = ["n1", "n2", "n3"]
    odd = {**mine, "versions": {**mine["versions"], "tensorflow": "2.20.0"},
           "ops": [op for op in mine["ops"] if op != "MPI"]}
    found = problems_of(Report(hosts, probes={"n1": mine, "n2": mine, "n3": odd}))
    assert found == [
        f"host n3: TensorFlow 2.20.0 where n1, n2 have {tf.__version__}: install the same version "
        "on every host",
        f"host n3: Horovod built with {','.join(odd['ops'])} where n1, n2 have {','.join(mine['ops'])}: "
        "build Horovod alike everywhere (distft install-horovod --rebuild)"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with netlab.Lab(nodes=3, rate="1gbit", bin_dir=str(tmp_path_factory.mktemp("lab") / "bin")) as lab:
        yield lab


def doctor(lab: netlab.Lab, *flags: str, hosts: str | None = None) -> tuple[Result, float]:
    """The doctor over the lab's nodes (through its fake ssh), and the seconds it took."""
    env = {"PATH": f"{lab.bin_dir}:{os.environ['PATH']}"}
    start = time.monotonic()
    result = run([*DOCTOR, f"--hosts={hosts or lab.hosts()}", *flags], timeout=120, env=env)
    return result, time.monotonic() - start


def test_the_healthy_lab_passes(lab):
    result, _ = doctor(lab)
    assert result.code == 0, result.out
    pairs = [line for line in result.lines if " -> distftlab-node" in line]
    assert len(pairs) == 3 and all("Mbit/s" in p or "Gbit/s" in p for p in pairs), result.out
    for k in (1, 2, 3):  # each reached by the two others
        row = next(line for line in result.lines if line.startswith(netlab.namespace(k) + " "))
        assert f"distftlab-eth {netlab.address(k)}  2/2 " in row, result.out


def test_a_missing_interface_is_named_on_every_host(lab):
    result, _ = doctor(lab, "--network_interface=eth9")
    assert result.code == 1, result.out
    named = problems(result)
    assert set(named) == {netlab.namespace(k) for k in (1, 2, 3)}, result.out
    assert all("--network_interface=eth9 is missing" in lines[0] for lines in named.values())


def test_data_that_one_node_does_not_see_is_named(lab):
    # `ip netns exec NS` mounts each entry of /etc/netns/NS/ over /etc/ENTRY: in node 2 the
    # data folder is this empty one.
    real = "/etc/distftlab-doctor-data"
    hidden = os.path.join(netlab.ETC, netlab.namespace(2), "distftlab-doctor-data")
    try:
        os.makedirs(real)
        for k in range(2):
            with open(os.path.join(real, f"part-{k}.npz"), "wb") as f:
                f.write(b"x")
        os.makedirs(hidden)
        result, _ = doctor(lab, f"--data={real}/*.npz")
    finally:
        shutil.rmtree(real, ignore_errors=True)
        shutil.rmtree(hidden, ignore_errors=True)
    assert result.code == 1, result.out
    named = problems(result)
    assert list(named) == [netlab.namespace(2)], result.out
    assert f"--data={real}/*.npz matches no file here" in named[netlab.namespace(2)][0]


def test_a_host_that_ssh_cannot_reach_is_named_with_sshs_error(lab):
    result, _ = doctor(lab, hosts="distftlab-node1:1,nosuchnode:1")
    assert result.code == 1, result.out
    named = problems(result)
    assert list(named) == ["nosuchnode"], result.out
    assert "no report: distftlab ssh: unknown host nosuchnode" in named["nosuchnode"][0]


def test_a_slow_link_is_named(lab):
    lab.set_rate(3, "20mbit")
    try:
        result, _ = doctor(lab)
    finally:
        lab.set_rate(3, lab.rate)
    assert result.code == 1, result.out
    named = problems(result)
    assert list(named) == [netlab.namespace(3)], result.out
    assert "slow link" in named[netlab.namespace(3)][0]


def test_a_down_link_is_named_within_seconds(lab):
    subprocess.run([*lab.run_in(2), "ip", "link", "set", netlab.IFACE, "down"], check=True)
    try:
        result, took = doctor(lab)
        assert result.code == 1, result.out
        assert list(problems(result)) == [netlab.namespace(2)], result.out
        assert "unreachable" in problems(result)[netlab.namespace(2)][0]
        # The same link down, the interface given: the others' connections time out (3 s).
        given, took_given = doctor(lab, f"--network_interface={netlab.IFACE}")
        assert given.code == 1, given.out
        assert list(problems(given)) == [netlab.namespace(2)], given.out
        assert "unreachable: no connection to or from any other host" in given.out
        assert took < 20 and took_given < 20, (took, took_given)
    finally:
        subprocess.run([*lab.run_in(2), "ip", "link", "set", netlab.IFACE, "up"], check=True)

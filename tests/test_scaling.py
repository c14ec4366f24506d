"""The scaling model (distft/scaling.py): its arithmetic against hand-computed cases, its
direction (efficiency falls with workers, rises with bandwidth and overlap), and `distft
inspect --workers` on a model file written by tf.keras 2.15 (tests/data/keras2_cnn.h5)."""
from __future__ import annotations

import os

import pytest

from distft import api, cli, scaling
from distft.errors import DistftError

CNN = os.path.join(os.path.dirname(__file__), "data", "keras2_cnn.h5")


def test_a_hand_computed_case():
    # 4 workers, 1M params (4 MB), 1 Gbit/s: 2*3/4 * 4e6 B * 8 / 1e9 = 48 ms, + 6 rounds * 0.5 ms.
    [row] = scaling.predict([4], compute_ms=100.0, params=1_000_000, link="1gbit", batch_size=16,
                            latency_ms=0.5)
    assert row["allreduce_ms"] == pytest.approx(51.0)
    assert row["step_ms"] == pytest.approx(151.0)
    assert row["efficiency"] == pytest.approx(100 / 151)
    assert row["samples_per_s"] == pytest.approx(4 * 16 / 0.151)
    # Half of it hidden under the compute: 151 - 25.5.
    [hidden] = scaling.predict([4], 100.0, 1_000_000, "1gbit", 16, latency_ms=0.5, overlap=0.5)
    assert hidden["step_ms"] == pytest.approx(125.5)
    # The hidden part is at most the compute: 100 + 51 - min(51, 10) with a 10 ms step.
    [capped] = scaling.predict([4], 10.0, 1_000_000, "1gbit", 16, latency_ms=0.5, overlap=1.0)
    assert capped["step_ms"] == pytest.approx(51.0)


def test_directions():
    rows = scaling.predict([1, 2, 8, 64, 512], 50.0, 25_000_000, "25gbit", 32)
    assert rows[0]["allreduce_ms"] == 0 and rows[0]["efficiency"] == 1
    efficiency = [r["efficiency"] for r in rows]
    assert efficiency == sorted(efficiency, reverse=True) and efficiency[-1] < efficiency[1]
    throughput = [r["samples_per_s"] for r in rows]
    assert throughput == sorted(throughput)  # more workers still help, less each
    # fp16 halves the bytes, so the bandwidth term of the allreduce.
    assert scaling.gradient_bytes(10, "fp16") * 2 == scaling.gradient_bytes(10) == 40
    full = scaling.allreduce_ms(8, scaling.gradient_bytes(1_000_000), "10gbit", latency_ms=0)
    half = scaling.allreduce_ms(8, scaling.gradient_bytes(1_000_000, "fp16"), "10gbit", latency_ms=0)
    assert half == pytest.approx(full / 2)
    slow, fast = (scaling.predict([8], 50.0, 25_000_000, link, 32)[0]["efficiency"]
                  for link in ("1gbit", "100gbit"))
    assert slow < fast
    assert scaling.link_bits_per_s("2.5Gbit") == 2.5e9 and scaling.link_bits_per_s("100mbit") == 1e8


@pytest.mark.parametrize("kwargs, flag", [({"link": "25gbps"}, "--link"), ({"link": "0gbit"}, "--link"),
                                          ({"workers": [0, 8]}, "--workers"),
                                          ({"compression": "int8"}, "--compression"),
                                          ({"overlap": 1.5}, "--overlap")])
def test_bad_inputs_name_the_flag(kwargs, flag):
    args = {"workers": [8], "link": "25gbit", "batch_size": 32, **kwargs}
    with pytest.raises(DistftError, match=flag):
        scaling.check(**args)


def test_lab_calibration_fits_the_link_and_overlap_on_the_fewest_nodes_and_predicts_the_rest():
    """The cluster lab's calibration (benchmarks/cluster.py): the effective bandwidth comes from
    the 2-node distft-group case (step - compute = 1/1 x 4 MB x 8 / bandwidth: 40 ms, so 0.8
    Gbit/s), distft's overlap from the 2-node distft case (5 of those 40 ms hidden); the 4-node
    cases are predictions from them (4 nodes on this machine's cores)."""
    from benchmarks import cluster

    def case(nodes, contender, step_ms):
        return {"link": "1gbit", "nodes": nodes, "model": "m", "round": 1, "contender": contender,
                "trainable_params": 1_000_000, "step_ms": step_ms}

    cases = [case(2, cluster.ONE_WORKER, 10.0), case(2, "distft-group", 50.0), case(2, "distft", 45.0),
             case(2, "mwms", 60.0), case(4, cluster.ONE_WORKER, 10.0), case(4, "distft-group", 90.0),
             case(4, "distft", 80.0)]
    rows = {(r["nodes"], r["contender"]): r for r in cluster.calibration(cases, {})}
    assert set(rows) == {(2, "distft-group"), (2, "distft"), (4, "distft-group"), (4, "distft")}
    fit = rows[2, "distft-group"]
    assert fit["fitted"] and fit["effective_gbps"] == pytest.approx(0.8) and fit["error"] == pytest.approx(0)
    assert rows[2, "distft"]["fitted"] and rows[2, "distft"]["overlap"] == pytest.approx(5 / 40, abs=0.01)
    assert rows[2, "distft"]["error"] == pytest.approx(0, abs=1e-3)
    share = max(1.0, 4 / (os.cpu_count() or 1))  # workers per core
    comm = 2 * 3 / 4 * 4e6 * 8 / 0.8e9 * 1000
    for contender, hidden, measured in (("distft-group", 0.0, 90.0), ("distft", 5 / 40 * comm, 80.0)):
        four = rows[4, contender]
        predicted = 10.0 * share + comm - min(hidden, 10.0 * share)
        assert not four["fitted"] and four["predicted_ms"] == pytest.approx(predicted, abs=0.1)
        assert four["error"] == pytest.approx((predicted - measured) / measured, abs=1e-3)


def test_inspect_predicts_from_a_measured_step(capsys):
    found = api.inspect(CNN, num_classes=5, unfreeze="last:1", workers=[2, 64], link="10gbit",
                        batch_size=8)
    inputs, rows = found["inputs"], found["rows"]
    assert inputs["compute_measured"] and 0 < inputs["compute_ms"] < 10_000
    assert inputs["trainable_params"] > 0 and [r["workers"] for r in rows] == [2, 64]
    assert rows[0]["compute_ms"] == inputs["compute_ms"] and rows[1]["step_ms"] > rows[0]["step_ms"]
    # The CLI's table, from a given step time: 64 workers' allreduce as the model computes it.
    try:
        cli.main(["inspect", f"--model={CNN}", "--num_classes=5", "--unfreeze=last:1",
                  "--workers=8,64", "--link=1gbit", "--step_ms=40", "--compression=fp16"])
    except SystemExit as e:
        pytest.fail(f"exit {e.code}: {capsys.readouterr()}")
    out = capsys.readouterr().out.splitlines()
    assert "one worker's step 40.0 ms (--step_ms, batch 32)" in out[0], out
    assert out[1].split() == ["workers", "compute", "ms", "allreduce", "ms", "step", "ms",
                              "samples/s", "efficiency"]
    cells = out[3].split()
    expected = scaling.allreduce_ms(64, 2 * inputs["trainable_params"], "1gbit")
    assert cells[0] == "64" and float(cells[2]) == pytest.approx(expected, abs=0.05)


def test_lab_quick_saves_in_its_workdir_not_in_the_tracked_results(tmp_path):
    """`python -m benchmarks cluster --quick` is a look: its result goes to --workdir, so that a
    run leaves the repository's results (tracked files) as they are; --output still wins."""
    import argparse

    from benchmarks import cluster

    def path(**given):
        return cluster.output_path(argparse.Namespace(
            **{"quick": False, "tune": False, "output": None, "workdir": str(tmp_path), **given}))

    quick = path(quick=True)
    assert quick == str(tmp_path / "cluster-quick.json")
    results = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks",
                           "results")
    assert os.path.dirname(path()) == results  # the full lab's result file, kept in the repository
    assert os.path.dirname(path(tune=True)) == results
    assert path(quick=True, output="mine.json") == "mine.json"

"""Bad input: one clear line from rank 0, a non-zero exit, no hang, no traceback."""
import os

import numpy as np
import pytest

from conftest import distft
from distft.demo import write_tfrecords


def one_error(result, expected: str):
    assert result.code == 2, result.out[-3000:]
    errors = [l for l in result.lines if "error:" in l]
    assert len(errors) == 1, result.out[-3000:]
    assert expected in errors[0], errors[0]
    assert "Traceback" not in result.out
    return errors[0]


@pytest.mark.parametrize("args, expected", [
    (["--epoch=3"], "unknown option --epoch: did you mean --epochs?"),
    (["--epochs=0"], "--epochs must be positive"),
    (["--batch_size=-4"], "--batch_size must be positive"),
    (["--optimizer=lbfgs"], "--optimizer=lbfgs is not one of"),
])
def test_option_errors_before_any_work(tmp_path, args, expected):
    result = distft(["train", "--model=m.h5", "--data=d", f"--output_dir={tmp_path}/o", *args],
                    timeout=60)
    one_error(result, expected)
    assert not os.path.exists(f"{tmp_path}/o")


@pytest.fixture(scope="module")
def bad_inputs(demo_data, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(0)
    write_tfrecords(rng.random((40, 10), dtype=np.float32), rng.integers(0, 5, 40),
                    str(folder / "wide-{}.tfrecord"), 2)
    write_tfrecords(rng.random((1, 64), dtype=np.float32), np.array([1]), str(folder / "one-{}.tfrecord"), 1)
    return str(folder)


@pytest.mark.multiworker
@pytest.mark.parametrize("change, expected", [
    ({"--model": "missing.h5"}, "--model=missing.h5 does not exist"),
    ({"--unfreeze": "from:conv9"}, "no layer named 'conv9'; close matches: conv2, conv1"),
    ({"--data": "nothing/*.tfrecord"}, "matches no data file"),
    ({"--num_classes": "3"}, "labels span [0, 4] but the model has 3 classes"),
    ({"--data": "{bad}/wide-*.tfrecord"}, "records have 10 features but the model's input"),
    ({"--data": "{bad}/one-*.tfrecord"}, "has 1 training records for 2 workers"),
])
def test_bad_input_on_two_workers(demo_data, bad_inputs, tmp_path, change, expected):
    args = {"--model": demo_data["model"], "--data": demo_data["data"], "--num_classes": "5",
            "--unfreeze": "last:2", "--output_dir": str(tmp_path / "run"), "--np": "2"}
    args.update({k: v.format(bad=bad_inputs) for k, v in change.items()})
    result = distft(["train", *(f"{k}={v}" for k, v in args.items())], timeout=120)
    one_error(result, expected)
    assert not os.path.exists(tmp_path / "run" / "model.keras")

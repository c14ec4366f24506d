"""Bad input: one clear line from rank 0, a non-zero exit, no hang, no traceback."""
import os
import time

import numpy as np
import pytest

from conftest import SharedLaunch, distft, horovodrun
from distft.demo import write_tfrecords


def one_error(result, expected: str, launcher: bool = False):
    """One error line naming the problem; no worker traceback. distft itself exits 2; a
    user's own horovodrun exits non-zero (and prints its own traceback)."""
    assert result.code != 0 if launcher else result.code == 2, result.out[-3000:]
    errors = [l for l in result.lines if "distft: error:" in l]
    assert len(errors) == 1 and expected in errors[0], result.out[-3000:]
    assert not [l for l in result.lines if "Traceback" in l and (not launcher or "]<std" in l)]
    return errors[0]


@pytest.mark.parametrize("args, expected", [
    (["--epoch=3"], "unknown option --epoch: did you mean --epochs?"),
    (["--epochs=0"], "--epochs must be positive"),
    (["--batch_size=-4"], "--batch_size must be positive"),
    (["--optimizer=lbfgs"], "--optimizer=lbfgs is not one of"),
    (["--profile=15:5"], "--profile=15:5 is not START:END with 1 <= START <= END: pass steps, e.g. "
                         "--profile=5:15"),
    (["--histograms=-1"], "--histograms must be >= 0 (epochs between histograms; 0: off), got -1: "
                          "pass e.g. --histograms=1"),
    (["--steps_per_execution=0"], "--steps_per_execution must be positive, got 0"),
    (["--callbacks=__import__('os').system('ls')"], "--callbacks: __import__('os').system in "
     "__import__('os').system('ls') is not a class name"),
    (["--callbacks=keras.callbacks.EarlyStopping(patience=2,"], "not a call ("),
])
def test_option_errors_before_any_work(tmp_path, args, expected):
    result = distft(["train", "--model=m.h5", "--data=d", f"--output_dir={tmp_path}/o", *args],
                    timeout=60)
    one_error(result, expected)
    assert not os.path.exists(f"{tmp_path}/o")


@pytest.mark.multiworker
@pytest.mark.parametrize("controller", ["gloo", "mpi"])
def test_bad_input_prints_nothing_but_the_error(demo_data, tmp_path, controller):
    """distft --np relays no launcher chatter (mpirun's abort notice, Horovod's tracebacks)."""
    result = distft(["train", "--model=missing.h5", f"--data={demo_data['data']}",
                     "--num_classes=5", f"--output_dir={tmp_path}/run", "--np=2",
                     f"--controller={controller}"], timeout=120)
    assert result.code == 2, result.out[-3000:]
    assert [l for l in result.lines if l.strip()] == \
        [l for l in result.lines if l.startswith("distft: error: --model=missing.h5")], result.out


@pytest.mark.parametrize("first", ["error", "death"])
def test_the_one_line_names_the_first_failure_not_the_teardown(capsys, first):
    """horovodrun's (Gloo) lines when rank 0 reports bad input while rank 1 is still in its
    set-up (its stop handler defers SIGTERM, so the launcher SIGKILLs it 5 s later: a CI run
    once named that death instead of the error), and when rank 1 is killed (OOM), after which
    rank 0's collective fails."""
    from distft.errors import DistftError
    from distft.launch.spawn import JobLog

    error = "[0]<stderr>:distft: error: --data=x/*.tfrecord matches no data file: pass ...\n"
    collective = "[0]<stderr>:distft: error: rank 0: training failed: UnknownError: ...\n"
    died = "Process 1 exit with status code 137.\n"
    if first == "error":
        lines = ["[0]<stderr>:distft: exit code 2\n", error, "Process 0 exit with status code 2.\n",
                 "Terminating remaining workers after failure of Process 0.\n", died]
    else:
        lines = ["[0]<stderr>:distft: exit code 1\n", collective, died, "Terminating remaining workers after failure of Process 1.\n",
                 "Process 0 exit with status code 1.\n"]
    log = JobLog()
    for line in lines:
        log.relay(line)
    with pytest.raises(DistftError) as failed:
        log.finish(1)
    assert (str(failed.value), failed.value.exit_code) == (
        ("distft: error: --data=x/*.tfrecord matches no data file: pass ...", 2) if first == "error"
        else ("rank 1 died (SIGKILL, exit code 137); the job was stopped", 1))
    assert capsys.readouterr().out == ""  # the launcher's lines are not relayed


@pytest.mark.parametrize("tag", ["[{}]", "[1,{}]"], ids=["gloo", "mpi"])
def test_the_exit_code_is_that_of_the_rank_whose_line_is_shown(capsys, tag):
    """Rank 0 cannot write a checkpoint (disk full: exit 75, to --resume); rank 1's collective
    fails in turn and exits (1) first, and the launcher ends rank 0: a CI run once exited 1.
    Each worker says its code on a line of its own (not relayed): the job exits 75, the code of
    the rank whose line it prints."""
    from distft.errors import DistftError
    from distft.launch.spawn import JobLog

    log = JobLog()
    for rank, line in [(0, "distft: exit code 75"), (0, "distft: error: rank 0: could not write the epoch 4 checkpoint"),
                       (1, "distft: exit code 1"), (1, "distft: error: rank 1: training failed: UnknownError: ...")]:
        log.relay(f"{tag.format(rank)}<stderr>:{line}\n")
    for line in ["Process 1 exit with status code 1.\n", "Terminating remaining workers after failure of Process 1.\n"]:
        log.relay(line)
    with pytest.raises(DistftError) as failed:
        log.finish(1)
    assert failed.value.exit_code == 75
    assert "exit code" not in capsys.readouterr().err


# Bad input on 2 workers: each case's options over a good run's, and its one error line.
ON_TWO_WORKERS = [
    ({"--model": "missing.h5"}, "--model=missing.h5 does not exist"),
    ({"--unfreeze": "from:conv9"}, "no layer named 'conv9'; close matches: conv2, conv1"),
    ({"--data": "nothing/*.tfrecord"}, "matches no data file"),
    ({"--num_classes": "3"}, "labels span [0, 4] but the model has 3 classes"),
    ({"--data": "{b}/wide-*.tfrecord"}, "records have 10 features but the model's input"),
    ({"--data": "{b}/one-*.tfrecord"}, "has 1 training records for 2 workers"),
    ({"--profile": "5:15", "--profile_ranks": "0,2"}, "--profile_ranks=0,2 names rank 2 but the job "
                                                      "has 2 worker(s): pass ranks below 2"),
    ({"--model": "{b}/model.h5"}, "is neither a .keras (zip) nor an .h5 (HDF5) file"),
    ({"--model": "{b}/truncated.h5"}, "is a damaged keras file"),
    ({"--data": "{b}/corrupt"}, "damaged tfrecord file"),
    ({"--data": "{b}/bad.csv", "--label": "label"}, "bad.csv:251: column 'p0' is not numeric ('oops')"),
    ({"--output_dir": "{b}/a_file"}, "is a file: pass a folder path"),
    ({"--output_dir": "/proc/distft-run"}, "is not writable"),
    ({"--config": "{b}/broken.yaml"}, "is not valid YAML at line"),
    ({"--config": "{b}/unknown.yaml"}, "unknown option --learning_rate"),
    ({"--learning_rate": "0.1"}, "unknown option --learning_rate: did you mean --lr"),
    ({"--epochs": "0"}, "--epochs must be positive"),
    ({"--lr": "-0.1"}, "--lr must be positive"),
    ({"--batch_size": "0"}, "--batch_size must be positive"),
]


def corrupt_copy(src: str, dst: str) -> None:
    data = bytearray(open(src, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(dst, "wb").write(bytes(data))


def write_bad_inputs(folder, demo_data) -> None:
    """Broken and misfitting files: data of the wrong width or too few records, a model file
    that is not one or is cut short, a shard with a flipped byte, a CSV with a bad cell past the
    rows read to learn its schema, a file where a folder belongs, broken and unknown YAML."""
    import glob
    import shutil

    rng = np.random.default_rng(0)
    write_tfrecords(rng.random((40, 10), dtype=np.float32), rng.integers(0, 5, 40),
                    str(folder / "wide-{}.tfrecord"), 2)
    write_tfrecords(rng.random((1, 64), dtype=np.float32), np.array([1]), str(folder / "one-{}.tfrecord"), 1)
    (folder / "model.h5").write_text("this is not a model\n")
    model = open(demo_data["model"], "rb").read()
    (folder / "truncated.h5").write_bytes(model[: len(model) // 3])
    os.makedirs(folder / "corrupt")
    shards = sorted(glob.glob(demo_data["data"]))
    for s in shards[:-1]:
        shutil.copy(s, folder / "corrupt")
    corrupt_copy(shards[-1], str(folder / "corrupt" / os.path.basename(shards[-1])))
    rows = ["label," + ",".join(f"p{i}" for i in range(64))]
    rows += [f"{i % 5}," + ",".join(["0.5"] * 64) for i in range(300)]
    rows[250] = rows[250].replace("0.5", "oops", 1)
    (folder / "bad.csv").write_text("\n".join(rows) + "\n")
    (folder / "a_file").write_text("x")
    (folder / "broken.yaml").write_text("epochs: [3\n")
    (folder / "unknown.yaml").write_text("learning_rate: 0.1\n")


@pytest.fixture(scope="module")
def bad_runs(demo_data, tmp_path_factory):
    """Every case of ON_TWO_WORKERS as `distft train` on the 2 workers of one horovodrun launch
    (tests/cli_runner.py), each into its own output folder that already holds earlier work."""
    folder = tmp_path_factory.mktemp("bad")
    write_bad_inputs(folder, demo_data)
    runs = []
    for i, (change, _) in enumerate(ON_TWO_WORKERS):
        out = folder / f"run-{i}"
        out.mkdir()
        (out / "keep.txt").write_text("earlier work")
        args = {"--model": demo_data["model"], "--data": demo_data["data"], "--num_classes": "5",
                "--unfreeze": "last:2", "--output_dir": str(out)}
        args.update({k: v.format(b=folder) for k, v in change.items()})
        runs.append({"name": f"case-{i}", "argv": ["train", *(f"{k}={v}" for k, v in args.items())],
                     "cwd": str(folder), "launch": i % 2})  # two launches, side by side
    launch = SharedLaunch(str(folder), runs)
    return lambda i: (folder / f"run-{i}", launch)


@pytest.mark.multiworker
@pytest.mark.parametrize("case", range(len(ON_TWO_WORKERS)),
                         ids=[f"{'-'.join(c)}-{i}" for i, (c, _) in enumerate(ON_TWO_WORKERS)])
def test_bad_input_on_two_workers(bad_runs, case):
    """One error line, from rank 0, exit code 2, within a minute; the output folder untouched."""
    out, launch = bad_runs(case)
    code, lines = launch.ended(f"case-{case}", every_rank=True)
    errors = [l for l in lines.splitlines() if "distft: error:" in l]
    assert code == 2 and len(errors) == 1, lines[-3000:]
    assert errors[0].startswith("[0]<stderr>:") and ON_TWO_WORKERS[case][1] in errors[0], errors
    assert "Traceback" not in lines, lines[-3000:]
    assert launch.status[f"case-{case}"]["seconds"] < 60
    assert sorted(os.listdir(out)) == ["keep.txt"] and (out / "keep.txt").read_text() == "earlier work"


@pytest.mark.multiworker
def test_bad_input_under_a_users_own_horovodrun(demo_data, tmp_path):
    """The launcher's path of the cases above: horovodrun ends the job with rank 0's one line,
    quickly, though rank 1 raised the same error (it waits for rank 0 to report it)."""
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("earlier work")
    started = time.time()
    result = horovodrun(["train", f"--model={demo_data['model']}", "--data=nothing/*.tfrecord",
                         "--num_classes=5", f"--output_dir={out}"], stock=True, timeout=90)
    assert time.time() - started < 60
    assert one_error(result, "matches no data file", launcher=True).startswith("[0]<stderr>:")
    assert sorted(os.listdir(out)) == ["keep.txt"]

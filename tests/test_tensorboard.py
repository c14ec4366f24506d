"""Rank 0's TensorBoard log, read from the event files and from a real tensorboard server: one
2-worker run with histograms and a profile window serves every view; one run with a slowed rank."""
import contextlib
import glob
import gzip
import json
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import pytest
import tensorflow as tf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import USER_CALLBACKS, horovodrun, remove_cgroup

pytestmark = pytest.mark.multiworker


@pytest.fixture(scope="module")
def run_dir(demo_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("tb") / "run")
    result = horovodrun(["train", f"--model={demo_data['model']}", f"--data={demo_data['data']}",
                         f"--val_data={demo_data['val_data']}", "--num_classes=5", "--epochs=3",
                         "--log_every=4", "--warmup_epochs=1", "--histograms=1", "--profile=5:15",
                         f"--output_dir={out}"])
    assert result.code == 0, result.out[-3000:]
    return out


def scalars(folder):
    acc = EventAccumulator(folder, size_guidance={"tensors": 0})
    acc.Reload()
    kinds = {tag: acc.SummaryMetadata(tag).plugin_data.plugin_name for tag in acc.Tags()["tensors"]}
    return {tag: [(e.step, float(tf.make_ndarray(e.tensor_proto)) if kind == "scalars" else None)
                  for e in acc.Tensors(tag)] for tag, kind in kinds.items()}


def test_event_files_hold_epoch_step_and_run_scalars(run_dir):
    tb = os.path.join(run_dir, "tensorboard")
    assert len(glob.glob(f"{tb}/train/events.out.tfevents.*")) == 1  # one writer: rank 0
    train, val = scalars(f"{tb}/train"), scalars(f"{tb}/validation")
    for tag in ("epoch_loss", "epoch_accuracy", "epoch_learning_rate", "epoch_samples_per_sec",
                "epoch_step_time_ms"):
        assert [s for s, _ in train[tag]] == [1, 2, 3], tag
    assert [s for s, _ in val["epoch_accuracy"]] == [0, 1, 2, 3]  # 0: before fine-tuning
    assert val["epoch_accuracy"][-1][1] > val["epoch_accuracy"][0][1]
    steps = json.load(open(os.path.join(run_dir, "metrics.json")))["steps_per_epoch"]
    assert [s for s, _ in train["batch_loss"]] == list(range(4, 3 * steps + 1, 4))
    assert [s for s, _ in train["batch_samples_per_sec"]] == list(range(4, 3 * steps + 1, 4))
    lr = dict(train["batch_learning_rate"])
    assert lr[4] < lr[max(lr)]  # warm-up from lr to 2 x lr over the first epoch
    assert abs(lr[max(lr)] - 2e-3) < 1e-9
    assert train["params/trainable"][0][1] == 5 * 64 + 5
    assert train["workers"][0][1] == 2
    assert "_hparams_/session_start_info" in train


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real `tensorboard` process on a free port, queried over HTTP."""

    def __init__(self, logdir: str):
        self.port = free_port()
        exe = os.path.join(os.path.dirname(sys.executable), "tensorboard")
        self.proc = subprocess.Popen([exe, "--logdir", logdir, "--host", "127.0.0.1", "--port",
                                      str(self.port)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def raw(self, path: str) -> bytes:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/{path}", timeout=30) as r:
            body = r.read()
            return gzip.decompress(body) if r.headers.get("Content-Encoding") == "gzip" else body

    def get(self, path: str):
        return json.loads(self.raw(path))

    def wait_for(self, path: str, ready) -> object:
        """`path`'s JSON once `ready(it)` holds (the server loads the event files lazily)."""
        value, deadline = None, time.time() + 90
        while time.time() < deadline:
            try:
                value = self.get(path)
                if ready(value):
                    return value
            except OSError:
                pass
            assert self.proc.poll() is None, self.proc.stdout.read().decode()[-2000:]
            time.sleep(0.25)
        raise AssertionError(f"{path} never ready: {value}")

    def scalars(self, run: str, tag: str) -> list[tuple[int, float]]:
        points = self.get(f"data/plugin/scalars/scalars?run={run}&tag={urllib.parse.quote(tag)}")
        return [(step, value) for _, step, value in points]


@pytest.fixture(scope="module")
def server(run_dir):
    tb = Server(os.path.join(run_dir, "tensorboard"))
    try:
        tb.wait_for("data/plugin/scalars/tags", lambda tags: {"validation", "rank_1"} <= set(tags))
        yield tb
    finally:
        tb.proc.terminate()
        tb.proc.wait(timeout=30)


def test_real_tensorboard_server_serves_the_scalars(server):
    tags = server.get("data/plugin/scalars/tags")
    assert {"epoch_loss", "epoch_accuracy", "batch_learning_rate"} <= set(tags["train"])
    assert {"epoch_loss", "epoch_accuracy"} <= set(tags["validation"])
    points = server.scalars("validation", "epoch_accuracy")
    assert [step for step, _ in points] == [0, 1, 2, 3]
    assert all(0.0 <= value <= 1.0 for _, value in points)


RANK_TAGS = ["ranks/step_time_ms", "ranks/busy_ms", "ranks/allreduce_wait_ms", "ranks/input_wait_ms",
             "ranks/input_share", "ranks/over_median_ms", "ranks/over_own_best"]


def test_per_rank_health_one_series_per_rank_overlaid(server):
    tags = server.get("data/plugin/scalars/tags")
    busy = {}
    for rank in ("rank_0", "rank_1"):
        assert set(RANK_TAGS) <= set(tags[rank]), tags[rank]
        figures = {tag: dict(server.scalars(rank, tag)) for tag in RANK_TAGS}
        busy[rank] = figures["ranks/busy_ms"]
        # Straggler scores: over the median rank (of 2, their mean) and over its own best so far.
        for epoch in (1, 2, 3):
            median = (dict(server.scalars("rank_0", "ranks/busy_ms"))[epoch] +
                      dict(server.scalars("rank_1", "ranks/busy_ms"))[epoch]) / 2
            assert figures["ranks/over_median_ms"][epoch] == pytest.approx(busy[rank][epoch] - median, abs=1e-3)
            best = min(busy[rank][e] for e in range(1, epoch + 1))
            assert figures["ranks/over_own_best"][epoch] == pytest.approx(busy[rank][epoch] / best, rel=1e-4)
        assert all(sorted(points) == [1, 2, 3] for points in figures.values()), figures
        for epoch in (1, 2, 3):
            step = figures["ranks/step_time_ms"][epoch]
            parts = sum(figures[f"ranks/{p}_ms"][epoch] for p in ("busy", "allreduce_wait", "input_wait"))
            assert step > 0 and abs(parts - step) < 1e-3 * step, (rank, epoch, figures)
            assert 0.0 <= figures["ranks/input_share"][epoch] < 1.0
            assert figures["ranks/allreduce_wait_ms"][epoch] > 0  # two workers: a real allreduce
    spread = server.scalars("train", "epoch_rank_spread")
    assert [step for step, _ in spread] == [1, 2, 3] and all(value >= 1.0 for _, value in spread)
    layout = server.get("data/plugin/custom_scalars/layout")
    charts = {tag for c in layout["category"][0]["chart"] for tag in c["multiline"]["tag"]}
    assert {f"^{tag}$" for tag in RANK_TAGS} <= charts


def test_histograms_of_trainable_weights_each_epoch_frozen_once(server):
    tags = server.get("data/plugin/histograms/tags")["train"]
    assert {"weights/distft_head/kernel", "weights/distft_head/bias", "frozen/conv1/kernel",
            "frozen/features/kernel"} <= set(tags), sorted(tags)
    def steps(tag):
        return [h[1] for h in server.get(f"data/plugin/histograms/histograms?run=train&tag={tag}")]
    assert steps("weights/distft_head/kernel") == [1, 2, 3]
    assert steps("frozen/conv1/kernel") == [0]
    moved = server.scalars("train", "moved/distft_head")
    assert [step for step, _ in moved] == [1, 2, 3]
    assert 0 < moved[0][1] < moved[-1][1]  # the head moves away from where it started
    assert not [t for t in server.get("data/plugin/scalars/tags")["train"] if t.startswith("moved/conv")]


def test_confusion_matrix_image_and_per_class_accuracy(server):
    images = server.get("data/plugin/images/images?run=validation&tag=confusion_matrix")
    assert [image["step"] for image in images] == [0, 1, 2, 3]  # 0: before fine-tuning
    png = server.raw(f"data/plugin/images/individualImage?{images[-1]['query']}")
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    accuracy = [tag for tag in server.get("data/plugin/scalars/tags")["validation"]
                if tag.startswith("class_accuracy/")]
    assert len(accuracy) == 5
    for tag in accuracy:
        assert [step for step, value in server.scalars("validation", tag) if 0 <= value <= 1] == [0, 1, 2, 3]


def test_config_text_and_model_graph(server):
    assert server.get("data/plugin/text/tags") == {"train": ["config"]}
    text = server.get("data/plugin/text/text?run=train&tag=config")[0]["text"]
    assert "num_classes" in text and "histograms" in text and "<table>" in text
    assert server.get("data/plugin/graphs/info")["train"]["run_graph"] is True
    graph = server.raw("data/plugin/graphs/graph?run=train").decode()
    assert "distft_head" in graph


def test_profile_run_in_the_profile_tab(server):
    assert server.get("data/plugins_listing")["profile"]["enabled"] is True
    runs = server.wait_for("data/plugin/profile/runs", bool)
    assert len(runs) == 1  # rank 0 only
    tools = server.get(f"data/plugin/profile/run_tools?run={runs[0]}")
    assert "trace_viewer@" in tools and "overview_page" in tools


def test_a_rank_is_slow_only_over_both_floors():
    """Over the median by the fraction --slow_rank and by SLOW_RANK_MS (1 ms): a fraction of a
    millisecond on a tiny step is noise, as is a few ms on a long one."""
    from distft.train.callbacks.rank_health import is_slow

    assert not is_slow(0.8, 0.7, 0.2)  # 14% over, but by 0.1 ms: the tiny job
    assert not is_slow(1.9, 1.0, 0.2)  # 90%, but under a millisecond
    assert not is_slow(206.0, 200.0, 0.2)  # 6 ms, but 3%
    assert is_slow(39.3, 29.4, 0.2) and not is_slow(39.3, 29.4, 0.4)


def test_slow_rank_is_named_with_its_host_and_cores(demo_data, tmp_path):
    """Rank 1 moves itself into a cgroup with a CPU quota of a tenth of a core (the kernel's CFS
    bandwidth control) as training starts: it computes several times slower for real, however
    busy the machine is otherwise."""
    core = sorted(os.sched_getaffinity(0))[1]  # distft pins local rank 1 to the second core
    with cpu_quota(share=0.1) as cgroup:
        result = horovodrun(["train", f"--model={demo_data['model']}", f"--data={demo_data['data']}",
                             "--num_classes=5", "--unfreeze=all", "--batch_size=128",
                             "--steps_per_epoch=8", "--epochs=4", "--slow_rank=0.1", "--slow_rank_epochs=2",
                             "--cache=memory",  # the quota slows its compute, not its input pipeline
                             f"--import={USER_CALLBACKS}",
                             f"--callbacks=user_callbacks.Throttle(rank=1, cgroup='{cgroup}')",
                             f"--output_dir={tmp_path}/run"])
    assert result.code == 0, result.out[-3000:]
    named = [l for l in result.lines if "is slow: busy" in l]
    print("\n".join(named))
    assert named and all(f"rank 1 (localhost cores {core}) is slow" in l for l in named), result.out[-3000:]


@contextlib.contextmanager
def cpu_quota(share: float, period_us: int = 20000):
    """A new cpu cgroup (v1's `cpu` controller, or v2's `cpu.max`) beside this process's, whose
    processes together get `share` of one core; removed once its processes have ended."""
    with open("/proc/self/cgroup") as f:
        lines = [line.rstrip("\n").split(":", 2) for line in f]
    for _, controllers, path in lines:
        if "cpu" in controllers.split(","):
            mount = os.path.join("/sys/fs/cgroup", controllers)
            mount = mount if os.path.isdir(mount) else "/sys/fs/cgroup/cpu"
            limits = {"cpu.cfs_period_us": period_us, "cpu.cfs_quota_us": int(share * period_us)}
            break
    else:
        mount, path = "/sys/fs/cgroup", next(path for _, controllers, path in lines if controllers == "")
        limits = {"cpu.max": f"{int(share * period_us)} {period_us}"}
    folder = os.path.join(mount, path.lstrip("/"), f"distft-slow-test-{os.getpid()}")
    os.mkdir(folder)
    try:
        for name, value in limits.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(str(value))
        yield folder
    finally:
        remove_cgroup(folder)

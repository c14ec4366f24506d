"""The stall watchdog's parts, in one process: the verdict on what the ranks report (a pure
function), the progress record, /proc's blocked read, and the side channel over real sockets.
The whole watchdog on real workers: tests/test_faults.py."""
import os
import threading
import time

from distft.train.stall import proc
from distft.train.stall.channel import Hub, Link
from distft.train.stall.progress import Progress, horovod_call
from distft.train.stall.verdict import RankView, judge

TIMEOUT = 60


def beat(phase: str, seq: int = 5, collective: str | None = None, history=(), waiting: bool | None = None,
         read: str | None = None) -> dict:
    """A heartbeat as Progress.snapshot makes it (`collective`: the one waited in, numbered `seq`)."""
    inside = [seq, collective] if collective else None
    entered = [[n, name] for n, name in enumerate(history, 1)] + ([inside] if inside else [])
    return {"phase": f"collective #{seq} {collective}" if collective else phase, "seq": seq,
            "waiting": bool(collective) or phase.startswith("train step") if waiting is None else waiting,
            "collective": inside, "collectives": entered, "read": read}


def view(rank: int, b: dict, silent: float = 0.5, still: float = 70, state: str | None = None) -> RankView:
    return RankView(rank, f"n{rank + 1}", 100 + rank, silent, still, b, state)


def test_a_rank_whose_heartbeat_stopped_is_named_with_its_state():
    views = [view(0, beat("", collective="gather from RankHealth.on_epoch_end")),
             view(1, beat("train step 38 of epoch 2"), silent=70, state="stopped (state T)")]
    verdict = judge(views, TIMEOUT)
    assert verdict.ranks == (1,)
    assert verdict.line == ("rank 1 (host n2, pid 101) made no progress for 70 s: stopped (state T); "
                            "last seen in train step 38 of epoch 2")
    views[1] = view(1, beat("train step 38 of epoch 2"), silent=70)  # on another host
    assert "no heartbeat (hung hard, or unreachable)" in judge(views, TIMEOUT).line


def test_nothing_is_decided_before_the_timeout_or_while_every_rank_computes():
    moving = [view(0, beat("train step 3 of epoch 1"), still=5), view(1, beat("train step 3 of epoch 1"))]
    assert judge(moving, TIMEOUT) is None  # rank 0 moved 5 s ago
    computing = [view(r, beat("callback Validation.on_epoch_end")) for r in (0, 1)]
    assert judge(computing, TIMEOUT) is None  # a long validation everywhere is not a stall


def test_a_rank_blocked_in_a_read_is_named_with_the_file():
    views = [view(0, beat("train step 5 of epoch 3")),
             view(1, beat("train step 5 of epoch 3", read="in read of /nfs/train-01.tfrecord"))]
    verdict = judge(views, TIMEOUT)
    assert verdict.ranks == (1,)
    assert "made no progress for 70 s: in read of /nfs/train-01.tfrecord (in train step 5 of epoch 3)" \
        in verdict.line


def test_a_rank_busy_elsewhere_while_the_others_wait_is_named():
    views = [view(0, beat("", collective="gather from RankHealth.on_epoch_end")),
             view(1, beat("callback Hang.on_epoch_end")),
             view(2, beat("", collective="gather from RankHealth.on_epoch_end"))]
    verdict = judge(views, TIMEOUT)
    assert verdict.ranks == (1,)
    assert verdict.line == ("rank 1 (host n2, pid 101) made no progress for 70 s: in callback "
                            "Hang.on_epoch_end, while ranks 0, 2 wait in collective #5 gather from "
                            "RankHealth.on_epoch_end")


def test_rank_0_alone_in_a_collective_is_named_as_divergent():
    """A callback that calls a collective on rank 0 only: rank 0 waits in a collective that
    rank 1 never entered, rank 1 in the next one it has entered every epoch."""
    every_epoch = ["allreduce distft_evaluate from summed_results", "gather from RankHealth.on_epoch_end"]
    views = [view(0, beat("", 9, "broadcast from Rank0Only.on_epoch_end", every_epoch * 4)),
             view(1, beat("", 9, "allreduce distft_evaluate from summed_results", every_epoch * 4))]
    verdict = judge(views, TIMEOUT)
    assert verdict.ranks == (0,)
    assert verdict.line.startswith(
        "rank 0 (host n1, pid 100) entered a different collective from the others: collective #9 "
        "broadcast from Rank0Only.on_epoch_end, while rank 1 is in collective #9 allreduce "
        "distft_evaluate from summed_results")


def test_a_horovod_call_of_the_users_own_code_is_named_as_the_divergence():
    """Rank 0's callback called Horovod itself (its own collective, not numbered by distft);
    rank 1 went on to distft's next collective, which it first enters: rank 0 is named."""
    call = "Horovod allreduce from user_callbacks.py:40 in on_epoch_end"
    rank0 = dict(beat("", 4, history=["allreduce distft_evaluate from summed_results"] * 3),
                 phase=f"{call} (not one of distft's collectives; in callback AgreedStop.on_epoch_end)",
                 collective=[None, call], waiting=True)
    views = [view(0, rank0), view(1, beat("", 5, "gather distft_callbacks_stop"))]
    verdict = judge(views, TIMEOUT)
    assert verdict.ranks == (0,)
    assert verdict.line.startswith(f"rank 0 (host n1, pid 100) entered a different collective from the "
                                   f"others: {call} (not one of distft's collectives"), verdict.line


def test_a_thread_inside_horovods_python_is_found_with_its_caller(tmp_path):
    """horovod_call walks a thread's frames: the outermost Horovod one and the line that called it."""
    package = tmp_path / "horovod"
    package.mkdir()
    (package / "fake_ops.py").write_text("def allreduce(event):\n    event.wait(10)\n")
    import importlib.util

    spec = importlib.util.spec_from_file_location("fake_ops", package / "fake_ops.py")
    ops = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ops)
    release = threading.Event()

    def on_epoch_end():
        ops.allreduce(release)

    thread = threading.Thread(target=on_epoch_end)
    thread.start()
    try:
        deadline = time.time() + 5
        while horovod_call(thread.ident) is None and time.time() < deadline:
            time.sleep(0.01)
        found = horovod_call(thread.ident)
    finally:
        release.set()
        thread.join()
    line = on_epoch_end.__code__.co_firstlineno + 1
    assert found == f"allreduce from test_stall.py:{line} in on_epoch_end", found
    assert horovod_call(threading.get_ident()) is None  # this thread is in no Horovod code


def test_the_odd_rank_out_is_named_and_an_uneven_loop_names_the_rank_that_left_it():
    place = "allreduce distft_evaluate from summed_results"
    three = [view(0, beat("", 7, place)), view(1, beat("", 7, "gather from Odd.on_epoch_end")),
             view(2, beat("", 7, place))]
    assert judge(three, TIMEOUT).ranks == (1,)
    uneven = [view(0, beat("train step 101 of epoch 2", 7)),  # more batches than rank 1
              view(1, beat("", 8, place, [place] * 7))]
    verdict = judge(uneven, TIMEOUT)
    assert verdict.ranks == (1,) and "while rank 0 is in train step 101 of epoch 2" in verdict.line


def test_every_rank_waiting_at_the_same_place_names_them_all():
    views = [view(r, beat("train step 4 of epoch 1")) for r in (0, 1)]
    verdict = judge(views, TIMEOUT)
    assert verdict.ranks == (0, 1) and verdict.line.count("made no progress for 70 s: in train step 4") == 2


def test_progress_records_phases_steps_and_numbered_collectives():
    p = Progress(history=3)
    assert p.snapshot()["phase"] == "start-up"
    p.step(1, 36)
    moved = p.moves
    assert p.snapshot()["phase"] == "train step 37 of epoch 2" and p.snapshot()["waiting"]
    with p.phase("callback Validation.on_epoch_end"):
        with p.collective("allreduce distft_evaluate from summed_results"):
            snap = p.snapshot()
            assert snap["phase"] == "collective #1 allreduce distft_evaluate from summed_results"
            assert snap["waiting"] and snap["collective"] == [1, "allreduce distft_evaluate from summed_results"]
        assert p.snapshot()["phase"] == "callback Validation.on_epoch_end" and not p.snapshot()["waiting"]
    snap = p.snapshot()
    assert p.moves > moved and snap["last_step"] == "epoch 2 step 37" and snap["seq"] == 1
    assert snap["phases"] == ["start-up", "callback Validation.on_epoch_end"]


def test_a_thread_blocked_reading_a_file_is_found(tmp_path):
    fifo = str(tmp_path / "fifo")
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR)  # no writer needed to open; a read blocks until data comes
    reader = threading.Thread(target=os.read, args=(fd, 1))
    reader.start()
    try:
        deadline = time.time() + 5
        while proc.blocked_read() is None and time.time() < deadline:
            time.sleep(0.05)
        assert proc.blocked_read() == f"in read of {fifo}"
    finally:
        os.write(fd, b"x")
        reader.join()
        os.close(fd)
    assert proc.blocked_read() is None
    assert proc.state(os.getpid()) == "running (state R)" and proc.state(2 ** 22 + 1) is None


def test_heartbeats_stacks_and_orders_travel_over_the_side_channel():
    hub = Hub()
    exited = threading.Event()
    moves = iter(range(10 ** 6))
    link = Link(("127.0.0.1", hub.port), 1, lambda: {"phase": "train step 1 of epoch 1", "moves": next(moves)},
                on_exit=exited.set, interval=0.1)
    try:
        deadline = time.time() + 5
        while not hub.beats and time.time() < deadline:
            time.sleep(0.05)
        beat, silent, still = hub.seen(1)
        assert beat["phase"] == "train step 1 of epoch 1" and silent < 1 and still < 1
        hub.ask([1], "stack")
        while 1 not in hub.stacks and time.time() < deadline:
            time.sleep(0.05)
        assert "test_heartbeats_stacks_and_orders_travel_over_the_side_channel" in hub.stacks[1]
        hub.ask([1], "exit")
        assert exited.wait(5)
        assert time.monotonic() - link.answered < 1 and link.hub_phase is None  # rank 0 not linked
    finally:
        link.close()
        hub.close()
    assert 1 in hub.left


def test_a_link_whose_hub_went_first_closes_quietly():
    """Rank 0 (the hub) ended first, as when a data error ends every rank: a rank's link that
    lost it closes without an error (no traceback after the job's one line)."""
    import socket

    server = socket.create_server(("127.0.0.1", 0))
    link = Link(server.getsockname(), 1, lambda: {"phase": "train step 1 of epoch 1", "moves": 0},
                on_exit=lambda: None, interval=0.05)
    conn, _ = server.accept()
    conn.close()  # the hub's end of the link, gone with its process
    server.close()
    deadline = time.time() + 5
    while link._sock is not None and time.time() < deadline:  # it noticed, and dropped its socket
        time.sleep(0.02)
    assert link._sock is None
    link.close()

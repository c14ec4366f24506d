"""A worker's place in the job: Horovod started, devices and CPU threads set, and the
collective checks that make all workers stop together on an error.

Example:
    worker = Worker.start(threads=None)
    worker.agree(lambda: check_output_dir(cfg))   # runs on rank 0, raises on every rank
"""
from __future__ import annotations

import dataclasses
import faulthandler
import os
import signal
import socket
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Optional

import tensorflow as tf

from distft import horovod_install, log
from distft.errors import DistftError
from distft.launch.environment import Environment, detect
from distft.train.stall.progress import PROGRESS

# Horovod settings for distft's workers unless set in the environment (the start log shows
# them): Horovod's own 1 ms cycle, re-measured in the cluster lab (`python -m benchmarks
# cluster --tune`; figures in docs/performance.md).
HOROVOD_DEFAULTS = {"HOROVOD_CYCLE_TIME": "1"}
INTER_OP_THREADS = 1  # on CPU; TF_NUM_INTEROP_THREADS overrides
_INTER_OP_VARIABLE = "TF_NUM_INTEROP_THREADS"


@dataclass
class Worker:
    """This process's rank, size and local rank, with Horovod initialised."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    env: Environment
    threads: Optional[int]  # TF intra-op threads set; None: TensorFlow's default (GPU, no --threads)
    inter_op: str  # TF inter-op threads in effect, for the log
    device: str
    horovod: dict  # the Horovod settings distft makes, as in effect (the user's or distft's)
    previous_rank: Optional[int] = None  # elastic mode: the rank before the last reset
    links: tuple[tuple[int, str], ...] = ()  # the sockets hvd.init() connected to the other workers (Gloo)

    @classmethod
    def start(cls, threads: Optional[int] = None, pin_cores: bool = True,
              horovod: Mapping[str, str] = {}) -> Worker:
        """Pin cores/GPU for this local rank, set TF threads, then `hvd.init()` with
        HOROVOD_DEFAULTS and `horovod` (Horovod's settings; the environment's win). From here
        on, `kill -QUIT PID` makes this worker print every thread's Python stack (a hang's
        diagnosis, without stopping it)."""
        faulthandler.register(signal.SIGQUIT, all_threads=True, chain=False)
        env = detect()
        device, threads, inter_op = _place(env, threads, pin_cores)
        settings = {**HOROVOD_DEFAULTS, **horovod}
        for name, value in settings.items():  # read by hvd.init()
            os.environ.setdefault(name, value)
        hvd = horovod_install.load()  # the core ops: Horovod's Keras layer breaks on Keras 3

        links = _connected_by(hvd.init)
        return cls(hvd.rank(), hvd.size(), hvd.local_rank(), hvd.local_size(), env, threads, inter_op,
                   device, {name: os.environ[name] for name in settings}, links=links)

    def reset(self) -> None:
        """Start Horovod again with the workers there are now (elastic mode, after a worker was
        lost or a host added): new rank and size."""
        self.previous_rank = self.rank
        self.hvd.shutdown()
        self.links = _connected_by(self.hvd.init)
        self.rank, self.size = self.hvd.rank(), self.hvd.size()
        self.local_rank, self.local_size = self.hvd.local_rank(), self.hvd.local_size()
        log.rank_changed(self.rank, self.size)

    def break_links(self) -> None:
        """Shut this worker's connections to the others down (elastic mode, after a collective
        failed here): a survivor blocked on this worker in another collective sees its
        connection close at once, instead of after Gloo's time-out, which must be long enough
        for a joining worker's start. The sockets stay open for Horovod to close."""
        for fd, inode in self.links:
            try:
                if os.readlink(f"/proc/self/fd/{fd}") != inode:  # closed, its number reused
                    continue
                with socket.socket(fileno=os.dup(fd)) as link:
                    link.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed or shut down
                pass

    def alone(self) -> Worker:
        """This worker as if it were the only one: every check runs here, no collective. For
        set-up in elastic mode, where a worker may join while the others train."""
        return dataclasses.replace(self, rank=0, size=1)

    @property
    def node_name(self) -> str:
        """This worker's node: Slurm's node name (with its node id) or the host name."""
        if "HOROVOD_HOSTNAME" in os.environ:  # horovodrun's (it forwards Slurm's variables too)
            return os.environ["HOROVOD_HOSTNAME"]
        name = os.environ.get("SLURMD_NODENAME")
        if name:
            return f"{name} (SLURM_NODEID {os.environ.get('SLURM_NODEID', '?')})"
        return socket.gethostname()

    @property
    def address(self) -> str:
        """An IPv4 address of this worker that the others reach: the local end of a link that
        Horovod opened to them, else the host name's."""
        for fd, inode in self.links:
            try:
                if os.readlink(f"/proc/self/fd/{fd}") == inode:
                    with socket.socket(fileno=os.dup(fd)) as link:
                        host = link.getsockname()[0].removeprefix("::ffff:")
                    if "." in host:
                        return host
            except OSError:
                continue
        return socket.gethostbyname(socket.gethostname())

    @property
    def placement(self) -> str:
        """Node and, on CPU, the cores this worker may run on."""
        if self.device != "CPU":
            return f"{self.node_name} {self.device}"
        return f"{self.node_name} cores {','.join(map(str, sorted(os.sched_getaffinity(0))))}"

    @property
    def hvd(self):
        import horovod.tensorflow as hvd

        return hvd

    def gather(self, obj: Any) -> list[Any]:
        """Every worker's `obj`, in rank order, on every worker."""
        if self.size == 1:
            return [obj]
        with _collective("gather"):
            return self.hvd.allgather_object(obj)

    def gather_floats(self, values: list[float], name: str) -> list[list[float]]:
        """Every worker's `values` (the same length on all), in rank order: one allgather, cheaper
        than `gather`'s pickling for figures sent every epoch."""
        if self.size == 1:
            return [list(values)]
        with _collective(f"gather {name}"):
            return self.hvd.allgather(tf.constant([values], tf.float64), name=name).numpy().tolist()

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every worker."""
        if self.size == 1:
            return obj
        with _collective("broadcast"):
            return self.hvd.broadcast_object(obj, root_rank=0)

    def broadcast_variables(self, variables: list) -> None:
        """Assign rank 0's values to `variables` (tf.Variables or Keras 3 Variables) on every
        worker, in one traced group of broadcasts."""
        if self.size > 1 and variables:
            with _collective("broadcast of the variables"):
                self.hvd.broadcast_variables([_tf_variable(v) for v in variables], root_rank=0)

    def allreduce(self, tensors: list, name: str, average: bool = False) -> list[tf.Tensor]:
        """Every worker's `tensors` summed (or averaged) elementwise over all workers, in one
        float64 allreduce (eager, outside the train step); each result keeps its tensor's shape
        and dtype and is bit-identical on every worker.

        Example:
            total, count = worker.allreduce([metric.total, metric.count], "val_state")
        """
        tensors = [tf.convert_to_tensor(t) for t in tensors]
        if self.size == 1 or not tensors:
            return tensors
        flat = tf.concat([tf.reshape(tf.cast(t, tf.float64), [-1]) for t in tensors], 0)
        with _collective(f"allreduce {name}"):
            reduced = self.hvd.allreduce(flat, op=self.hvd.Average if average else self.hvd.Sum,
                                         name=name)
        parts = tf.split(reduced, [int(tf.size(t)) for t in tensors])
        return [tf.cast(tf.reshape(p, t.shape), t.dtype) for p, t in zip(parts, tensors)]

    def agree(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on rank 0 only; its DistftError is raised on every rank, its value returned."""
        result: tuple[Optional[str], Any] = (None, None)
        with PROGRESS.phase(f"agree: {_name(fn)}"):
            if self.rank == 0:
                try:
                    result = (None, fn())
                except DistftError as e:
                    result = (str(e), None)
            error, value = self.broadcast(result)
        if error:
            raise DistftError(error)
        return value

    def all_ok(self, fn: Callable[[], Any]) -> Any:
        """Run `fn` on every rank; if any rank fails, every rank raises the lowest rank's error."""
        value, error = None, None
        with PROGRESS.phase(f"all_ok: {_name(fn)}"):
            try:
                value = fn()
            except DistftError as e:
                error = f"{e}" if self.rank == 0 else f"rank {self.rank}: {e}"
            errors = [err for err in self.gather(error) if err]  # only the errors travel, not values
        if errors:
            raise DistftError(errors[0])
        return value


@contextmanager
def _collective(kind: str) -> Iterator[None]:
    """Inside a collective of `kind` (for the stall watchdog), named after the code that
    called the Worker's method: `gather from RankHealth.on_epoch_end`."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back
    with PROGRESS.collective(f"{kind} from {_name(frame) if frame else 'an unknown caller'}"):
        yield


def _name(fn: Any) -> str:
    """The qualified name of a function, lambda or frame, less `<locals>`: `Setup.open.<lambda>`."""
    code = getattr(fn, "__code__", None) or getattr(fn, "f_code", None)
    if code is None:
        return type(fn).__name__
    return getattr(code, "co_qualname", code.co_name).replace(".<locals>", "")


def _connected_by(init: Callable[[], Any]) -> tuple[tuple[int, str], ...]:
    """Run `init` (hvd.init); return the TCP connections it opened and left open (Gloo's links
    to the other workers; not its listening socket), each as (fd, its /proc link)."""
    before = set(_sockets())
    init()
    links = []
    for fd, inode in _sockets():
        if (fd, inode) in before:
            continue
        try:
            with socket.socket(fileno=os.dup(fd)) as s:
                if s.type == socket.SOCK_STREAM and s.family in (socket.AF_INET, socket.AF_INET6) \
                        and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    links.append((fd, inode))
        except OSError:
            continue
    return tuple(links)


def _sockets() -> list[tuple[int, str]]:
    """This process's socket file descriptors, with their /proc links (`socket:[INODE]`)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:"):
            found.append((int(name), target))
    return found


def _tf_variable(v: Any) -> tf.Variable:
    """The tf.Variable behind a Keras 3 Variable (TensorFlow backend), or `v` itself."""
    inner = getattr(v, "_value", None)
    return inner if isinstance(inner, tf.Variable) else v


def _place(env: Environment, threads: Optional[int], pin_cores: bool) -> tuple[str, Optional[int], str]:
    """One GPU per local rank (memory growth on), with `threads` intra-op threads for the ops
    that run on the host when given; on CPU, a block of cores per local rank. Returns the
    device, the intra-op threads set (None: TensorFlow's default) and the inter-op threads."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if env.local_size > len(gpus):
            log.warning("%d workers on this node share %d GPU(s): ask Slurm for one task per GPU "
                        "(--ntasks-per-node = --gpus-per-node)", env.local_size, len(gpus))
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
        gpu = gpus[env.local_rank % len(gpus)]
        tf.config.set_visible_devices(gpu, "GPU")
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
        return gpu.name, threads, os.environ.get(_INTER_OP_VARIABLE, "TensorFlow's default")
    cores = sorted(os.sched_getaffinity(0))
    share = max(1, len(cores) // max(1, env.local_size))
    if env.name == "srun" and os.environ.get("SLURM_CPUS_PER_TASK"):
        share = int(os.environ["SLURM_CPUS_PER_TASK"])  # what Slurm gave each task
    if pin_cores and env.local_size > 1 and len(cores) >= env.local_size:
        # Workers on one node otherwise share every core, and their thread pools fight.
        mine = cores[env.local_rank * share:(env.local_rank + 1) * share]
        os.sched_setaffinity(0, mine)
    threads = threads or share
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    if _INTER_OP_VARIABLE in os.environ:  # TensorFlow reads the user's value
        return "CPU", threads, os.environ[_INTER_OP_VARIABLE]
    # One op at a time, each using the worker's cores: a second inter-op thread on a worker's
    # one core cost distft 15-25% (docs/performance.md).
    tf.config.threading.set_inter_op_parallelism_threads(INTER_OP_THREADS)
    return "CPU", threads, str(INTER_OP_THREADS)

"""What /proc tells about a rank that makes no progress: the state of a process on this host
(stopped, in uninterruptible sleep), and the file a thread of this process is blocked reading.

Example:
    state(4242)        # "stopped (state T)", or None when no such process runs here
    blocked_read()     # "in read of /nfs/data/train-03.tfrecord", or None
"""
from __future__ import annotations

import os
import platform
from typing import Optional

STATES = {"R": "running", "S": "sleeping", "D": "in uninterruptible sleep (disk or network file system)",
          "T": "stopped", "t": "stopped by a debugger", "Z": "a zombie", "X": "dead", "I": "idle"}
# The read system calls by number, per architecture (the first field of /proc/.../syscall).
READS = {"x86_64": {0: "read", 17: "pread64", 19: "readv", 295: "preadv", 327: "preadv2"},
         "aarch64": {63: "read", 65: "readv", 67: "pread64", 69: "preadv", 286: "preadv2"}}


def state(pid: int) -> Optional[str]:
    """Process `pid`'s state on this host, e.g. 'stopped (state T)'; None if it is not here."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            code = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None
    return f"{STATES.get(code, 'state')} (state {code})"


def blocked_read() -> Optional[str]:
    """'in read of PATH' when a thread of this process (the main thread first) is in a read
    system call on a file or FIFO (not a socket or pipe: those are Horovod's and TensorFlow's
    own waits)."""
    calls = READS.get(platform.machine(), {})
    main = str(os.getpid())
    try:
        tids = sorted(os.listdir("/proc/self/task"), key=lambda tid: tid != main)
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/syscall") as f:
                fields = f.read().split()
            call = calls.get(int(fields[0])) if fields and fields[0].isdigit() else None
            if call is None:
                continue
            path = os.readlink(f"/proc/self/fd/{int(fields[1], 16)}")
        except (OSError, ValueError, IndexError):
            continue
        if path.startswith("/"):
            return f"in {call} of {path}"
    return None

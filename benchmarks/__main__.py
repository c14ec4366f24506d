"""Run distft's benchmarks.

Usage (from the repository root):
    python -m benchmarks report                # the performance report (make bench)
    python -m benchmarks                       # every benchmark but the cluster lab, default options
    python -m benchmarks overhead [OPTIONS]    # one benchmark; `overhead --help` lists OPTIONS
    python -m benchmarks faults                # the fault tests, as they are and beside a CPU hog
"""
from __future__ import annotations

import sys
from typing import Callable

from benchmarks import (bytes_read, cluster, elastic, faults, frozen_cache, input, launch, layouts, lm, lora,
                        memory, overhead, report, tensorboard_cost, tuning)

BENCHMARKS: dict[str, Callable[[list[str]], int]] = {
    "report": report.main, "overhead": overhead.main, "tuning": tuning.main,
    "frozen_cache": frozen_cache.main, "tensorboard_cost": tensorboard_cost.main,
    # Large data sets
    "memory": memory.main, "input": input.main, "bytes_read": bytes_read.main,
    # Data layouts (issue #14)
    "layouts": layouts.main,
    # Bring your own model (issue 20)
    "lora": lora.main,
    # Language models (issue 30)
    "lm": lm.main,
    # Elastic training (issue 21)
    "elastic": elastic.main,
    # Faults under load: the elastic and stall tests beside a CPU hog (issue 31)
    "faults": faults.main,
    # Performance where clusters spend it (issue 22): an emulated multi-node network
    "cluster": cluster.main,
    # The launcher's own cost (distft/launch/horovodrun.py)
    "launch": launch.main,
}
BY_NAME_ONLY = ("cluster", "faults")  # root and network namespaces, or a test run: by name


def main(argv: list[str]) -> int:
    """Run the benchmark named by argv[0] with the rest as its options, or all of them."""
    if not argv:
        return max(run([]) for name, run in BENCHMARKS.items() if name not in BY_NAME_ONLY)
    name, options = argv[0], argv[1:]
    if name not in BENCHMARKS:
        asked = name in ("-h", "--help")
        print(f"usage: python -m benchmarks [{'|'.join(BENCHMARKS)} [OPTIONS]]",
              file=sys.stdout if asked else sys.stderr)
        return 0 if asked else 2
    return BENCHMARKS[name](options)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Run several distft trainings one after another in one process, through `distft.train`:
as the workers of one job under horovodrun, or as a single worker without a launcher.
tests/test_equivalence.py runs its whole matrix in two such launches.

RUNS is a JSON mapping of a name to `distft.train` options; the status of every run (error
text or none, seconds) goes to STATUS (written by rank 0).

Example:
    horovodrun -np 2 -H localhost:2 --gloo python tests/equivalence_runner.py runs.json status.json
    python tests/equivalence_runner.py runs.json status.json
"""
from __future__ import annotations

import json
import sys
import time
import traceback


def main(runs_path: str, status_path: str) -> None:
    import distft
    from distft import log
    from distft.launch.environment import detect

    log.quiet_tensorflow()
    log.import_tensorflow()
    import keras

    with open(runs_path) as f:
        runs = json.load(f)
    status = {}
    for name, options in runs.items():
        # What one run leaves in Keras' global state must not reach the next.
        keras.backend.clear_session()
        keras.mixed_precision.set_global_policy("float32")
        started = time.time()
        try:
            distft.train(**options)
            error = None
        except Exception as e:  # recorded for the test; the next run still runs
            error = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        status[name] = {"error": error, "seconds": round(time.time() - started, 1)}
        print(f"equivalence_runner: {name}: {error or 'ok'} ({status[name]['seconds']}s)", flush=True)
    if detect().rank == 0:
        with open(status_path, "w") as f:
            json.dump(status, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])

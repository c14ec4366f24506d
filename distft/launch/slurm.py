"""Slurm: the mistakes people make most when starting distft in an allocation, and
`distft slurm`, which writes (and submits) a batch script from a template in `slurm/`.

Example:
    for line in mistakes(detect(), np=None): log.warning(line)
    write_script("multi-node", "job.sbatch", nodes=2, gpus_per_node=4, cpus_per_task=8,
                 time="04:00:00", partition=None, account=None,
                 options={"model": "m.h5", "data": "shards/", "lr": 3e-4})
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

from distft.config import option_name
from distft.errors import DistftError
from distft.launch.environment import Environment

TEMPLATES = ("single-node", "multi-node", "multi-node-gloo", "requeue", "sweep", "elastic")
# train options that a template's parameter block names; the others go to EXTRA_ARGS
VARIABLES = {"model": "MODEL", "data": "DATA", "num_classes": "NUM_CLASSES", "unfreeze": "UNFREEZE",
             "epochs": "EPOCHS", "batch_size": "BATCH_SIZE", "output_dir": "RUN_ROOT"}


def mistakes(env: Environment, np: Optional[int], elastic: bool = False) -> list[str]:
    """Warnings for a distft started the wrong way inside a Slurm allocation (an elastic --np
    job is started from the batch script on purpose: slurm/elastic.sbatch)."""
    if "SLURM_JOB_ID" not in os.environ:
        return []
    found = []
    tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if not env.is_launched and tasks > 1:
        found.append(f"this Slurm allocation has {tasks} tasks but distft runs as one process: "
                     "start it with `srun --mpi=pmix distft train ...`")
    if np and not env.is_launched and not elastic:
        found.append("--np inside a Slurm allocation starts the workers with horovodrun from "
                     "this node: prefer `srun --mpi=pmix distft train ...` (slurm/*.sbatch)")
    return found


def template_dir() -> Path:
    folder = Path(__file__).resolve().parents[2] / "slurm"
    if not folder.is_dir():
        raise DistftError(f"the Slurm templates are not at {folder}: run distft from its "
                          "source checkout (pip install -e) or copy slurm/ there")
    return folder


def write_script(template: str, path: str, nodes: int, gpus_per_node: int, cpus_per_task: int,
                 time: str, partition: Optional[str], account: Optional[str],
                 options: dict[str, Any], cpu_only: bool = False) -> str:
    """Fill a template's #SBATCH lines and its parameters from `distft train` options.

    One worker per GPU; `cpu_only` keeps that many workers per node without asking for GPUs.
    """
    if template not in TEMPLATES:
        raise DistftError(f"--template={template} is not one of {', '.join(TEMPLATES)}")
    text = (template_dir() / f"{template}.sbatch").read_text()
    tasks = max(1, gpus_per_node)
    text = _set(text, "nodes", str(nodes))
    text = _set(text, "ntasks-per-node", str(tasks))
    text = _set(text, "cpus-per-task", str(cpus_per_task))
    text = _set(text, "time", time)
    if gpus_per_node and not cpu_only:
        text = _set(text, "gpus-per-node", str(gpus_per_node))
    else:  # a CPU-only partition: the same workers per node, no GPU request
        text = re.sub(r"^#SBATCH --gpus-per-node=.*\n", "", text, flags=re.M)
    for name, value in (("partition", partition), ("account", account)):
        if value:
            text = re.sub(rf"^##SBATCH --{name}=\S+", f"#SBATCH --{name}={value}", text, flags=re.M)
    extra = []
    for key, value in options.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(v) for v in value)
        var = VARIABLES.get(key)
        if var and re.search(rf"^{var}=", text, flags=re.M):
            text = re.sub(rf"^{var}=\$\{{{var}:-[^}}]*\}}", lambda _: f"{var}=${{{var}:-{value}}}",
                          text, count=1, flags=re.M)
        else:
            extra.append(shlex.quote(f"--{option_name(key)}={value}"))
    text = re.sub(r"^EXTRA_ARGS=\$\{EXTRA_ARGS:-[^}]*\}",
                  lambda _: f"EXTRA_ARGS=${{EXTRA_ARGS:-{' '.join(extra)}}}", text, count=1, flags=re.M)
    # The generated job runs the distft that wrote it (same venv), unless DISTFT says otherwise.
    here = Path(sys.executable).with_name("distft")
    if here.exists():
        text = re.sub(r"^DISTFT=\$\{DISTFT:-distft\}", lambda _: f"DISTFT=${{DISTFT:-{here}}}", text,
                      count=1, flags=re.M)
    discover = template_dir() / "discover_hosts.sh"  # by absolute path: jobs start in any folder
    text = re.sub(r"^DISCOVER=\$\{DISCOVER:-[^}]*\}", lambda _: f"DISCOVER=${{DISCOVER:-{discover}}}",
                  text, count=1, flags=re.M)
    Path(path).write_text(text)
    os.chmod(path, 0o755)
    return path


def _set(text: str, option: str, value: str) -> str:
    return re.sub(rf"^#SBATCH --{option}=\S+", f"#SBATCH --{option}={value}", text, count=1,
                  flags=re.M)


def submit(path: str) -> str:
    """sbatch the script; return the job id."""
    try:
        out = subprocess.run(["sbatch", "--parsable", path], capture_output=True, text=True,
                             check=True).stdout
    except FileNotFoundError:
        raise DistftError("sbatch not found: run distft slurm --submit on a Slurm login node") from None
    except subprocess.CalledProcessError as e:
        raise DistftError(f"sbatch refused {path}: {e.stderr.strip().splitlines()[-1]}") from None
    return out.strip().split(";")[0]

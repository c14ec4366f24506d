#!/bin/bash
# Host discovery for elastic distft (`--host_discovery=slurm/discover_hosts.sh`) in a Slurm
# allocation: prints `host:slots` for each node of this job that Slurm still counts as usable.
#
# horovodrun runs it about once a second, so it asks slurmctld once (no ssh or ping per node);
# a node is left out when Slurm marks it DOWN, DRAIN (an admin or health check emptying it: the
# job shrinks off it), FAIL, or not responding (a `*` after the state). A worker that dies is
# blacklisted by horovodrun itself, so a node that fails between two Slurm checks is dropped anyway.
# Slots: DISTFT_SLOTS_PER_NODE, else the job's tasks per node (--ntasks-per-node), else 1.
#
#   SLURM_JOB_NODELIST='n[1-2]' SLURM_NTASKS_PER_NODE=4 slurm/discover_hosts.sh   # n1:4 n2:4
set -euo pipefail
tasks=${SLURM_TASKS_PER_NODE:-1}   # e.g. "4(x2)": the first node's count
slots=${DISTFT_SLOTS_PER_NODE:-${SLURM_NTASKS_PER_NODE:-${tasks%%(*}}}
scontrol show node "${SLURM_JOB_NODELIST:?run inside a Slurm job (SLURM_JOB_NODELIST)}" --oneliner |
  while read -r line; do
    name=$(grep -o 'NodeName=[^ ]*' <<<"$line"); name=${name#NodeName=}
    state=$(grep -o ' State=[^ ]*' <<<"$line"); state=${state# State=}
    case $state in
      *DOWN*|*DRAIN*|*FAIL*|*NOT_RESPONDING*|*POWER*|*'*'*) ;;
      *) echo "$name:$slots" ;;
    esac
  done

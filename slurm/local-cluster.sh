#!/usr/bin/env bash
# A real two-node Slurm cluster on this one machine (nodes n1 and n2, partition "debug"),
# for trying the templates and for distft's tests. Debian 12 / Slurm 22.05, run as root.
#
#   bash slurm/local-cluster.sh up      # install (apt) if needed, configure, start, wait
#   bash slurm/local-cluster.sh down    # stop the daemons (slurmd, slurmctld, munged)
#   bash slurm/local-cluster.sh down --keep-munge   # ... but leave munged running
#   bash slurm/local-cluster.sh logs    # print the daemons' logs
#
# munge authenticates; slurmctld schedules; two slurmd (ports 17001, 17002) act as two nodes
# with 4 CPUs each (more than the machine has, so that 4 small workers fit on a node).
# Each slurmd runs in its own mount namespace with a private PMIx folder,
# since both share /tmp and PMIx's per-step folders would clash ("File exists"), and its own
# /dev/shm, where Open MPI's shared-memory segments (named by host and local rank) would too.
# For the horovodrun (Gloo) template, n1 and n2 also resolve to 127.0.0.1 (/etc/hosts) and
# root can ssh to them with a key (sshd started, ~/.ssh/config entries added), as between the
# nodes of a real cluster.
set -euo pipefail

HOST=$(hostname -s)
CONF=/etc/slurm/slurm.conf
NODES=(n1 n2)

say() { printf '[local-cluster] %s\n' "$*"; }

logs() {
  for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd-n1.log /var/log/slurm/slurmd-n2.log \
           /var/log/munge/munged.log; do
    [[ -f $f ]] && { echo "==== $f"; tail -n 40 "$f"; }
  done
  return 0
}

install() {
  local missing=()
  for p in slurmctld slurmd slurm-client munge openmpi-bin libpmix2 openssh-server openssh-client; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    [[ $(id -u) == 0 ]] || { echo "run as root, or: sudo apt-get install ${missing[*]}" >&2; exit 1; }
    say "installing ${missing[*]}"
    apt-get update -qq
    # Open MPI (and so libpmix2) before slurmd starts, or its pmix plugin fails to load.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

configure() {
  mkdir -p /etc/slurm /var/spool/slurmctld /var/log/slurm /var/spool/pmix /run/munge
  for n in "${NODES[@]}"; do mkdir -p "/var/spool/slurmd/$n" "/var/spool/pmix-$n"; done
  local mem=$(( $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) / 4 ))
  cat > "$CONF" <<CONF
ClusterName=distft-local
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
SlurmdParameters=config_overrides
MpiDefault=none
JobRequeue=1
KillWait=10
MinJobAge=600
StateSaveLocation=/var/spool/slurmctld
SlurmctldPidFile=/run/slurmctld.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmdPidFile=/run/slurmd-%n.pid
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
NodeName=n1 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17001 CPUs=4 RealMemory=$mem State=UNKNOWN
NodeName=n2 NodeHostname=$HOST NodeAddr=127.0.0.1 Port=17002 CPUs=4 RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
CONF
  echo "PMIxCliTmpDirBase=/var/spool/pmix" > /etc/slurm/mpi.conf
  if [[ ! -s /etc/munge/munge.key ]]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1k count=1 status=none
  fi
  chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true
  chmod 400 /etc/munge/munge.key
}

ssh_between_nodes() {
  for n in "${NODES[@]}"; do
    grep -qE "^127\.0\.0\.1[[:space:]]+$n\$" /etc/hosts || echo "127.0.0.1 $n" >> /etc/hosts
  done
  mkdir -p /root/.ssh /run/sshd && chmod 700 /root/.ssh
  [[ -f /root/.ssh/id_ed25519 ]] || ssh-keygen -q -t ed25519 -N '' -f /root/.ssh/id_ed25519
  grep -qF "$(cat /root/.ssh/id_ed25519.pub)" /root/.ssh/authorized_keys 2>/dev/null \
    || cat /root/.ssh/id_ed25519.pub >> /root/.ssh/authorized_keys
  grep -q "distft local cluster" /root/.ssh/config 2>/dev/null || cat >> /root/.ssh/config <<SSH
# distft local cluster
Host n1 n2
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  LogLevel ERROR
SSH
  pgrep -x sshd >/dev/null || /usr/sbin/sshd
  for n in "${NODES[@]}"; do
    ssh -o BatchMode=yes "$n" true || { say "ssh to $n does not work"; exit 1; }
  done
}

# Stop the daemon whose pid file is $1 if that pid is a process named $2; wait until it is gone.
stop_pidfile() {
  local file=$1 name=$2 pid
  [[ -f $file ]] || return 0
  pid=$(cat "$file" 2>/dev/null) || return 0
  [[ $pid =~ ^[0-9]+$ && $(cat "/proc/$pid/comm" 2>/dev/null) == "$name" ]] || return 0
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.2; done
  kill -9 "$pid" 2>/dev/null || true
}

alive() {  # a process, not a zombie
  local state
  state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
  [[ -n $state && $state != Z ]]
}

stop_slurm() {
  for n in "${NODES[@]}"; do stop_pidfile "/run/slurmd-$n.pid" slurmd; done
  stop_pidfile /run/slurmctld.pid slurmctld
}

down() {
  stop_slurm
  if [[ ${1:-} == --keep-munge ]]; then
    say "down: slurmd and slurmctld stopped; munged left running"
  else
    stop_pidfile /run/munge/munged.pid munged
    say "down: slurmd, slurmctld and munged stopped"
  fi
}

up() {
  install
  configure
  ssh_between_nodes
  stop_slurm
  pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
  munge -n | unmunge >/dev/null || { say "munge does not work"; logs; exit 1; }
  slurmctld || { say "slurmctld did not start; daemons' logs follow"; logs; exit 1; }
  for n in "${NODES[@]}"; do
    unshare --mount --propagation private sh -c \
      "mount --bind /var/spool/pmix-$n /var/spool/pmix && mount -t tmpfs -o size=4g tmpfs /dev/shm && exec slurmd -N $n" \
      || { say "slurmd -N $n did not start; daemons' logs follow"; logs; exit 1; }
  done
  for _ in $(seq 60); do
    if sinfo -h -o '%T' 2>/dev/null | grep -qx idle && [[ $(sinfo -h -N -t idle -o '%N' | wc -l) == 2 ]]; then
      scontrol update nodename=n1,n2 state=resume 2>/dev/null || true
      say "up: $(sinfo -h -N -o '%N %T %c' | paste -sd ';')"
      return 0
    fi
    scontrol update nodename=n1,n2 state=resume 2>/dev/null || true
    sleep 1
  done
  say "the cluster did not come up; daemons' logs follow"
  sinfo -N || true
  logs
  exit 1
}

case "${1:-up}" in
  up) up ;;
  down) down "${2:-}" ;;
  logs) logs ;;
  *) echo "usage: $0 up|down [--keep-munge]|logs" >&2; exit 2 ;;
esac

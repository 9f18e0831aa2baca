#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and for trying dist-gan's SLURM path.
#
#   slurm/local-cluster.sh start    # installs slurm-wlm + munge if missing (apt-get), then starts
#                                   # munged, slurmctld and slurmd on localhost with this machine's CPUs
#   slurm/local-cluster.sh env      # prints `export SLURM_CONF=...`: eval it, then sbatch/squeue/scancel work
#   slurm/local-cluster.sh status   # sinfo, or exit 1 when the cluster is not up
#   slurm/local-cluster.sh stop     # ends only the daemons this script started (their pid files)
#
# Everything lives under $DIST_GAN_SLURM_DIR (default /tmp/dist-gan-slurm): slurm.conf, state, logs,
# pid files, a munge socket. No cgroups (proctrack/linuxproc, task/none), so it runs in containers.
# Job accounting goes to a text file (jobcomp/filetxt): squeue shows live jobs, scontrol the finished
# ones while MinJobAge keeps them, and $DIST_GAN_SLURM_DIR/jobcomp.txt every job's end state.
set -euo pipefail

DIR=${DIST_GAN_SLURM_DIR:-/tmp/dist-gan-slurm}
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket

die() { echo "local-cluster: $*" >&2; exit 1; }

install_if_missing() {
  command -v slurmctld >/dev/null && command -v munged >/dev/null && return
  [ "$(id -u)" = 0 ] || die "slurm-wlm and munge are not installed and this is not root: apt-get install slurm-wlm munge"
  echo "local-cluster: installing slurm-wlm and munge (apt-get)" >&2
  (apt-get install -y -qq slurm-wlm munge >/dev/null 2>&1) || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null)
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
  cat > "$CONF" <<EOF
# written by slurm/local-cluster.sh
ClusterName=distgan
SlurmctldHost=$host
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
CredType=cred/munge
SlurmctldPort=$((6817 + ${DIST_GAN_SLURM_PORT_OFFSET:-0}))
SlurmdPort=$((6818 + ${DIST_GAN_SLURM_PORT_OFFSET:-0}))
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/jobcomp.txt
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MinJobAge=3600
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
}

start() {
  install_if_missing
  if alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid"; then
    echo "local-cluster: already up ($CONF)" >&2; return
  fi
  write_conf
  if ! alive "$DIR/munged.pid"; then
    [ -s /etc/munge/munge.key ] || { [ "$(id -u)" = 0 ] && (mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null) && chmod 400 /etc/munge/munge.key; }
    munged --force --socket="$MUNGE_SOCKET" --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
      --seed-file="$DIR/munge/seed" || die "munged did not start (see $DIR/log/munged.log)"
  fi
  SLURM_CONF=$CONF slurmctld -f "$CONF" || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
  SLURM_CONF=$CONF slurmd -f "$CONF" || die "slurmd did not start (see $DIR/log/slurmd.log)"
  for _ in $(seq 1 60); do  # up to 30 s for the node to register as idle
    if SLURM_CONF=$CONF sinfo -h -o %T 2>/dev/null | grep -qx idle; then
      echo "local-cluster: up; run: export SLURM_CONF=$CONF" >&2; return
    fi
    sleep 0.5
  done
  die "the node did not become idle within 30 s: $(SLURM_CONF=$CONF sinfo -h -o '%T %E' 2>&1 | head -1)"
}

stop() {
  local name pid
  for name in slurmd slurmctld munged; do
    if alive "$DIR/$name.pid"; then
      pid=$(cat "$DIR/$name.pid")
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/$name.pid"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  status) alive "$DIR/slurmctld.pid" && SLURM_CONF=$CONF sinfo || { echo "local-cluster: not running" >&2; exit 1; } ;;
  *) die "usage: $0 start|stop|status|env" ;;
esac

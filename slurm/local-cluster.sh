#!/usr/bin/env bash
# A real one-node SLURM cluster on this machine, for the tests and for trying dist-gan's SLURM path.
#
#   slurm/local-cluster.sh start    # installs slurm-wlm, slurmdbd, munge and mariadb-server if missing
#                                   # (apt-get), then starts munged, mariadbd, slurmdbd, slurmctld and
#                                   # slurmd on localhost with this machine's CPUs
#   slurm/local-cluster.sh env      # prints `export SLURM_CONF=...`: eval it, then sbatch/squeue/scancel work
#   slurm/local-cluster.sh status   # sinfo, or exit 1 when the cluster is not up
#   slurm/local-cluster.sh stop     # ends only the daemons this script started (their pid files)
#
# Everything lives under $DIST_GAN_SLURM_DIR (default /tmp/dist-gan-slurm): slurm.conf, state, logs,
# pid files, a munge socket. No cgroups (proctrack/linuxproc, task/none), so it runs in containers.
# Job accounting is SLURM's own: slurmdbd over a MariaDB that keeps its files in $DIST_GAN_SLURM_DIR/mysql
# and listens on 127.0.0.1 only, so squeue shows live jobs and sacct every job's states, requeues included.
# DIST_GAN_SLURM_PORT_OFFSET moves all four ports (6817 ctld, 6818 slurmd, 6819 dbd, 3307 MariaDB).
set -euo pipefail

DIR=${DIST_GAN_SLURM_DIR:-/tmp/dist-gan-slurm}
CONF=$DIR/slurm.conf
MUNGE_SOCKET=$DIR/munge/munge.socket
OFFSET=${DIST_GAN_SLURM_PORT_OFFSET:-0}
DBD_PORT=$((6819 + OFFSET))
DB_PORT=$((3307 + OFFSET))
DB_SOCKET=$DIR/mysql.sock
PACKAGES="slurm-wlm slurmdbd munge mariadb-server"

die() { echo "local-cluster: $*" >&2; exit 1; }

install_if_missing() {
  local cmd missing=0
  for cmd in slurmctld slurmdbd munged mariadbd; do command -v "$cmd" >/dev/null || missing=1; done
  [ "$missing" = 0 ] && return
  [ "$(id -u)" = 0 ] || die "not installed and this is not root: apt-get install $PACKAGES"
  echo "local-cluster: installing $PACKAGES (apt-get)" >&2
  export DEBIAN_FRONTEND=noninteractive
  # shellcheck disable=SC2086
  (apt-get install -y -qq $PACKAGES >/dev/null 2>&1) || (apt-get update -qq && apt-get install -y -qq $PACKAGES >/dev/null)
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

within_30s() {  # run "$@" every 0.5 s until it succeeds, for up to 30 s
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  return 1
}

write_conf() {
  local host cpus mem
  host=$(hostname -s)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # the node is the machine: nproc obeys a caller's OMP_NUM_THREADS=1
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/munge"
  cat > "$CONF" <<EOF
# written by slurm/local-cluster.sh
ClusterName=distgan
SlurmctldHost=$host
SlurmUser=$(id -un)
SlurmdUser=root
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (SLURM's default: 120 s).
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10
CredType=cred/munge
SlurmctldPort=$((6817 + OFFSET))
SlurmdPort=$((6818 + OFFSET))
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
# A job that becomes eligible by time alone (a requeued one, above) waits for the next periodic pass: every 2 s here.
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCKET
MinJobAge=3600
KillWait=30
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=local Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  # slurmdbd reads slurmdbd.conf beside SLURM_CONF, and only if it is private to SlurmUser.
  (umask 077; cat > "$DIR/slurmdbd.conf" <<EOF
# written by slurm/local-cluster.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=$(id -un)
PidFile=$DIR/slurmdbd.pid
LogFile=$DIR/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$(db_password)
StorageLoc=slurm_acct_db
EOF
  )
}

db_password() {  # made once per cluster folder, private
  [ -s "$DIR/db.pass" ] || (umask 077; head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$DIR/db.pass")
  cat "$DIR/db.pass"
}

db() { mariadb --no-defaults --socket="$DB_SOCKET" -u root "$@"; }

start_db() {  # MariaDB on 127.0.0.1:$DB_PORT, files in $DIR/mysql: slurmdbd's store and nothing else
  if [ ! -d "$DIR/mysql/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user="$(id -un)" --auth-root-authentication-method=socket \
      --skip-test-db >"$DIR/log/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $DIR/log/mariadb-install.log)"
  fi
  if ! alive "$DIR/mariadbd.pid"; then
    mariadbd --no-defaults --datadir="$DIR/mysql" --user="$(id -un)" --bind-address=127.0.0.1 --port="$DB_PORT" \
      --socket="$DB_SOCKET" --pid-file="$DIR/mariadbd.pid" --log-error="$DIR/log/mariadbd.log" \
      --innodb-buffer-pool-size=1024M --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 >/dev/null 2>&1 &
  fi
  within_30s db -e "SELECT 1" || true  # the statement below says why, if it never answers
  db -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
         CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$(db_password)';
         GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" 2>"$DIR/log/mariadb-client.log" ||
    die "MariaDB did not start or refused slurm's database (see $DIR/log/mariadbd.log)"
}

start_dbd() {  # slurmdbd, and this cluster registered in it (slurmctld only reports to a known cluster)
  alive "$DIR/slurmdbd.pid" || SLURM_CONF=$CONF slurmdbd || die "slurmdbd did not start (see $DIR/log/slurmdbd.log)"
  within_30s env SLURM_CONF="$CONF" sacctmgr -n show cluster || true  # the registration below says why, if it never answers
  SLURM_CONF=$CONF sacctmgr -n -P show cluster format=cluster 2>/dev/null | grep -qx distgan ||
    SLURM_CONF=$CONF sacctmgr -i add cluster distgan >/dev/null || die "slurmdbd does not answer (see $DIR/log/slurmdbd.log)"
}

node_idle() { SLURM_CONF=$CONF sinfo -h -o %T | grep -qx idle; }
node_usable() { SLURM_CONF=$CONF sinfo -h -o %T 2>/dev/null | grep -Eqx 'idle|allocated|mixed|completing'; }

start() {
  install_if_missing
  local before=""
  [ -f "$CONF" ] && before=$(cat "$CONF")
  write_conf
  local after
  after=$(cat "$CONF")
  if [ "$after" = "$before" ] && alive "$DIR/slurmctld.pid" && alive "$DIR/slurmd.pid" && alive "$DIR/slurmdbd.pid" \
     && alive "$DIR/mariadbd.pid" && node_usable; then
    echo "local-cluster: already up ($CONF)" >&2; return
  fi
  # A controller that read another configuration (another CPU count, a newer version of this script) keeps it
  # until restarted.
  if [ "$after" != "$before" ] && alive "$DIR/slurmctld.pid"; then stop slurmd slurmctld; fi
  if ! alive "$DIR/munged.pid"; then
    [ -s /etc/munge/munge.key ] || { [ "$(id -u)" = 0 ] && (mungekey --create 2>/dev/null || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 2>/dev/null) && chmod 400 /etc/munge/munge.key; }
    munged --force --socket="$MUNGE_SOCKET" --pid-file="$DIR/munged.pid" --log-file="$DIR/log/munged.log" \
      --seed-file="$DIR/munge/seed" || die "munged did not start (see $DIR/log/munged.log)"
  fi
  start_db
  start_dbd
  # Each daemon only if it is down: a start after one of them died brings back that one and keeps the rest.
  alive "$DIR/slurmctld.pid" || SLURM_CONF=$CONF slurmctld -f "$CONF" || die "slurmctld did not start (see $DIR/log/slurmctld.log)"
  alive "$DIR/slurmd.pid" || SLURM_CONF=$CONF slurmd -f "$CONF" || die "slurmd did not start (see $DIR/log/slurmd.log)"
  # A node the controller drained while its slurmd was down (or misreported) is put back into service.
  SLURM_CONF=$CONF sinfo -h -o %T | grep -Eq 'drain|down|inval' &&
    SLURM_CONF=$CONF scontrol update NodeName="$(hostname -s)" State=RESUME >/dev/null 2>&1
  if within_30s node_idle; then
    echo "local-cluster: up; run: export SLURM_CONF=$CONF" >&2; return
  fi
  die "the node did not become idle within 30 s: $(SLURM_CONF=$CONF sinfo -h -o '%T %E' 2>&1 | head -1)"
}

stop() {  # the named daemons, or all of them (dependents before what they depend on)
  local name pid
  local names="${*:-slurmd slurmctld slurmdbd mariadbd munged}"
  for name in $names; do
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

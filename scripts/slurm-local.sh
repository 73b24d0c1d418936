#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for loopscale's SLURM tests (tests/test_slurm.py) and CI.
#
#   sudo bash scripts/slurm-local.sh [start]   # install what is missing, configure, start; returns once the node is idle
#   sudo bash scripts/slurm-local.sh stop      # stop the daemons (found by their pid files)
#   bash scripts/slurm-local.sh status         # which daemons run, and what sinfo says
#
# For Debian 12 (bookworm) or a Debian-like system, run as root, with or without systemd: the daemons
# are started directly, not as services. The packages come from the distribution (munge, slurmctld,
# slurmd, slurm-client; slurmdbd and mariadb-server for accounting). Rerunning `start` is safe: running
# daemons are kept, and restarted only when the configuration this script writes has changed.
#
# Accounting (slurmdbd on MariaDB) is on by default: submitit reads job states with `sacct`, and the
# requeue test checks sacct's REQUEUED state. LOOPSCALE_SLURM_ACCOUNTING=0 leaves it out.
# Other settings: LOOPSCALE_SLURM_PARTITION (default debug), LOOPSCALE_SLURM_CLUSTER (loopscale),
# LOOPSCALE_SLURM_DB_PASS (the local database user's password), LOOPSCALE_SLURM_WAIT_S (60).
# Logs: /var/log/slurm/. This overwrites /etc/slurm/slurm.conf and /etc/slurm/slurmdbd.conf: meant for a
# throwaway machine or container, not for a host that already belongs to a cluster.
set -euo pipefail

ACCOUNTING="${LOOPSCALE_SLURM_ACCOUNTING:-1}"
PARTITION="${LOOPSCALE_SLURM_PARTITION:-debug}"
CLUSTER="${LOOPSCALE_SLURM_CLUSTER:-loopscale}"
DB_PASS="${LOOPSCALE_SLURM_DB_PASS:-loopscale-slurm}"
WAIT_S="${LOOPSCALE_SLURM_WAIT_S:-60}"

MUNGE_PID=/run/munge/munged.pid
MARIADB_PID=/run/mysqld/mysqld.pid
DBD_PID=/run/slurm/slurmdbd.pid
CTLD_PID=/run/slurm/slurmctld.pid
SLURMD_PID=/run/slurm/slurmd.pid
LOGS=/var/log/slurm
ACCOUNTING_CONF=""

say() { echo "slurm-local: $*" >&2; }
die() { say "$*"; exit 1; }
# running PIDFILE: the daemon in PIDFILE is alive (/proc rather than kill -0, so status works without root)
running() {
  local pid
  pid="$(cat "$1" 2>/dev/null)" || return 1
  [[ "$pid" =~ ^[0-9]+$ ]] && [[ -d "/proc/$pid" ]]
}

# wait_for SECONDS COMMAND...: poll COMMAND every 0.2 s until it succeeds; false after SECONDS.
wait_for() {
  local tries=$(( $1 * 5 )); shift
  while (( tries-- > 0 )); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  return 1
}

# halt NAME PIDFILE: TERM the daemon, KILL it if it is still there after 10 s, drop the pid file.
halt() {
  local name="$1" pidfile="$2" pid
  if running "$pidfile"; then
    pid="$(cat "$pidfile")"
    say "stopping $name (pid $pid)"
    kill "$pid" 2>/dev/null || true
    wait_for 10 bash -c "! kill -0 $pid" || { say "$name did not stop; killing it"; kill -9 "$pid" 2>/dev/null || true; }
  fi
  rm -f "$pidfile"
}

# install_if_changed FILE CONTENT: write CONTENT to FILE when it differs; true when it was written.
install_if_changed() {
  [[ "$(cat "$1" 2>/dev/null)" == "$2" ]] && return 1
  printf '%s\n' "$2" > "$1"
  return 0
}

cmd_stop() {
  halt slurmd "$SLURMD_PID"
  halt slurmctld "$CTLD_PID"
  halt slurmdbd "$DBD_PID"
  halt mariadbd "$MARIADB_PID"
  halt munged "$MUNGE_PID"
}

cmd_status() {
  local name pidfile
  for name in munged:$MUNGE_PID mariadbd:$MARIADB_PID slurmdbd:$DBD_PID slurmctld:$CTLD_PID slurmd:$SLURMD_PID; do
    pidfile="${name#*:}"
    if running "$pidfile"; then
      echo "${name%%:*}: running (pid $(cat "$pidfile"))"
    elif [[ -e "$pidfile" && ! -r "$pidfile" ]]; then
      echo "${name%%:*}: unknown ($pidfile is not readable; run as root)"
    else
      echo "${name%%:*}: stopped"
    fi
  done
  if command -v scontrol >/dev/null && timeout 10 scontrol ping 2>/dev/null | grep -q " is UP"; then
    sinfo
  else
    echo "controller: not answering"
  fi
}

install_packages() {
  local wanted=(munge slurmctld slurmd slurm-client) missing=() p
  [[ "$ACCOUNTING" == 1 ]] && wanted+=(slurmdbd mariadb-server)
  for p in "${wanted[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  (( ${#missing[@]} == 0 )) && return 0
  say "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

start_munge() {
  install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
  install -d -o munge -g munge -m 0755 /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then  # the package usually makes one; a fresh random key otherwise
    head -c 1024 /dev/urandom > /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
  fi
  if ! running "$MUNGE_PID"; then
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged  # forks into the background and writes its pid file
  fi
  wait_for 10 bash -c "munge -n | unmunge" || die "munge cannot encode and decode a credential"
}

# Starts MariaDB and slurmdbd; sets ACCOUNTING_CONF, the slurm.conf lines that point the controller at
# the accounting daemon (or at none).
start_accounting() {
  if [[ "$ACCOUNTING" != 1 ]]; then
    ACCOUNTING_CONF="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    return
  fi
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    say "creating the MariaDB system tables"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOGS/mariadb.log" 2>&1
  fi
  if ! running "$MARIADB_PID"; then
    say "starting mariadbd"
    setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file="$MARIADB_PID" \
      </dev/null >>"$LOGS/mariadb.log" 2>&1 &
  fi
  wait_for 30 mariadb-admin ping || die "MariaDB did not come up (see $LOGS/mariadb.log)"
  mariadb <<SQL
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '${DB_PASS}';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
SQL
  local conf
  conf="$(cat <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
PidFile=${DBD_PID}
LogFile=${LOGS}/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=${DB_PASS}
EOF
)"
  if install_if_changed /etc/slurm/slurmdbd.conf "$conf"; then halt slurmdbd "$DBD_PID"; fi
  chown slurm:slurm /etc/slurm/slurmdbd.conf
  chmod 0600 /etc/slurm/slurmdbd.conf  # it holds the database password
  if ! running "$DBD_PID"; then say "starting slurmdbd"; /usr/sbin/slurmdbd; fi
  wait_for 20 bash -c "exec 3<>/dev/tcp/127.0.0.1/6819" || die "slurmdbd does not listen on 6819 (see $LOGS/slurmdbd.log)"
  ACCOUNTING_CONF="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
}

write_slurm_conf() {
  local node cpus mem_mb real_mem
  node="$(hostname -s)"
  cpus="$(nproc)"
  mem_mb="$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)"
  real_mem=$(( mem_mb * 9 / 10 ))  # slurmd drains a node that has less memory than it claims
  # DefMemPerCPU: a job that asks for no memory gets its share per CPU, not the whole node (which would
  # let only one job run at a time).
  local conf
  conf="$(cat <<EOF
ClusterName=${CLUSTER}
SlurmctldHost=${node}(127.0.0.1)
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
${ACCOUNTING_CONF}
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$(( real_mem / cpus ))
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=${CTLD_PID}
SlurmdPidFile=${SLURMD_PID}
SlurmctldLogFile=${LOGS}/slurmctld.log
SlurmdLogFile=${LOGS}/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MinJobAge=300
KillWait=5
InactiveLimit=0
NodeName=${node} NodeAddr=127.0.0.1 CPUs=${cpus} Sockets=1 CoresPerSocket=${cpus} ThreadsPerCore=1 RealMemory=${real_mem} State=UNKNOWN
PartitionName=${PARTITION} Nodes=${node} Default=YES MaxTime=INFINITE State=UP
EOF
)"
  if install_if_changed /etc/slurm/slurm.conf "$conf"; then
    say "wrote /etc/slurm/slurm.conf: node ${node}, ${cpus} CPUs, ${real_mem} MB, partition ${PARTITION}"
    halt slurmd "$SLURMD_PID"
    halt slurmctld "$CTLD_PID"
  fi
}

node_ready() {  # the node is usable once slurmd has registered and the node is idle, mixed or allocated
  local node state
  node="$(hostname -s)"
  scontrol show node "$node" 2>/dev/null | grep -q "SlurmdStartTime=[0-9]" || return 1
  state="$(sinfo -h -n "$node" -o %T 2>/dev/null | head -n 1)"
  case "$state" in
    idle|mixed|allocated) return 0 ;;
    down*|drain*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  return 1
}

cmd_start() {
  [[ $EUID -eq 0 ]] || die "run as root (it installs packages and starts system daemons)"
  local t0=$SECONDS
  install_packages
  install -d -m 0755 /etc/slurm
  install -d -o slurm -g slurm -m 0755 /run/slurm "$LOGS" /var/spool/slurmctld
  install -d -m 0755 /var/spool/slurmd
  start_munge
  start_accounting
  write_slurm_conf
  if ! running "$CTLD_PID"; then say "starting slurmctld"; /usr/sbin/slurmctld; fi
  wait_for 20 bash -c "scontrol ping | grep -q ' is UP'" || die "slurmctld is not answering (see $LOGS/slurmctld.log)"
  if ! running "$SLURMD_PID"; then say "starting slurmd"; /usr/sbin/slurmd; fi
  wait_for "$WAIT_S" node_ready || die "the node is not idle after ${WAIT_S} s (see $LOGS/slurmd.log, $LOGS/slurmctld.log)"
  say "ready after $(( SECONDS - t0 )) s"
  sinfo
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) [[ $EUID -eq 0 ]] || die "run as root (the daemons belong to root, munge and mysql)"; cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac

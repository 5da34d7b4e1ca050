#!/usr/bin/env bash
# runners/slurm_ci/up.sh - start a real single-node Slurm cluster (slurmctld + slurmd + munge, and
# slurmdbd on a local MariaDB for accounting) on this machine, for CI and for testing runners.sweep.
#
# Debian packages only, no systemd: every daemon is started here and writes a pid file under /run;
# runners/slurm_ci/down.sh stops exactly those.  Everything listens on loopback.
#
# Idempotent: installs only missing packages, rewrites a config only when its content changed (then
# restarts the daemons that read it), starts only daemons that are not running, and ends with a bounded
# wait until the node is schedulable.  Must run as root.
#
# Knobs (environment):
#   DGSS_SLURM_ACCOUNTING=1   1: MariaDB + slurmdbd, so `sacct` works.  submitit needs it to notice jobs
#                             that died without writing a result (scancel, time limit, kill -9);
#                             runners.sweep status also works without it (it reads squeue).
#   DGSS_SLURM_PARTITION=debug
#   DGSS_SLURM_CLUSTER=dgssci
#   DGSS_SLURM_WAIT_S=60      bound on every wait
#   DGSS_SLURM_DBPASS=dgssci  password of the local MariaDB account 'slurm'
set -euo pipefail

ACCOUNTING=${DGSS_SLURM_ACCOUNTING:-1}
PARTITION=${DGSS_SLURM_PARTITION:-debug}
CLUSTER=${DGSS_SLURM_CLUSTER:-dgssci}
WAIT_S=${DGSS_SLURM_WAIT_S:-60}
DBPASS=${DGSS_SLURM_DBPASS:-dgssci}

ETC=/etc/slurm
LOGS=/var/log/slurm
DB_SOCKET=/run/mysqld/mysqld.sock
DB_PIDFILE=/run/mysqld/mysqld.pid

T0=$EPOCHREALTIME
say() { printf '[slurm_ci/up %5.1fs] %s\n' "$(awk "BEGIN{print $EPOCHREALTIME - $T0}")" "$*"; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs packages and starts system daemons)"

# shellcheck source=runners/slurm_ci/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
# halt PIDFILE NAME: TERM the daemon, wait (bounded), then KILL
halt() {
    local pid n
    running "$1" "$2" || return 0
    pid=$(tr -cd '0-9' <"$1")
    kill -TERM "$pid" 2>/dev/null || true
    for ((n = 0; n < WAIT_S * 10; n++)); do running "$1" "$2" || return 0; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
}
# poll DESCRIPTION COMMAND...: retry every 0.2 s until it succeeds, at most WAIT_S seconds
poll() {
    local what=$1 n; shift
    for ((n = 0; n < WAIT_S * 5; n++)); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
    fail "gave up after ${WAIT_S}s waiting for $what"
}
# put_file PATH MODE OWNER CONTENT: write only when the content differs; returns 0 if it changed
put_file() {
    local path=$1 mode=$2 owner=$3 content=$4
    if [ -f "$path" ] && [ "$(cat "$path")" = "$content" ]; then
        chmod "$mode" "$path"; chown "$owner" "$path"; return 1
    fi
    (umask 077; printf '%s\n' "$content" >"$path.tmp")
    chmod "$mode" "$path.tmp"; chown "$owner" "$path.tmp"; mv -f "$path.tmp" "$path"
    return 0
}

# --------------------------------------------------------------------------------------------- packages
packages=(munge slurm-client slurmctld slurmd)
[ "$ACCOUNTING" = 1 ] && packages+=(slurmdbd mariadb-server)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    # The packages' init scripts must not start daemons that this script does not track: a policy-rc.d
    # that denies everything, only for the duration of the install (and only if the image has none).
    own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; own_policy=1
    fi
    apt_install() {
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${missing[@]}"
    }
    ok=1
    apt_install >/tmp/dgss-slurm-apt.log 2>&1 ||
        { say "install failed; apt-get update and retry"; apt-get update -q >>/tmp/dgss-slurm-apt.log 2>&1 || true;
          apt_install >>/tmp/dgss-slurm-apt.log 2>&1 || ok=0; }
    [ $own_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ $ok = 1 ] || { tail -n 25 /tmp/dgss-slurm-apt.log; fail "apt-get install ${missing[*]}"; }
fi
say "packages present"

# ------------------------------------------------------------------------------ munge key, folders, config
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key; chmod 400 /etc/munge/munge.key
install -d -o munge -g munge -m 755 /run/munge
install -d -o munge -g munge -m 700 /var/log/munge
install -d -o munge -g munge -m 711 /var/lib/munge
install -d -o slurm -g slurm -m 755 /var/spool/slurmctld "$LOGS"
install -d -o root -g root -m 755 /var/spool/slurmd "$ETC"

node=$(hostname -s)
# the hardware line of `slurmd -C` without its NodeName (CPUs, sockets, cores, threads, RealMemory)
hardware=$(slurmd -C | sed -n '1s/^NodeName=[^ ]* //p')
[ -n "$hardware" ] || fail "slurmd -C reported no hardware"
if [ "$ACCOUNTING" = 1 ]; then
    accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
else
    accounting="AccountingStorageType=accounting_storage/none"
fi
slurm_conf="# written by runners/slurm_ci/up.sh: one node, loopback only, for CI
ClusterName=$CLUSTER
SlurmctldHost=$node(127.0.0.1)
SlurmUser=slurm
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
# no cgroups without systemd: plain process tracking, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
KillWait=5
# CI latency: schedule right away (defaults wait 3 s / 30 s / 60 s)
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,bf_interval=1,sched_interval=2
# cores are the consumable resource (memory is not), so one-CPU jobs share the node
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
$accounting
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$node NodeAddr=127.0.0.1 $hardware State=UNKNOWN
PartitionName=$PARTITION Nodes=$node Default=YES MaxTime=INFINITE State=UP"
slurm_conf_changed=0
put_file "$ETC/slurm.conf" 644 root:root "$slurm_conf" && slurm_conf_changed=1

dbd_conf_changed=0
if [ "$ACCOUNTING" = 1 ]; then
    dbd_conf="AuthType=auth/munge
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=6819
SlurmUser=slurm
LogFile=$LOGS/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DBPASS"
    put_file "$ETC/slurmdbd.conf" 600 slurm:slurm "$dbd_conf" && dbd_conf_changed=1
fi
say "config written (node $node: $hardware; slurm.conf changed: $slurm_conf_changed)"

# ------------------------------------------------------------------------------------------------ munged
if ! running /run/munge/munged.pid munged; then
    rm -f /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged --force   # --force: reuse a stale socket of a killed munged
fi
poll "a munge credential round trip" sh -c 'munge -n | unmunge'
say "munged up"

# ---------------------------------------------------------------------------------- MariaDB and slurmdbd
if [ "$ACCOUNTING" = 1 ]; then
    install -d -o mysql -g mysql -m 755 /run/mysqld
    if [ ! -d /var/lib/mysql/mysql ]; then
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql >/tmp/dgss-mariadb-install.log 2>&1 ||
            { tail -n 25 /tmp/dgss-mariadb-install.log; fail "mariadb-install-db"; }
    fi
    if ! running "$DB_PIDFILE" mariadbd; then
        # own session and no inherited stdio, so it outlives this shell and CI's pipes
        setsid /usr/sbin/mariadbd --user=mysql --datadir=/var/lib/mysql --skip-networking \
            --socket="$DB_SOCKET" --pid-file="$DB_PIDFILE" --innodb-buffer-pool-size=128M \
            </dev/null >>"$LOGS/mariadbd.log" 2>&1 &
    fi
    poll "MariaDB to answer" mariadb-admin --socket="$DB_SOCKET" ping
    poll "MariaDB's pid file" running "$DB_PIDFILE" mariadbd
    mariadb --socket="$DB_SOCKET" -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
        ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DBPASS';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
        FLUSH PRIVILEGES;"
    say "MariaDB up"

    [ $dbd_conf_changed = 1 ] && halt /run/slurmdbd.pid slurmdbd
    running /run/slurmdbd.pid slurmdbd || /usr/sbin/slurmdbd
    poll "slurmdbd to answer sacctmgr" sacctmgr -n -P list cluster
    sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER" || sacctmgr -i add cluster "$CLUSTER" >/dev/null
    say "slurmdbd up (cluster $CLUSTER registered)"
fi

# -------------------------------------------------------------------------------------- slurmctld, slurmd
if [ $slurm_conf_changed = 1 ]; then
    halt /run/slurmd.pid slurmd
    halt /run/slurmctld.pid slurmctld
fi
running /run/slurmctld.pid slurmctld || /usr/sbin/slurmctld -i
poll "slurmctld to answer scontrol ping" scontrol ping
running /run/slurmd.pid slurmd || /usr/sbin/slurmd
say "slurmctld and slurmd started"

# -------------------------------------------------------------------------------- the node is schedulable
node_ready() {
    case "$(sinfo -h -N -n "$node" -p "$PARTITION" -o '%T' 2>/dev/null | head -n 1)" in
        idle|mixed|allocated|completing) return 0 ;;
        down*|drain*|fail*) scontrol update NodeName="$node" State=RESUME >/dev/null 2>&1; return 1 ;;
        *) return 1 ;;
    esac
}
if ! (for ((n = 0; n < WAIT_S * 5; n++)); do node_ready && exit 0; sleep 0.2; done; exit 1); then
    sinfo -N -l || true
    tail -n 20 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" || true
    fail "node $node is not schedulable after ${WAIT_S}s"
fi
sinfo
say "Slurm is up: cluster $CLUSTER, partition $PARTITION, node $node, accounting $ACCOUNTING"

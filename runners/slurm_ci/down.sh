#!/usr/bin/env bash
# runners/slurm_ci/down.sh - stop the single-node Slurm cluster that runners/slurm_ci/up.sh started.
#
# Cancels every job still known to the controller and waits (bounded) for them to leave, then stops
# slurmd, slurmctld, slurmdbd, MariaDB and munged, each by the pid in its pid file after checking the
# process name (TERM, then KILL after the bound).  Stale pid files are removed (a stale
# /run/slurmctld.pid makes the Debian package's prerm call scancel and `apt-get remove` fail).
# Idempotent: exits 0 when nothing runs.  Must run as root.
#
# Knobs (environment):
#   DGSS_SLURM_WAIT_S=30   bound on every wait
#   DGSS_SLURM_PURGE=0     1: also drop the accounting database and wipe Slurm's state and logs, so the
#                          next cluster starts job ids at 1 again (always both: a kept database with
#                          reset job ids gives duplicate sacct rows)
set -uo pipefail

WAIT_S=${DGSS_SLURM_WAIT_S:-30}
PURGE=${DGSS_SLURM_PURGE:-0}
T0=$EPOCHREALTIME
say() { printf '[slurm_ci/down %5.1fs] %s\n' "$(awk "BEGIN{print $EPOCHREALTIME - $T0}")" "$*"; }

[ "$(id -u)" -eq 0 ] || { say "run as root"; exit 1; }

# shellcheck source=runners/slurm_ci/common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"
stop() {
    local pidfile=$1 name=$2 pid n
    if ! running "$pidfile" "$name"; then
        rm -f "$pidfile"; say "$name: not running"; return 0
    fi
    pid=$(tr -cd '0-9' <"$pidfile")
    kill -TERM "$pid" 2>/dev/null
    for ((n = 0; n < WAIT_S * 10; n++)); do
        if ! running "$pidfile" "$name"; then rm -f "$pidfile"; say "$name (pid $pid): stopped"; return 0; fi
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    rm -f "$pidfile"
    say "$name (pid $pid): did not stop within ${WAIT_S}s, sent KILL"
}

# 1. jobs first, while the controller still answers
if running /run/slurmctld.pid slurmctld && scontrol ping >/dev/null 2>&1; then
    jobs=$(squeue -h -o '%A' 2>/dev/null | sort -u | tr '\n' ' ')
    if [ -n "${jobs// /}" ]; then
        say "cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null
        for ((n = 0; n < WAIT_S * 5; n++)); do
            [ -z "$(squeue -h -o '%A' 2>/dev/null)" ] && break
            sleep 0.2
        done
        [ -n "$(squeue -h -o '%A' 2>/dev/null)" ] && say "warning: jobs still listed after ${WAIT_S}s"
    fi
fi

# 2. daemons, in the reverse order of up.sh
stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
stop /run/slurmdbd.pid slurmdbd
if [ "$PURGE" = 1 ] && running /run/mysqld/mysqld.pid mariadbd; then
    mariadb --socket=/run/mysqld/mysqld.sock -e 'DROP DATABASE IF EXISTS slurm_acct_db' &&
        say "accounting database dropped"
fi
stop /run/mysqld/mysqld.pid mariadbd
stop /run/munge/munged.pid munged

# 3. step daemons of jobs that were running when slurmd stopped
left=$(ps -eo pid=,comm= | awk '$2 == "slurmstepd" {printf "%s ", $1}')
[ -n "$left" ] && say "warning: slurmstepd still running (pids $left)"

if [ "$PURGE" = 1 ]; then
    rm -rf /var/spool/slurmctld/* /var/spool/slurmd/* /var/log/slurm/*
    say "Slurm state and logs wiped"
fi
say "done"
exit 0

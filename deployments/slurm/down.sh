#!/usr/bin/env bash
# Stop the single-node SLURM cluster that up.sh started (idempotent). Its state is kept, so the next
# up.sh is quick and sacct still knows old jobs; `down.sh --purge` also deletes the state directory
# and the /etc/slurm links. Only daemons named by the pid files under $LLC_SLURM_STATE are stopped.
set -euo pipefail

STATE=${LLC_SLURM_STATE:-/var/lib/llc-slurm}
RUN=$STATE/run

say() { echo "slurm-down: $*" >&2; }

# stop PIDFILE NAME: SIGTERM the daemon the pid file names (if it is one), SIGKILL it after 20 s.
stop() {
    local pidfile=$1 name=$2 pid
    [[ -s $pidfile ]] || return 0
    pid=$(<"$pidfile")
    if [[ $pid =~ ^[0-9]+$ ]] && [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" == "$name" ]]; then
        say "stopping $name ($pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name did not stop in 20 s: killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pidfile"
}

[[ $(id -u) == 0 ]] || {
    say "error: run as root"
    exit 1
}
stop "$RUN/slurmd.pid" slurmd
stop "$RUN/slurmctld.pid" slurmctld
stop "$RUN/slurmdbd.pid" slurmdbd
stop "$STATE/db/mysqld.pid" mariadbd
# munged is shared with anything else on the machine that uses munge; up.sh starts it only when no
# munged answers, so stop it only with --purge.
if [[ ${1:-} == --purge ]]; then
    stop /run/munge/munged.pid munged
    for name in slurm.conf slurmdbd.conf; do
        [[ "$(readlink "/etc/slurm/$name" 2>/dev/null)" == "$STATE/etc/$name" ]] && rm -f "/etc/slurm/$name"
    done
    rm -rf "$STATE"
    say "purged $STATE"
fi
say "down"

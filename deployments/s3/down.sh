#!/usr/bin/env bash
# Stop the SeaweedFS server that up.sh started (idempotent); its data is kept for the next up.sh.
# `down.sh --purge` also deletes $LLC_S3_STATE. Only the weed named by the pid file is stopped.
set -euo pipefail

STATE=${LLC_S3_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/llc-s3}
PIDFILE=$STATE/weed.pid

say() { echo "s3-down: $*" >&2; }

if [[ -s $PIDFILE ]]; then
    pid=$(<"$PIDFILE")
    if [[ $pid =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == weed ]]; then
        say "stopping weed ($pid)"
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 200); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "weed did not stop in 10 s: killing it"
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$PIDFILE"
fi
if [[ ${1:-} == --purge ]]; then
    rm -rf "$STATE"
    say "purged $STATE"
fi
say "down"

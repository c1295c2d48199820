#!/usr/bin/env bash
# A local Prefect server with its UI: server.sh start | stop | status.
#   SQLite in $LLC_PREFECT_STATE by default; PostgreSQL when PREFECT_API_DATABASE_CONNECTION_URL is set,
#   e.g. postgresql+asyncpg://prefect:secret@db-host:5432/prefect.
#   Listens on $LLC_PREFECT_HOST:$LLC_PREFECT_PORT (127.0.0.1:4200); `start` returns once /api/health answers.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
PID_FILE="$LLC_PREFECT_STATE/server.pid"
LOG="$LLC_PREFECT_STATE/server.log"
HEALTH="http://$LLC_PREFECT_HOST:$LLC_PREFECT_PORT/api/health"
[ "$LLC_PREFECT_HOST" = 0.0.0.0 ] && HEALTH="http://127.0.0.1:$LLC_PREFECT_PORT/api/health"

running() { [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; }

start() {
  if running; then echo "prefect server already running (pid $(cat "$PID_FILE")): ${PREFECT_API_URL%/api}"; return; fi
  mkdir -p "$LLC_PREFECT_STATE"
  # The UI calls the API from the browser, so it must be told the address the browser can reach.
  PREFECT_HOME="$LLC_PREFECT_STATE" PREFECT_UI_API_URL="${PREFECT_UI_API_URL:-$PREFECT_API_URL}" \
    setsid "$PREFECT" server start --host "$LLC_PREFECT_HOST" --port "$LLC_PREFECT_PORT" \
    >"$LOG" 2>&1 </dev/null &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 "${LLC_PREFECT_START_TIMEOUT_S:-120}"); do
    if curl -sf "$HEALTH" >/dev/null; then
      echo "prefect server up: ${PREFECT_API_URL%/api} (export PREFECT_API_URL=$PREFECT_API_URL)"
      return
    fi
    running || { echo "prefect server exited; its log ($LOG):" >&2; tail -30 "$LOG" >&2; exit 1; }
    sleep 1
  done
  echo "prefect server not healthy after ${LLC_PREFECT_START_TIMEOUT_S:-120} s; log: $LOG" >&2
  stop
  exit 1
}

stop() {
  running || { rm -f "$PID_FILE"; echo "prefect server not running"; return; }
  local pid; pid="$(cat "$PID_FILE")"
  # setsid made the server a process-group leader: its uvicorn and service children go with it.
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$PID_FILE"
  echo "prefect server stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if running; then echo "running (pid $(cat "$PID_FILE")): ${PREFECT_API_URL%/api}"; else echo "stopped"; exit 3; fi ;;
  *) echo "usage: $0 start | stop | status" >&2; exit 2 ;;
esac

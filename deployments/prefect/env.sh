# Shared settings of the scripts here (sourced, not run). Every value can be set in the environment first.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PREFECT="${PREFECT:-$ROOT/.venv/bin/prefect}"
LLC_PREFECT_HOST="${LLC_PREFECT_HOST:-127.0.0.1}"
LLC_PREFECT_PORT="${LLC_PREFECT_PORT:-4200}"
# The server's PREFECT_HOME: its SQLite database (unless PREFECT_API_DATABASE_CONNECTION_URL names
# PostgreSQL), its log and its pid file.
LLC_PREFECT_STATE="${LLC_PREFECT_STATE:-$ROOT/.prefect/server}"
# The work pool that prefect.yaml's deployments name.
POOL=llc-process
export PREFECT_API_URL="${PREFECT_API_URL:-http://$LLC_PREFECT_HOST:$LLC_PREFECT_PORT/api}"
export PREFECT_SERVER_ANALYTICS_ENABLED="${PREFECT_SERVER_ANALYTICS_ENABLED:-false}"
export DO_NOT_TRACK="${DO_NOT_TRACK:-1}"

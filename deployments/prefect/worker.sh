#!/usr/bin/env bash
# A process worker for the llc-process pool: it runs each flow run of the sweep deployments as a child
# process of this machine, from this checkout (LLC_PROJECT_DIR, read by prefect.yaml's pull step).
#   worker.sh               poll the server until stopped (Ctrl-C twice: the first is ignored while runs finish)
#   worker.sh --run-once    run what is queued now, then exit
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
export LLC_PROJECT_DIR="${LLC_PROJECT_DIR:-$ROOT}"
exec "$PREFECT" worker start --pool "$POOL" --type process "$@"

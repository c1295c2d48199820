#!/usr/bin/env bash
# Create the process work pool if it is missing, then deploy everything in prefect.yaml
# (sweep/local, sweep/slurm, sweep/modal) to the server at $PREFECT_API_URL. Safe to run again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
if ! "$PREFECT" work-pool inspect "$POOL" >/dev/null 2>&1; then
  "$PREFECT" --no-prompt work-pool create "$POOL" --type process
fi
cd "$ROOT"
"$PREFECT" --no-prompt deploy --all

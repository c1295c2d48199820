#!/usr/bin/env bash
# Deploy the llc Modal app (src/llc/modal_app.py). Flags become LLC_MODAL_* settings, which the
# app reads when Modal imports it; other LLC_MODAL_* variables (and .env) apply as well.
#
#   deployments/modal/deploy.sh [--gpu-types H100,A100] [--tier debug|standard|fast|h100]
#                               [--timeout-s N] [--retries N] [--app-name NAME] [--env MODAL_ENVIRONMENT]
set -euo pipefail

PYTHON=${PYTHON:-python}
modal_args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --gpu-types) export LLC_MODAL_GPU_TYPES="$2"; shift 2 ;;
        --tier) export LLC_MODAL_TIER="$2"; shift 2 ;;
        --timeout-s) export LLC_MODAL_TIMEOUT_S="$2"; shift 2 ;;
        --retries) export LLC_MODAL_RETRIES="$2"; shift 2 ;;
        --app-name) export LLC_MODAL_APP_NAME="$2"; shift 2 ;;
        --env) export LLC_MODAL_ENVIRONMENT="$2"; modal_args+=(--env "$2"); shift 2 ;;
        -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
        *) echo "deploy.sh: unknown flag $1 (see --help)" >&2; exit 2 ;;
    esac
done

# Settings are checked here, before Modal is contacted: an unknown GPU type warns, none left is an error.
"$PYTHON" -c 'from llc.settings import ModalOptions as O; o = O()
print(f"deploying {o.app_name}: tier {o.tier}, GPUs {o.gpus()}, time limit {o.function_timeout_s()} s")'
exec "$PYTHON" -m modal deploy "${modal_args[@]}" -m llc.backends.modal.app

"""llc: local learning coefficients of neural networks, and sweeps of them as Prefect flows."""

from llc.local_server import apply_prefect_defaults

# Before anything here imports Prefect: the project's Prefect defaults (telemetry off, ...).
apply_prefect_defaults()

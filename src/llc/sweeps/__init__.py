"""Sweeps: a study of many cells, run as the Prefect flow `sweep` (see docs/sweeps.md)."""

from llc.settings import apply_prefect_defaults

# Before any module of this package imports Prefect: the project's Prefect defaults (telemetry off, ...).
apply_prefect_defaults()

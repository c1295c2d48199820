"""Sweeps: a study of many cells, run as the Prefect flow `sweep` (see docs/sweeps.md)."""

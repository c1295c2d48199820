"""Settings from LLC_* environment variables and a .env file; flags and study files override them."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

BEST_BY_PATTERN = r"^(min|max):\w+$"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLC_", env_file=".env", extra="ignore")

    runs_dir: Path = Field(Path("runs"), description="where run directories and sweep tables are written")
    study: Path = Field(Path("studies/quick.yaml"), description="the study a sweep runs when none is given")
    backend: str = Field("local", description="where cells run: local | slurm | modal")
    max_parallel: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="cells running at once"
    )
    threads_per_cell: int | None = Field(
        None, ge=1, description="CPU threads per cell on the local backend; default: cores / max_parallel"
    )
    timeout_s: float = Field(3600.0, gt=0, description="a cell still running after this is killed")
    retries: int = Field(2, ge=0, description="retries of a cell that failed with a retryable error")
    retry_delay_s: float = Field(2.0, ge=0, description="first retry delay; doubles on each retry")
    retry_jitter: float = Field(0.5, ge=0, description="random spread of retry delays, as a fraction")
    best_by: str = Field(
        "max:ess_per_second",
        pattern=BEST_BY_PATTERN,
        description="min:METRIC or max:METRIC for the best cell",
    )
    progress_every_s: float = Field(
        2.0, ge=0, description="how often the progress artifact and results.csv are refreshed mid-sweep"
    )


def load_settings() -> Settings:
    return Settings()

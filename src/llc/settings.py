"""Settings from LLC_* environment variables and a .env file; flags and study files override them."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from llc.config import ConfigError

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
    server_start_timeout_s: float = Field(
        180.0, gt=0, description="how long a sweep waits for the local Prefect server to start"
    )
    # Where results are stored (docs/storage.md). Keys never live here: AWS_* variables or prefect-aws blocks.
    s3_block: str | None = Field(None, description="name of a saved prefect-aws S3Bucket block")
    s3_bucket: str | None = Field(None, description="bucket, when no S3Bucket block is named")
    s3_endpoint_url: str | None = Field(
        None, description="S3-compatible endpoint (Tigris, MinIO, SeaweedFS); none: AWS"
    )
    s3_prefix: str = Field("", description="folder inside the bucket that everything goes under")
    s3_credentials_block: str | None = Field(
        None, description="name of a saved AwsCredentials block; none: the standard AWS_* variables"
    )
    # W&B tracking (docs/tracking.md). The API key comes from WANDB_API_KEY or the Secret block named here.
    wandb_mode: Literal["online", "offline", "disabled"] = Field(
        "disabled", description="W&B tracking of each computed cell: online | offline | disabled"
    )
    wandb_project: str = Field("llc", description="W&B project of the runs")
    wandb_entity: str | None = Field(None, description="W&B entity (user or team); none: the key's default")
    wandb_api_key_block: str | None = Field(
        None, description="name of a Prefect Secret block holding the W&B API key"
    )


def load_settings() -> Settings:
    return Settings()


def parse_pairs(pairs: list[str] | None, flag: str, example: str) -> dict[str, Any]:
    """`FLAG KEY=VALUE` strings (`--set`, `--backend-option`) to a dict, VALUE parsed as YAML;
    a malformed pair is a ConfigError naming the flag and an example."""
    parsed: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {pair!r}: expected KEY=VALUE, e.g. {flag} {example}")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{flag} {pair!r}: VALUE is not valid YAML ({exc})") from None
    return parsed

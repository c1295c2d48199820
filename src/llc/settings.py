"""Settings from LLC_* environment variables and a .env file; flags and study files override them."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLC_", env_file=".env", extra="ignore")

    runs_dir: Path = Path("runs")


def load_settings() -> Settings:
    return Settings()

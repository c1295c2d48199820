"""Settings from LLC_* environment variables and a .env file; flags and study files override them.

Every setting is declared here once: the sweep's (`Settings`), and the SLURM and Modal backends' own
options (`SlurmOptions`, `ModalOptions`), which `--backend-option`, a study's `execution.backend_options`
and LLC_SLURM_* / LLC_MODAL_* set.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from llc.errors import ConfigError

BEST_BY_PATTERN = r"^(min|max):\w+$"
GPU_TYPES = ("H100", "A100", "A100-80GB", "L40S", "L4", "A10G", "T4")

log = logging.getLogger(__name__)


# What the project needs of Prefect, whatever the user's environment (their own values win).
PREFECT_DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",  # no telemetry (and no ERROR line where it cannot be sent)
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",  # if Prefect's temporary server is used
}


def apply_prefect_defaults() -> None:
    """Set the project's Prefect defaults in this process's environment, before Prefect reads it."""
    for key, value in PREFECT_DEFAULTS.items():
        os.environ.setdefault(key, value)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LLC_", env_file=".env", extra="ignore")

    runs_dir: Path = Field(Path("runs"), description="where run directories and sweep tables are written")
    study: Path = Field(Path("studies/quick.yaml"), description="study YAML; default studies/quick.yaml")
    backend: str = Field("local", description="where cells run: local | slurm | modal")
    max_parallel: int = Field(
        default_factory=lambda: os.cpu_count() or 1, ge=1, description="cells running at once"
    )
    threads_per_cell: int | None = Field(
        None, ge=1, description="CPU threads per cell on the local backend; default: cores / max_parallel"
    )
    timeout_s: float = Field(3600.0, gt=0, description="seconds a cell may run before it is stopped")
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


class SlurmOptions(BaseSettings):
    """How cells are submitted; each option also reads LLC_SLURM_<NAME> (and .env); arguments win."""

    model_config = SettingsConfigDict(env_prefix="LLC_SLURM_", env_file=".env", extra="ignore")

    partition: str | None = Field(None, description="partition (sbatch --partition); default: the cluster's")
    account: str | None = Field(None, description="account charged (sbatch --account)")
    qos: str | None = Field(None, description="quality of service (sbatch --qos)")
    timeout_min: int | None = Field(
        None, ge=1, description="time limit of one job in minutes; default: the cell timeout plus a minute"
    )
    cpus: int = Field(1, ge=1, description="CPUs per cell (sbatch --cpus-per-task)")
    mem_gb: float | None = Field(None, gt=0, description="memory per cell in GB; default: the cluster's")
    gpus: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        "auto",
        description="GPUs per cell; auto: one for a cell whose gpu_mode is vectorized or sequential"
        " where the partition has GPUs (sinfo), else none",
    )
    signal_delay_s: int = Field(
        90, ge=1, description="seconds before the time limit to checkpoint and requeue (at most half of it)"
    )
    max_requeues: int = Field(3, ge=0, description="time limits a cell may hit and be requeued")
    setup: list[str] = Field(default_factory=list, description="shell lines run before each cell")
    sbatch: dict[str, str | int | bool] = Field(
        default_factory=dict,
        description="further sbatch options, e.g. constraint=a100 (true: a bare flag, e.g. no-requeue)",
    )
    python: str | None = Field(None, description="python command on the nodes; default: this interpreter")
    folder: Path | None = Field(None, description="submitit's logs and pickles; default: RUNS_DIR/.slurm/...")
    job_name: str = Field("llc", pattern=r"^[\w.-]+$", description="job name prefix; a session id follows")
    poll_s: float = Field(2.0, gt=0, description="how often sacct (or squeue) is asked about waiting cells")
    queue_timeout_s: float | None = Field(
        None, gt=0, description="a cell still queued after this is cancelled; default: wait for the queue"
    )
    lost_after_s: float = Field(
        300.0, gt=0, description="a job neither sacct nor squeue knows for this long is recorded as lost"
    )


@dataclass(frozen=True)
class Tier:
    """Resources of one call: GPU types in order of preference, CPU cores, memory, time limit."""

    gpus: tuple[str, ...]
    cpu: float
    memory_mb: int
    timeout_s: int


TIERS = {
    "debug": Tier(("T4", "L4"), cpu=2.0, memory_mb=8192, timeout_s=900),
    "standard": Tier(("L4", "A10G", "T4"), cpu=4.0, memory_mb=16384, timeout_s=3600),
    "fast": Tier(("A100", "L40S", "A10G"), cpu=8.0, memory_mb=32768, timeout_s=4 * 3600),
    "h100": Tier(("H100", "A100-80GB"), cpu=8.0, memory_mb=65536, timeout_s=8 * 3600),
}


class ModalOptions(BaseSettings):
    """Settings of the app (deploy time) and client; each reads LLC_MODAL_<NAME> and .env, arguments win."""

    model_config = SettingsConfigDict(env_prefix="LLC_MODAL_", env_file=".env", extra="ignore")

    app_name: str = Field("llc-experiments", description="name of the deployed Modal app")
    environment: str | None = Field(None, description="Modal environment; default: the profile's")
    tier: Literal["debug", "standard", "fast", "h100"] = Field(
        "standard", description="resources of a call (deploy time): GPU types, CPU, memory, time limit"
    )
    gpu_types: Annotated[list[str] | None, NoDecode] = Field(
        None, description=f"GPU types in order of preference (deploy time), from {', '.join(GPU_TYPES)}"
    )
    timeout_s: int | None = Field(
        None, ge=10, le=86400, description="a call's hard time limit (deploy time); default: the tier's"
    )
    retries: int = Field(1, ge=0, le=10, description="Modal's retries of a crashed call (deploy time)")
    runs_volume: str = Field("llc-runs", description="volume holding run directories")
    cache_volume: str = Field("llc-cache", description="volume holding datasets and model files")
    wandb_secret: str | None = Field(None, description="Modal secret with WANDB_API_KEY (deploy time)")
    s3_secret: str | None = Field(None, description="Modal secret with AWS credentials (deploy time)")
    python_sources: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="more local modules in the image (custom experiments, `problem: module` factories)",
    )
    poll_s: float = Field(2.0, gt=0, description="how often a waiting cell asks for its result")
    client_hang_timeout_s: float = Field(
        900.0, gt=0, description="a call not started after this is cancelled (a running call never is)"
    )
    preflight: bool = Field(True, description="ping the app when the backend is opened")
    preflight_timeout_s: float = Field(180.0, gt=0, description="how long the preflight ping may take")

    @field_validator("gpu_types", "python_sources", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        """`H100,A100` from the environment or a flag, as well as a list."""
        return (
            [part.strip() for part in value.split(",") if part.strip()] if isinstance(value, str) else value
        )

    @field_validator("gpu_types")
    @classmethod
    def _known_gpus(cls, value: list[str] | None) -> list[str] | None:
        known = {name.upper(): name for name in GPU_TYPES}
        for name in (n for n in value or [] if n.upper() not in known):
            log.warning("unknown Modal GPU type %r dropped; known: %s", name, ", ".join(GPU_TYPES))
        kept = [known[n.upper()] for n in value or [] if n.upper() in known]
        if value is not None and not kept:
            raise ValueError(f"no known GPU type in {value}; choose from {', '.join(GPU_TYPES)}")
        return None if value is None else list(dict.fromkeys(kept))

    def gpus(self) -> list[str]:
        return list(self.gpu_types or TIERS[self.tier].gpus)

    def function_timeout_s(self) -> int:
        return self.timeout_s or TIERS[self.tier].timeout_s


# The settings a study's `execution` block may set (llc.sweeps.study.Execution); a sweep's flags set some of
# them again, and win (llc.sweeps.options.FLAG_OPTIONS).
STUDY_OPTIONS = (
    "backend",
    "max_parallel",
    "timeout_s",
    "retries",
    "retry_delay_s",
    "retry_jitter",
    "best_by",
    "wandb_mode",
)


def load_settings() -> Settings:
    return Settings()


def overrides(name: str, keys: tuple[str, ...], **more: Any) -> type[BaseModel]:
    """A model of optional overrides of these settings (a study's `execution` block, a sweep's flags): each
    key with the setting's own type, checks and description, None where it is not set."""
    fields: dict[str, Any] = more
    for key in keys:
        info = Settings.model_fields[key]
        kind = info.annotation | None
        fields[key] = (
            Annotated[kind, *info.metadata] if info.metadata else kind,
            Field(None, description=info.description),
        )
    return create_model(name, __config__=ConfigDict(extra="forbid", frozen=True), **fields)


def described(key: str) -> str:
    """A setting's description and its environment variable, as a flag's help."""
    return f"{Settings.model_fields[key].description} (env LLC_{key.upper()})"


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

"""How a sweep runs, resolved once: flags over the study's `execution` block over LLC_* settings."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from llc.errors import ConfigError, format_loc, problems
from llc.settings import STUDY_OPTIONS, Settings


def resolve_options(settings: Settings, execution: BaseModel, **flags: Any) -> Settings:
    """The settings with the study's keys, then the flags (those not None), applied and checked by the
    model that declares them; a bad value is a ConfigError naming the option."""
    given = {key: value for key, value in execution if key in STUDY_OPTIONS and value is not None}
    given |= {key: value for key, value in flags.items() if value is not None}
    try:
        options = Settings.model_validate({**settings.model_dump(), **given})
    except ValidationError as exc:
        issues = problems(exc.errors(), lambda _: list(Settings.model_fields))
        raise ConfigError("; ".join(f"{format_loc(loc)}: {msg}" for loc, msg in issues)) from None
    # Absolute paths in tables and links.
    return options.model_copy(update={"runs_dir": options.runs_dir.resolve()})

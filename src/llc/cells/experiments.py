"""Find an experiment by its `package.module:Class` path and give its configs stable ids.

Kept free of torch and Prefect imports: a worker running no-op cells starts in a fraction of a second.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from typing import Any

from pydantic import BaseModel

from llc.imports import import_path

LLC_EXPERIMENT = "llc.run.experiment:LLCExperiment"


@functools.cache
def load_experiment(path: str) -> type:
    """The experiment class at `package.module:Class`; it must have a pydantic `config_model` and `run`."""
    obj: Any = import_path(path, "experiment")
    model = getattr(obj, "config_model", None)
    if not (inspect.isclass(model) and issubclass(model, BaseModel) and callable(getattr(obj, "run", None))):
        raise TypeError(
            f"experiment {path!r} is not an Experiment: it needs a pydantic `config_model` "
            "and a `run(config, run_dir) -> metrics` method"
        )
    return obj


def config_model(path: str) -> type[BaseModel]:
    """The experiment's config model; the LLC experiment's without importing torch (planning stays fast)."""
    if path == LLC_EXPERIMENT:
        from llc.config import RunConfig

        return RunConfig
    model: type[BaseModel] = load_experiment(path).config_model
    return model


def run_id(path: str, config: BaseModel) -> str:
    """The config's own run_id when it defines one (RunConfig does); else a hash of config and code."""
    own = getattr(config, "run_id", None)
    if isinstance(own, str):
        return own
    data = json.dumps(config.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256((path + data + _source_fingerprint(path)).encode()).hexdigest()[:16]


def family_id(config: BaseModel) -> str | None:
    """Runs that share data and a trained point share a family (LLC runs); other experiments have none."""
    own = getattr(config, "family_id", None)
    return own if isinstance(own, str) else None


@functools.cache
def _source_fingerprint(path: str) -> str:
    """Hash of the experiment module's source, so editing the experiment never reuses old results."""
    module = inspect.getmodule(load_experiment(path))
    try:
        source = inspect.getsource(module) if module else ""
    except (OSError, TypeError):
        source = ""
    return hashlib.sha256(source.encode()).hexdigest()[:12]

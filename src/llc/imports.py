"""The object a `package.module:attr` reference in a config, study or registry names."""

from __future__ import annotations

import importlib
from typing import Any

from llc.errors import ConfigError

FIX = "its package must be importable where the run executes (installed, or on PYTHONPATH)"


def import_path(reference: str, key: str) -> Any:
    """The object at `package.module:attr` (attr may be dotted); a ConfigError naming the key, the
    module or attribute not found, and the fix. The ImportError or AttributeError is its cause."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key} {reference!r} is not a reference: write it as 'package.module:attr'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"{key} {reference!r} cannot be imported ({type(exc).__name__}: {exc}); {FIX}"
        ) from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise ConfigError(
                f"{key} {reference!r} cannot be imported: {module_name} has no {attr!r} ({exc}); "
                "check the name after the colon"
            ) from exc
    return obj

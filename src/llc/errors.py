"""The project's own error for a user's mistake: raised where the mistake enters (the API call, the
CLI, the study), before any work is submitted or written, with a message that names the fix."""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run, with a message that names the key and the fix."""

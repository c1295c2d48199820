"""The project's own error for a user's mistake: raised where the mistake enters (the API call, the
CLI, the study), before any work is submitted or written, with a message that names the fix; and the
one formatter of pydantic's validation errors into such messages."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any


class ConfigError(ValueError):
    """A configuration that cannot run, with a message that names the key and the fix."""


Loc = tuple[str | int, ...]
KnownKeys = Callable[[Loc], Sequence[str]]  # the keys allowed at a location, for "did you mean" hints


def problems(
    errors: Iterable[Mapping[str, Any]], known_keys: KnownKeys, hints: Mapping[str, str] | None = None
) -> list[tuple[Loc, str]]:
    """(location, message) per pydantic validation error: an unknown key with its entry in `hints` (a
    key users write, such as devinterp's names, mapped to what to write instead) or the closest known
    one, else pydantic's message with the value given and what is allowed."""
    issues = []
    for err in errors:
        loc = tuple(err["loc"])
        if err["type"] == "extra_forbidden":
            known, key = known_keys(loc[:-1]), str(loc[-1])
            close = next(iter(difflib.get_close_matches(key, known, n=1)), None)
            hint = (
                f" ({hints[key]})" if key in (hints or {}) else f" (did you mean {close!r}?)" if close else ""
            )
            issues.append((loc, f"unknown key{hint}; known keys: {', '.join(known)}"))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        given, allowed = err.get("input"), err.get("ctx", {}).get("expected")
        # A mapping or list given is the user's own text, often long; a scalar is worth repeating.
        shown = loc and "input" in err and not isinstance(given, dict | list) and "got" not in msg
        issues.append(
            (
                loc,
                msg
                + (f" (got {given!r})" if shown else "")
                + (f"; allowed: {allowed}" if allowed and allowed not in msg else ""),
            )
        )
    return issues


def describe(
    errors: Iterable[Mapping[str, Any]],
    known_keys: KnownKeys,
    title: str,
    hints: Mapping[str, str] | None = None,
) -> str:
    """`title:` and one line per problem, each naming its key (`config` for the whole)."""
    lines = [f"{format_loc(loc) or 'config'}: {msg}" for loc, msg in problems(errors, known_keys, hints)]
    return f"{title}:\n  " + "\n  ".join(lines)


def format_loc(loc: Loc) -> str:
    """('problems', 0, 'overrides', 'widths') -> 'problems[0].overrides.widths'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def merge_union_branches(errors: Iterable[Mapping[str, Any]], fields: Iterable[str]) -> list[dict[str, Any]]:
    """A key of `fields` that takes one of several forms (a number or "auto") fails once per form, each
    error's location naming the form: one error per key instead, its messages joined by "or"."""
    known = set(fields)
    merged: list[dict[str, Any]] = []
    for err in errors:
        loc = tuple(err["loc"])
        if not (len(loc) == 2 and isinstance(loc[1], str) and loc[0] in known):
            merged.append(dict(err))
            continue
        previous = merged[-1] if merged else None
        if previous is not None and tuple(previous["loc"]) == loc[:1]:
            previous["msg"] += f", or {err['msg'][0].lower()}{err['msg'][1:]}"
        else:
            merged.append({**err, "loc": loc[:1], "ctx": {}})
    return merged

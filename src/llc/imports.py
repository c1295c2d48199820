"""The object a `package.module:attr` reference in a config, study or registry names."""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
from pathlib import Path
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


def check_reference(reference: str, key: str) -> None:
    """Without importing anything (planning a study loads no torch, nor the user's code): the module of
    `package.module:attr` exists and defines, assigns or imports `attr` at its top level; a ConfigError
    naming the key, what is missing and the closest name it has, else nothing. A module whose source
    cannot be read (compiled, or `attr` made at run time) passes: the run then imports it."""
    module_name, _, attr = reference.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{key} {reference!r} is not a reference: write it as 'package.module:attr'")
    source = module_source(module_name)
    if source is None:
        raise ConfigError(f"{key} {reference!r}: cannot find module {module_name!r}; {FIX}")
    if source.suffix != ".py":
        return
    try:
        tree = ast.parse(source.read_text(), str(source))
    except (OSError, SyntaxError, ValueError):
        return
    names = _top_level_names(tree)
    first = attr.split(".")[0]
    if first in names or "*" in names or "__getattr__" in names:
        return
    close = difflib.get_close_matches(first, sorted(names), n=1)
    hint = f" (did you mean {module_name}:{close[0]}?)" if close else ""
    raise ConfigError(
        f"{key} {reference!r}: {module_name} has no {first!r}{hint}; check the name after the colon"
    )


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.If | ast.Try):  # definitions under a guard (TYPE_CHECKING, a fallback)
            names |= _top_level_names(ast.Module(body=[*ast.iter_child_nodes(node)], type_ignores=[]))
    return names


def module_source(module_name: str) -> Path | None:
    """The file of a module, found without importing it or its parent packages (None: not found)."""
    top, *rest = module_name.split(".")
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if not rest:
        return Path(spec.origin) if spec.origin and spec.has_location else Path(top)
    for root in spec.submodule_search_locations or []:
        base = Path(root).joinpath(*rest)
        for candidate in (base.with_suffix(".py"), base / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None

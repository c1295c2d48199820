"""What a module problem adds to its run_id and family_id: hashes of the weights file's content and
of the factories' source.

The source is every .py file of the top-level package the factories come from (a lone module: its
file), since the model's class is often defined beside, not in, the factory's file. Nothing here
imports torch or the user's code (importlib finds the files), so planning a study stays fast.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
from pathlib import Path

from llc.errors import ConfigError
from llc.imports import check_reference


def reference_fingerprint(model: str | None, data: str | None, loss: str, weights: str | None) -> str:
    """Hash of the factories' source and of the weights file's content."""
    digest = hashlib.sha256()
    for key, reference in (("model", model), ("data", data), ("loss", loss)):
        if reference is not None and ":" in reference:
            check_reference(reference, key)
            digest.update(_package_source_hash(reference.partition(":")[0], key).encode())
    if weights is not None:
        digest.update(_file_hash(weights).encode())
    return digest.hexdigest()[:16]


def _package_source_hash(module_name: str, key: str) -> str:
    top = module_name.split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"{key}: cannot find module {top!r} ({exc})") from None
    if spec is None or (spec.origin is None and not spec.submodule_search_locations):
        raise ConfigError(
            f"{key}: cannot find module {top!r}; it must be importable (installed, or on PYTHONPATH)"
        )
    roots = list(spec.submodule_search_locations or [])
    files = sorted(p for root in roots for p in Path(root).rglob("*.py")) if roots else [Path(spec.origin)]
    return _hash_files(tuple((str(p), *_stamp(p)) for p in files))


def _stamp(path: Path) -> tuple[int, int, int]:
    """What changes when a file is rewritten or replaced: its inode, modification time and size."""
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=64)
def _hash_files(signature: tuple[tuple[str, int, int, int], ...]) -> str:
    """Hash of the files' paths (relative to the first one's folder) and content; cached while their
    stamps stay the same."""
    digest = hashlib.sha256()
    base = Path(signature[0][0]).parent if signature else Path()
    for path, *_ in signature:
        digest.update(str(Path(path).relative_to(base) if Path(path).is_relative_to(base) else path).encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _file_hash(path: str) -> str:
    """Hash of the file's content alone (not its name: a moved weights file keeps its results)."""
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"weights: no such file {path!r} (a state_dict saved with torch.save)")
    return _content_hash(str(file.resolve()), *_stamp(file))


@functools.lru_cache(maxsize=64)
def _content_hash(path: str, inode: int, mtime_ns: int, size: int) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()

"""An in-process stand-in for the Modal objects the backend uses (Function, FunctionCall, Volume, Dict).

Calls run the app's real function bodies in threads of this process; the runs volume is a local folder
that the bodies write to as if it were mounted. Signatures follow modal 1.6, and failures are Modal's
own exception classes, raised where Modal raises them: at spawn, or from FunctionCall.get.
"""

from __future__ import annotations

import itertools
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import modal.exception as modal_errors
from modal.types import FileEntry, FileEntryType

from llc.backends.modal import app as modal_app
from llc.backends.modal.client import progress_board
from llc.settings import ModalOptions

_MISSING = object()


class StandInFunctionCall:
    """A spawned call: its body runs in a thread once `start_delay_s` has passed (None: it never starts)."""

    _calls: ClassVar[dict[str, StandInFunctionCall]] = {}
    _ids = itertools.count(1)

    def __init__(self, function: StandInFunction, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self.object_id = f"fc-standin{next(self._ids)}"
        self.function = function
        self.cancelled = threading.Event()
        self.terminate_containers: bool | None = None
        self.started = threading.Event()
        self._done = threading.Event()
        self._result: Any = None
        self._error: BaseException | None = None
        self._calls[self.object_id] = self
        threading.Thread(target=self._run, args=(args, kwargs), daemon=True).start()

    @classmethod
    def from_id(cls, function_call_id: str, client: Any = None) -> StandInFunctionCall:
        try:
            return cls._calls[function_call_id]
        except KeyError:
            raise modal_errors.NotFoundError(f"FunctionCall {function_call_id} not found") from None

    def get(self, timeout: float | None = None, *, index: int = 0) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError()  # Python's own, as modal's poll_function raises it
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self, terminate_containers: bool = False) -> None:
        self.terminate_containers = terminate_containers
        self.cancelled.set()
        if not self.started.is_set():
            self._error = modal_errors.InputCancellation("the input was cancelled")
            self._done.set()

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        delay = self.function.start_delay_s
        if delay is None or self.cancelled.wait(delay):
            return
        self.started.set()
        try:
            self._result = self.function.body(*args, **kwargs)
        except BaseException as exc:
            self._error = exc
        if self.function.get_error is not None:
            self._error = self.function.get_error
        self._done.set()


class StandInFunction:
    """A deployed function: `spawn` fails with `spawn_errors[n]` on its n-th call (1-based)."""

    def __init__(self, body: Callable[..., Any]) -> None:
        self.body = body
        self.start_delay_s: float | None = 0.0
        self.spawn_errors: dict[int, BaseException] = {}
        self.get_error: BaseException | None = None  # raised by get() once the body has run
        self.spawns = 0
        self.calls: list[StandInFunctionCall] = []

    def spawn(self, *args: Any, **kwargs: Any) -> StandInFunctionCall:
        self.spawns += 1
        if error := self.spawn_errors.get(self.spawns):
            raise error
        call = StandInFunctionCall(self, args, kwargs)
        self.calls.append(call)
        return call

    def local(self, *args: Any, **kwargs: Any) -> Any:
        return self.body(*args, **kwargs)


class StandInVolume:
    """A volume as a local folder; paths are relative to its root, as on Modal."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.removed: list[str] = []

    def listdir(self, path: str, *, recursive: bool = False) -> list[FileEntry]:
        base = self.root / path.lstrip("/")
        if not base.exists():
            raise modal_errors.NotFoundError(f"No such file or directory: {path}")
        if base.is_file():
            return [self._entry(base)]
        found = base.rglob("*") if recursive else base.iterdir()
        return [self._entry(p) for p in sorted(found)]

    def read_file(self, path: str) -> Iterator[bytes]:
        target = self.root / path.lstrip("/")
        if not target.is_file():
            raise FileNotFoundError(f"No such file: {path}")
        with target.open("rb") as handle:
            yield from iter(lambda: handle.read(1 << 16), b"")

    def remove_file(self, path: str, recursive: bool = False) -> None:
        target = self.root / path.lstrip("/")
        if not target.exists():
            raise FileNotFoundError(f"No such file: {path}")
        if target.is_dir():
            if not recursive:
                raise modal_errors.InvalidError(f"{path} is a directory: pass recursive=True")
            shutil.rmtree(target)
        else:
            target.unlink()
        self.removed.append(path)

    def commit(self) -> None:
        """Writes are visible at once here."""

    def reload(self) -> None:
        """Writes are visible at once here."""

    def _entry(self, path: Path) -> FileEntry:
        stat = path.stat()
        kind = FileEntryType.DIRECTORY if path.is_dir() else FileEntryType.FILE
        return FileEntry(
            path=path.relative_to(self.root).as_posix(),
            type=kind,
            mtime=int(stat.st_mtime),
            size=stat.st_size,
        )


class StandInDict:
    def __init__(self) -> None:
        self.data: dict[Any, Any] = {}
        self.history: list[tuple[Any, Any]] = []
        self._lock = threading.Lock()

    def put(self, key: Any, value: Any, *, skip_if_exists: bool = False) -> bool:
        with self._lock:
            if skip_if_exists and key in self.data:
                return False
            self.data[key] = value
            self.history.append((key, value))
            return True

    def get(self, key: Any, default: Any | None = None) -> Any:
        with self._lock:
            return self.data.get(key, default)

    def pop(self, key: Any, default: Any = _MISSING) -> Any:
        with self._lock:
            if key in self.data:
                return self.data.pop(key)
        if default is _MISSING:
            raise KeyError(key)
        return default


class StandInModal:
    """The backend's Modal client: the deployed app's functions, its runs volume and its progress board."""

    def __init__(self, root: Path, options: ModalOptions | None = None) -> None:
        self.options = options or ModalOptions()
        self.volume_root = root / "volume"
        self.volume_root.mkdir(parents=True, exist_ok=True)
        self.volumes = {self.options.runs_volume: StandInVolume(self.volume_root)}
        self.dicts: dict[str, StandInDict] = {}
        self.board = self.dict(progress_board(self.options.app_name))

        def serve(request: dict[str, Any]) -> dict[str, Any]:
            return modal_app.serve_cell(request, self.volume_root, self.board)

        self.functions = {
            "run_cell_gpu": StandInFunction(serve),
            "run_cell_cpu": StandInFunction(serve),
            "ping": StandInFunction(modal_app.ping.local),
        }

    def function(self, name: str) -> StandInFunction:
        if name not in self.functions:
            raise modal_errors.NotFoundError(f"Lookup failed for Function '{name}'")
        return self.functions[name]

    def volume(self, name: str) -> StandInVolume:
        if name not in self.volumes:
            raise modal_errors.NotFoundError(f"Volume '{name}' not found")
        return self.volumes[name]

    def dict(self, name: str) -> StandInDict:
        return self.dicts.setdefault(name, StandInDict())

    def call(self, call_id: str) -> StandInFunctionCall:
        return StandInFunctionCall.from_id(call_id)

    def cell_spawns(self) -> int:
        return self.functions["run_cell_gpu"].spawns + self.functions["run_cell_cpu"].spawns

    def age(self, run_id: str, seconds_ago: float) -> None:
        """Make a run on the volume look older (its files' modification times)."""
        for path in (self.volume_root / run_id).rglob("*"):
            stat = path.stat()
            os.utime(path, (stat.st_atime - seconds_ago, stat.st_mtime - seconds_ago))

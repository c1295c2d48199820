"""A module problem: your model, data and loss, named by factories in a config or given as objects.

What the ids add for factories and a weights file is in module_ids.py (no torch there: planning a
study stays fast); `object_fingerprint` is its counterpart for objects given to llc.estimate.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch

from llc.config import RunConfig
from llc.errors import ConfigError
from llc.imports import import_path
from llc.modules.model import LOSSES, LossFn, ModuleModel

Data = Any  # a torch Dataset (or DataLoader) of (x, y) pairs, or an (x, y) pair of tensors


def object_fingerprint(
    module: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str | LossFn,
    output: int | str | None = None,
) -> str:
    """Hash of a module given as an object (its class's source file, architecture and weights), the
    data, the loss and the output element read: what llc.estimate adds to the ids."""
    digest = hashlib.sha256()
    if output is not None:
        digest.update(f"output:{output!r}".encode())
    source = inspect.getsourcefile(type(module))
    if source is not None:
        digest.update(Path(source).read_bytes())
    digest.update(repr(module).encode())
    for name, tensor in [*module.state_dict().items(), ("x", x), ("y", y)]:
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    if isinstance(loss, str):
        digest.update(loss.encode())
    else:
        try:
            digest.update(inspect.getsource(loss).encode())
        except (OSError, TypeError):
            digest.update(getattr(loss, "__qualname__", repr(loss)).encode())
    return digest.hexdigest()[:16]


def as_tensors(data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, y) with the points along the first dimension, from a pair of tensors, a TensorDataset, any
    Dataset of (x, y) pairs, or a DataLoader over one."""
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
    elif isinstance(data, torch.utils.data.Dataset):
        pairs = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        x, y = (_stack(items) for items in zip(*pairs, strict=True))
    else:
        raise ConfigError(
            f"data must be an (x, y) pair of tensors or a Dataset of (x, y) pairs, got {type(data).__name__}"
        )
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ConfigError(
            f"data: x and y need the same number (>= 2) of points, got {x.shape[0]} and {y.shape[0]}"
        )
    return x, y


def _stack(items: Iterable[Any]) -> torch.Tensor:
    return torch.stack([item if isinstance(item, torch.Tensor) else torch.as_tensor(item) for item in items])


def loss_function(loss: str | LossFn) -> LossFn:
    if callable(loss):
        return loss
    if loss in LOSSES:
        return LOSSES[loss]
    loss_fn: LossFn = import_path(loss, "loss")
    return loss_fn


def module_problem(
    config: RunConfig,
    module: torch.nn.Module | None = None,
    data: Data | None = None,
    loss: str | LossFn | None = None,
) -> tuple[ModuleModel, torch.Tensor, torch.Tensor]:
    """The model, x and y of a module problem, from the objects given or the config's factories, in
    the config's dtype and on the CPU (floating-point data only; labels and token ids keep theirs)."""
    if module is not None:
        module = copy.deepcopy(module)  # the caller's module stays as it was (device, dtype, mode)
    else:
        assert config.model is not None
        module = _call_factory(config.model, "model")
        if not isinstance(module, torch.nn.Module):
            raise ConfigError(
                f"model: {config.model} returned {type(module).__name__}, not a torch.nn.Module"
            )
        if config.weights is not None:
            _load_weights(module, config.weights)
    if data is None:
        assert config.data is not None
        data = _call_factory(config.data, "data")
    dtype = getattr(torch, config.state_dtype)  # dtype=bfloat16: float32 here, bfloat16 under autocast
    x, y = as_tensors(data)
    x, y = (t.detach().to(dtype) if t.is_floating_point() else t.detach() for t in (x, y))
    module = module.to(dtype=dtype, device="cpu")
    loss_fn = loss_function(loss if loss is not None else config.loss)
    check_finite(x, y)
    compute = getattr(torch, config.compute_dtype) if config.compute_dtype else None
    model = ModuleModel(module, loss_fn, x.dim() - 1, config.gpu_mode != "sequential", compute=compute)
    model.check_on_data(x, y)
    return model, x, y


def check_finite(x: torch.Tensor, y: torch.Tensor) -> None:
    """NaN or inf in the data is a ConfigError naming the first row that holds one."""
    for name, t in (("x", x), ("y", y)):
        if not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t.reshape(t.shape[0], -1)).all(dim=1)
        if bad.any():
            rows = bad.nonzero().flatten()
            raise ConfigError(
                f"data: {name} holds NaN or inf at row {int(rows[0])} ({len(rows)} of {t.shape[0]} rows); "
                "drop or fill those rows"
            )


class OutputElement(torch.nn.Module):
    """A model whose forward returns a tuple, list or dict, reduced to the element that holds the
    predictions (llc.estimate's `output=`: an index or a key)."""

    def __init__(self, model: torch.nn.Module, output: int | str) -> None:
        super().__init__()
        self.model = model
        self.output = output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        if isinstance(out, torch.Tensor):
            raise ConfigError(
                "output= is for a model whose forward returns a tuple or dict; this one returns a tensor"
            )
        try:
            return out[self.output]
        except (IndexError, KeyError, TypeError):
            held = list(out) if isinstance(out, dict) else f"0 to {len(out) - 1}"
            raise ConfigError(
                f"output={self.output!r}: the model's {type(out).__name__} has no such element ({held})"
            ) from None

    def extra_repr(self) -> str:
        return f"output={self.output!r}"


def _call_factory(reference: str, key: str) -> Any:
    factory: Callable[[], Any] = import_path(reference, key)
    if not callable(factory):
        raise ConfigError(f"{key}: {reference} is not callable (a factory taking no arguments)")
    return factory()


def _load_weights(module: torch.nn.Module, path: str) -> None:
    if not Path(path).is_file():
        raise ConfigError(f"weights: no such file {path!r} (a state_dict saved with torch.save)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict(state)
    except (RuntimeError, OSError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"weights: {path} cannot be loaded into the model: {exc}") from None

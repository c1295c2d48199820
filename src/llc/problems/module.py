"""A module problem: your model, data and loss, named by factories in a config or given as objects.

What the ids add for factories and a weights file is in module_ids.py (no torch there: planning a
study stays fast); `object_fingerprint` is its counterpart for objects given to llc.estimate.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from llc.config import FULL_BATCH_N, RunConfig
from llc.errors import ConfigError
from llc.imports import import_path
from llc.model.streaming import Source
from llc.modules.model import LOSSES, LossFn, ModuleModel
from llc.problems.stream import SOURCES, as_source, check, check_finite, is_streamed

# An (x, y) pair of tensors or a TensorDataset (held in memory), or data read a batch at a time
# (problems/stream.py): a DataLoader, a map-style or iterable Dataset, a HuggingFace dataset.
Data = Any


def object_fingerprint(
    module: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss: str | LossFn,
    output: int | str | None = None,
    data_digest: str | None = None,
) -> str:
    """Hash of a module given as an object (its class's source file, architecture and weights), the
    data, the loss and the output element read: what llc.estimate adds to the ids. For streamed data,
    `data_digest` (problems/stream.py's `fingerprint`) stands for the data, and x, y are not hashed."""
    digest = hashlib.sha256()
    if output is not None:
        digest.update(f"output:{output!r}".encode())
    source = inspect.getsourcefile(type(module))
    if source is not None:
        digest.update(Path(source).read_bytes())
    digest.update(repr(module).encode())
    data = [("x", x), ("y", y)] if data_digest is None else []
    if data_digest is not None:
        digest.update(f"streamed:{data_digest}".encode())
    for name, tensor in [*module.state_dict().items(), *data]:
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
    """(x, y) with the points along the first dimension, from a pair of tensors or a TensorDataset, or
    a DataLoader over one (data that `is_streamed` is read a batch at a time instead)."""
    if isinstance(data, torch.utils.data.DataLoader):
        data = data.dataset
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
    elif isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        x, y = data.tensors
    else:
        raise ConfigError(
            f"data must be an (x, y) pair of tensors, a Dataset or DataLoader of (x, y) pairs or a "
            f"HuggingFace dataset, got {type(data).__name__}"
        )
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ConfigError(
            f"data: x and y need the same number (>= 2) of points, got {x.shape[0]} and {y.shape[0]}"
        )
    return x, y


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
    data: Data | Source | None = None,
    loss: str | LossFn | None = None,
) -> tuple[ModuleModel, torch.Tensor, torch.Tensor, Source | None]:
    """The model, x, y and source of a module problem, from the objects given or the config's factories,
    in the config's dtype and on the CPU (floating-point data only; labels and token ids keep theirs).
    Streamed data (`is_streamed`, or a Source already made) is checked a chunk at a time and comes back
    as the source, with x and y its first points only."""
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
    module = module.to(dtype=dtype, device="cpu")
    loss_fn = loss_function(loss if loss is not None else config.loss)
    source: Source | None = None
    if isinstance(data, SOURCES):  # made and checked by llc.estimate (its `fingerprint`)
        source = data
        x, y = (t[:2] for t in next(iter(source.chunks())))
        _check_streamed(config, source.n)
    elif is_streamed(data):
        source = as_source(data, dtype)
        x, y = check(source)
        _check_streamed(config, source.n)
    else:
        x, y = as_tensors(data)
        x, y = (t.detach().to(dtype) if t.is_floating_point() else t.detach() for t in (x, y))
        check_finite(x, y)
    compute = getattr(torch, config.compute_dtype) if config.compute_dtype else None
    model = ModuleModel(module, loss_fn, x.dim() - 1, config.gpu_mode != "sequential", compute=compute)
    if source is None:
        model.check_on_data(x, y)
    else:
        model.check_on_chunks(source.chunks())
    return model, x, y, source


def minibatch_size(config: RunConfig, n: int, streamed: bool) -> int | None:
    """The minibatch sgld and sghmc step on (None: all n points; hmc and mclmc always are). Your own
    model's default on at most FULL_BATCH_N points held in memory is the whole data set: there a
    256-point minibatch's gradient noise heated devinterp's reduced-rank cases 5-15% high (against the
    same runs on all 1,000 points), for a step that costs at most 4 times as much. A batch_size you give,
    or a DataLoader's, is kept."""
    if not config.sampling.spec.minibatch:
        return None
    if config.full_batch_default and not streamed and n <= FULL_BATCH_N:
        return None
    return config.batch_size


def _check_streamed(config: RunConfig, n: int) -> None:
    """What a run on streamed data cannot do: hold a minibatch of all n points, or be compiled."""
    if config.sampling.spec.minibatch and config.batch_size >= n:
        raise ConfigError(
            f"batch_size={config.batch_size} reads all {n} points of streamed data at every step; set a "
            "batch_size below n, or pass the data as tensors"
        )
    if config.compile is True:
        raise ConfigError("compile=true cannot compile a step that reads streamed data; set compile=auto")


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

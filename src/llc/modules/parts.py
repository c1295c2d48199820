"""The parts of a model whose LLC `restrict=` asks for: each an element mask over the flat parameters [d].

A restriction is a glob over `named_parameters()` names (fnmatch), a callable (name, param) -> bool or
a boolean tensor shaped as the parameter, or a mapping {part name: glob | callable | {parameter name:
boolean tensor}} (what `llc.heads` gives). One glob or callable is one part; a mapping, one per entry.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from llc.errors import ConfigError

PartSpec = str | Callable[[str, torch.Tensor], Any] | Mapping[str, torch.Tensor]
Restriction = str | Callable[[str, torch.Tensor], Any] | Mapping[str, PartSpec]


@dataclass(frozen=True)
class Part:
    """One part: its name, its element mask over the flat parameters [d], and what it was asked as."""

    name: str
    mask: torch.Tensor  # [d] bool
    description: str

    @property
    def n_params(self) -> int:
        return int(self.mask.sum())


def resolve(module: torch.nn.Module, restrict: Restriction) -> tuple[list[Part], bool]:
    """The parts `restrict` names in `module`, and whether it named a single one (a glob or a callable,
    not a mapping). Every mistake is one ConfigError naming it."""
    params = dict(module.named_parameters())
    if isinstance(restrict, Mapping):
        if not restrict:
            raise ConfigError("restrict: the mapping is empty; give {part name: glob}, or one glob")
        return [_part(str(name), spec, params) for name, spec in restrict.items()], False
    name = restrict if isinstance(restrict, str) else getattr(restrict, "__name__", "part")
    return [_part(name, restrict, params)], True


def _part(name: str, spec: PartSpec, params: dict[str, torch.Tensor]) -> Part:
    if isinstance(spec, str):
        return Part(name, _glob_mask(spec, params), spec)
    if isinstance(spec, Mapping):
        return Part(name, _element_mask(name, spec, params), _describe(spec))
    if callable(spec):
        return Part(name, _callable_mask(name, spec, params), getattr(spec, "__name__", "callable"))
    raise ConfigError(
        f"restrict {name!r}: {type(spec).__name__} is no restriction; give a glob over parameter names, "
        "a callable (name, param) -> bool or mask, or a mapping {parameter name: boolean mask}"
    )


def _glob_mask(glob: str, params: dict[str, torch.Tensor]) -> torch.Tensor:
    chosen = [fnmatch.fnmatchcase(name, glob) for name in params]
    if not any(chosen):
        raise ConfigError(f"restrict {glob!r} matches no parameter; {_close(glob, params)}")
    return torch.cat([torch.full((p.numel(),), hit) for hit, p in zip(chosen, params.values(), strict=True)])


def _callable_mask(
    name: str, fn: Callable[[str, torch.Tensor], Any], params: dict[str, torch.Tensor]
) -> torch.Tensor:
    pieces = []
    for pname, p in params.items():
        chosen = fn(pname, p)
        if isinstance(chosen, torch.Tensor) and chosen.dim() > 0:
            pieces.append(_checked(name, pname, chosen, p))
        else:
            pieces.append(torch.full((p.numel(),), bool(chosen)))
    mask = torch.cat(pieces)
    if not mask.any():
        raise ConfigError(f"restrict {name!r}: the callable chose no parameter element")
    return mask


def _element_mask(
    name: str, spec: Mapping[str, torch.Tensor], params: dict[str, torch.Tensor]
) -> torch.Tensor:
    unknown = [pname for pname in spec if pname not in params]
    if unknown:
        raise ConfigError(f"restrict {name!r}: no parameter {unknown[0]!r}; {_close(unknown[0], params)}")
    mask = torch.cat(
        [
            _checked(name, pname, spec[pname], p)
            if pname in spec
            else torch.zeros(p.numel(), dtype=torch.bool)
            for pname, p in params.items()
        ]
    )
    if not mask.any():
        raise ConfigError(f"restrict {name!r}: its masks choose no parameter element")
    return mask


def _checked(name: str, pname: str, mask: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    if tuple(mask.shape) != tuple(param.shape):
        raise ConfigError(
            f"restrict {name!r}: the mask for {pname} has shape {tuple(mask.shape)}, the parameter "
            f"{tuple(param.shape)}; give a boolean mask of the parameter's shape"
        )
    return mask.detach().to(device="cpu", dtype=torch.bool).reshape(-1)


def _close(asked: str, params: dict[str, torch.Tensor]) -> str:
    names = list(params)
    close = difflib.get_close_matches(asked, names, n=5, cutoff=0.3) or names[:5]
    return f"parameters such as: {', '.join(close)}"


def _describe(spec: Mapping[str, torch.Tensor]) -> str:
    return ", ".join(f"{pname}[{int(m.sum())} of {m.numel()}]" for pname, m in spec.items())

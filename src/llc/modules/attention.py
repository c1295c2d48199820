"""nn.MultiheadAttention evaluated for all chains at once.

In eval mode PyTorch computes nn.MultiheadAttention with a fused kernel (`_native_multi_head_attention`)
that has no derivative, and on the CPU its attention with a flash kernel that torch.func.vmap runs one
chain at a time. With its fast path off and scaled-dot-product attention on its plain ("math")
decomposition, the same module computes the same function from matrix products and a softmax, which
vmap batches over chains and autograd differentiates. Both switches are global in PyTorch, so they are
turned on for as long as any evaluation of a model with such attention runs (counted across threads),
and put back as they were after the last.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

_lock = threading.Lock()
_users = 0
_restore: ExitStack | None = None


def has_attention(module: nn.Module) -> bool:
    """Whether `module` holds an nn.MultiheadAttention."""
    return any(isinstance(m, nn.MultiheadAttention) for m in module.modules())


@contextmanager
def batchable_attention() -> Iterator[None]:
    """nn.MultiheadAttention's fast path off and attention on its math decomposition, meanwhile."""
    global _users, _restore
    with _lock:
        if _users == 0:
            stack = ExitStack()
            was = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
            stack.callback(torch.backends.mha.set_fastpath_enabled, was)
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
            _restore = stack
        _users += 1
    try:
        yield
    finally:
        with _lock:
            _users -= 1
            if _users == 0 and _restore is not None:
                _restore.close()
                _restore = None

"""Keep freed memory inside the process so that per-step tensors do not page-fault.

PyTorch's CPU allocator hands every multi-megabyte tensor back to glibc, which by default returns
it to the OS with munmap/trim; the next step then page-faults its way through fresh pages. For
the sampler's hot loop that doubles the cost of every elementwise op. Raising glibc's mmap and
trim thresholds keeps those pages mapped. Elsewhere than glibc this is a no-op.
"""

from __future__ import annotations

import ctypes
import functools

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3


@functools.cache
def keep_freed_memory() -> bool:
    """Tune glibc malloc once per process; returns whether it applied."""
    # The process's own symbols, libc's among them: ctypes.util.find_library("c") would run
    # `ldconfig -p` in a forked child, which a SLURM node polling RSS counts as a second copy of us.
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 1 << 30) and mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    return bool(ok and mallopt(_M_TOP_PAD, 64 << 20))

"""Keep freed memory inside the process so that per-step tensors do not page-fault.

PyTorch's CPU allocator hands every multi-megabyte tensor back to glibc, which by default returns
it to the OS with munmap/trim; the next step then page-faults its way through fresh pages. For
the sampler's hot loop that doubles the cost of every elementwise op. Raising glibc's mmap and
trim thresholds keeps those pages mapped. Elsewhere than glibc this is a no-op.

Neither this nor anything later in a run forks the (by then large) process: a SLURM node that polls
RSS per process counts a forked child as a second copy of the job and kills it at its memory limit.
"""

from __future__ import annotations

import ctypes
import functools
import platform

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


def ask_platform_now() -> None:
    """Ask Python for the processor's name once, while the process is small: the answer is cached, and
    the import of the netCDF backend that writes a run's trace asks for it (platform.uname()), which
    runs `uname -p` in a forked child of a process that has grown to hundreds of MB by then."""
    platform.processor()

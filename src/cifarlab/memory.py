"""Keep freed memory in the process instead of returning it to the kernel after every step.

glibc serves blocks above a threshold (at most 32 MiB) with a fresh `mmap` and gives them back
with `munmap` when freed. A training step allocates and frees the same large activation and
gradient tensors every time, so each step faulted in their pages anew: on fast-top (batch
1,000) one process spent about a tenth of its CPU time in the kernel, mostly on page faults
(benchmarks/results/memory.json).
`keep_freed_memory` asks glibc (`mallopt`) to serve every block from its heap and not to trim
it, so the pages are reused from step to step. It applies to the whole process, from then on;
`fit` calls it. Set `CIFARLAB_MALLOC=system` to leave the C library's defaults alone (to
measure the difference, say). Other C libraries (musl, macOS, Windows): nothing is done.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
_applied: bool | None = None


def keep_freed_memory() -> bool:
    """True if glibc now keeps freed memory (once per process; later calls return the first
    answer)."""
    global _applied
    if _applied is None:
        _applied = False
        if sys.platform.startswith("linux") and os.environ.get("CIFARLAB_MALLOC") != "system":
            try:
                libc = ctypes.CDLL("libc.so.6")
                _applied = bool(libc.mallopt(_M_MMAP_MAX, 0)
                                and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
            except (OSError, AttributeError):  # not glibc
                pass
    return _applied

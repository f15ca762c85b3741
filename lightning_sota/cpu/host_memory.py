"""Freed host memory kept for reuse, so a CPU step does not fault its buffers in anew every step.

glibc serves a large allocation (above M_MMAP_THRESHOLD, which adapts up to 32 MiB) with a fresh
mmap and unmaps it when freed, and gives the heap's free top back to the kernel above
M_TRIM_THRESHOLD. A training step allocates and frees the same activation and gradient buffers
every step, so on a CPU the kernel maps and zeroes them again each time (tests/
test_host_memory.py counts the page faults). Intel's PyTorch tuning guide gets the same by
preloading jemalloc or tcmalloc; ``mallopt`` needs no install and works from inside the process.
The cost: the process keeps its peak heap between steps. Only for runs on the CPU: a GPU job's
host process does not allocate step buffers on the host.
"""

from __future__ import annotations

import ctypes
import platform

# glibc's <malloc.h>
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# mallopt takes an int: 1 GiB puts every buffer of these models' steps on the heap (the largest,
# xresnet50 at 224 px in fp32, is well under it), and the heap's free top goes back only above 2 GiB.
MMAP_THRESHOLD, TRIM_THRESHOLD = 1 << 30, (1 << 31) - 1


def reuse_freed_host_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where the C library is
    not glibc (macOS, musl), which is left as it is."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL("libc.so.6")
    mapped = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    return bool(mapped and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))

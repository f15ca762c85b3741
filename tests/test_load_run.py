"""``load_run`` from a user's Python changes nothing in the caller's process: the CPU tuning's
allocator settings (lightning_sota/cpu/host_memory.py) are the command line's, not a library's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .test_old_checkpoint import OLD

# After ``setup``, allocates and frees 256 MiB and prints how many MiB of it the process still
# holds: glibc's defaults serve it with mmap and unmap it at free (~0); with the CPU tuning's
# thresholds it stays on the heap (~256).
PROBE = """
import resource
import numpy as np
{setup}
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize() >> 20
before = rss()
block = np.ones(256 << 20, np.uint8)
del block
print(rss() - before)
"""


def held_mib(setup: str) -> int:
    code = PROBE.format(setup=setup)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return int(out.split()[-1])


@pytest.mark.slow
def test_load_run_leaves_the_callers_allocator_alone():
    untouched = held_mib("")
    tuned = held_mib("from lightning_sota.cpu.host_memory import reuse_freed_host_memory as r\nassert r()")
    loaded = held_mib(f"from lightning_sota import load_run\nload_run({str(OLD)!r}, accelerator='cpu')")
    assert tuned - untouched > 200  # the probe sees the tuning
    assert loaded - untouched < 50

"""One builder at a time: an exclusive lock on a file beside what is being built (a download, a
cache), so ranks started together (torchrun, SLURM) and runs sharing a folder build it once while
the others wait and then use it; and one holder per slot (a sweep's GPUs: run/gpu_slots.py).
``flock``: local filesystems, and NFS (the kernel turns it into an NFS byte-range lock, seen by
every node); Lustre needs its ``flock`` mount option."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


@contextlib.contextmanager
def exclusive(path: Path, what: str) -> Iterator[None]:
    """Hold the lock on ``path`` (created if missing) for the block; says so while it waits."""
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for another process building %s (lock %s)", what, path)
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def first_free(paths: list[Path], what: str) -> Iterator[int]:
    """Hold the lock of the first of ``paths`` no other process holds, for the block: its index.
    All held: says so once, then tries again until one is let go."""
    waited = False
    while True:
        for index, path in enumerate(paths):
            with open(path, "a") as handle:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue
                try:
                    yield index
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                return
        if not waited:
            log.info("every %s is held (%s...): waiting for one", what, paths[0])
            waited = True
        time.sleep(0.5)


def usable_cpus() -> int:
    """The CPUs this process may run on (SLURM's and cgroups' allocation), not the node's count."""
    return len(os.sched_getaffinity(0))

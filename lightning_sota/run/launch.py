"""One run folder for every rank of a job that torchrun or srun started.

Hydra names a run's folder after the second each process composes its config, and under
torchrun or srun every rank composes its own: ranks started a second apart would write into
different folders. Rank 0 publishes its time under the job's id (a file beside the runs); the
other ranks wait for it and take it. Lightning's own DDP launcher passes rank 0's folder to the
processes it starts, so it needs none of this.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from lightning_sota.files import staged

LAUNCHES = Path("outputs/.launches")  # relative to where the job runs, as the run folders are
WAIT_SECONDS = 60.0  # the ranks of one job start within seconds of each other


def launched_rank() -> tuple[int, str] | None:
    """(rank, job id) of this process in a job of several processes that torchrun or srun
    started; None for a process on its own."""
    env = os.environ
    if "TORCHELASTIC_RUN_ID" in env and int(env.get("WORLD_SIZE", "1")) > 1:
        # torchrun's run id, with the port its agent picked and the restart: one per launch
        restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
        return int(
            env["RANK"]
        ), f"torchrun-{env['TORCHELASTIC_RUN_ID']}-{env.get('MASTER_PORT', '')}-{restart}"
    if int(env.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"]), f"slurm-{env.get('SLURM_JOB_ID')}.{env.get('SLURM_STEP_ID', '0')}"
    return None


@functools.cache
def run_time(pattern: str) -> str:
    """``${ls.run_time:pattern}``: now, formatted; in a torchrun/srun job, rank 0's now."""
    now = datetime.now().strftime(pattern)
    launched = launched_rank()
    if launched is None:
        return now
    rank, job = launched
    published = LAUNCHES / job
    if rank == 0:
        published.parent.mkdir(parents=True, exist_ok=True)
        with staged(published) as stage:
            stage.path.write_text(now)
        return now
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        # a file from an earlier launch with the same id would be older than a wait
        if published.is_file() and time.time() - published.stat().st_mtime < WAIT_SECONDS:
            return published.read_text()
        time.sleep(0.05)
    print(
        f"warning: rank {rank} found no run folder from rank 0 in {published} (is the working folder "
        "shared between the nodes?): its logs go to a folder of its own",
        file=sys.stderr,
    )
    return now


def rank_suffix(name: str) -> str:
    """``${ls.rank_suffix:train}``: ``train``, or ``train_rank<r>`` on the other ranks of a
    torchrun/srun job (each rank's log file of its own in the shared folder)."""
    launched = launched_rank()
    return name if launched is None or launched[0] == 0 else f"{name}_rank{launched[0]}"


def rank_zero(value: str) -> str | None:
    """``${ls.rank_zero:x}``: x, or null on the other ranks of a torchrun/srun job (Hydra then
    saves the composed config only once, from rank 0)."""
    launched = launched_rank()
    return value if launched is None or launched[0] == 0 else None

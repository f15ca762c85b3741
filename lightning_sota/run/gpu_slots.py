"""One GPU per job of a parallel sweep (``-m`` with hydra/launcher=local, joblib's processes): each
running job claims a free GPU's slot, an exclusive lock on a file beside the runs, holds it while it
trains and gives it back when it ends, so job k+n may start on job k's GPU only once job k is done.
joblib reuses its worker processes, so a job is placed by Lightning's device index
(``trainer.devices=[i]``), not by CUDA_VISIBLE_DEVICES, which a process reads once."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from lightning_sota.errors import ConfigError
from lightning_sota.locks import first_free

log = logging.getLogger(__name__)
SLOTS = Path("outputs/.gpu-slots")  # relative to where the jobs run, as the run folders are


def parallel_jobs() -> int | None:
    """hydra.launcher.n_jobs when this job runs under the joblib launcher, else None."""
    if not HydraConfig.initialized():
        return None
    hydra = HydraConfig.get()  # a config set outside Hydra's launch (the tests') may have no launcher
    target = OmegaConf.select(hydra, "launcher._target_", default="")
    return int(hydra.launcher.n_jobs) if "joblib" in str(target).lower() else None


def claimed(gpus: int, folder: Path = SLOTS) -> contextlib.AbstractContextManager[int]:
    """A free GPU slot of ``gpus``, held for the block (locks.first_free); all held, as when
    another sweep shares the machine and the working folder: waits for one."""
    folder.mkdir(parents=True, exist_ok=True)
    return first_free([folder / f"gpu{index}.lock" for index in range(gpus)], "GPU slot")


@contextlib.contextmanager
def gpu_per_job(
    cfg: DictConfig, multirun: bool, gpus: int | None = None, folder: Path = SLOTS
) -> Iterator[int | None]:
    """Under -m with the joblib launcher on a machine with GPUs, a job asking for one device
    (``trainer.devices=1``, the default) trains on a GPU slot of its own: ``cfg.trainer.devices``
    becomes ``[slot]`` for the block. More parallel jobs than GPUs are refused. Anything else
    (a CPU sweep, one job at a time, an explicit device list) is left as it is: None."""
    jobs = parallel_jobs() if multirun else None
    gpus = torch.cuda.device_count() if gpus is None else gpus
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if jobs is None or gpus == 0 or accelerator == "cpu" or cfg.trainer.get("devices") != 1:
        yield None
        return
    if jobs < 1 or jobs > gpus:
        raise ConfigError(
            f"hydra.launcher.n_jobs={jobs}: each parallel job trains on a GPU of its own and this "
            f"machine has {gpus}; set hydra.launcher.n_jobs to at most {gpus}"
        )
    with claimed(gpus, folder) as slot:
        cfg.trainer.devices = [slot]
        log.info("this job trains on GPU %d (slot %s)", slot, folder / f"gpu{slot}.lock")
        yield slot

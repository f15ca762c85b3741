"""run/gpu_slots.py: a parallel sweep's jobs each on a GPU of their own, told by trainer.devices,
never two on one slot; refused with more parallel jobs than GPUs; CPU sweeps left alone."""

from __future__ import annotations

import multiprocessing
import threading
import time

import pytest
from hydra.conf import HydraConf
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from lightning_sota.errors import ConfigError
from lightning_sota.run.gpu_slots import claimed, gpu_per_job

from .conftest import config

JOBLIB = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"


def under_launcher(target: str, n_jobs: int) -> None:
    """What Hydra sets in a job's process: its own config, with the launcher's."""
    hydra = OmegaConf.create({"hydra": OmegaConf.structured(HydraConf)})
    hydra.hydra.launcher = {"_target_": target, "n_jobs": n_jobs}
    HydraConfig.instance().set_config(hydra)


def test_a_job_of_a_parallel_sweep_is_told_its_own_gpu(tmp_path):
    under_launcher(JOBLIB, 2)
    first, second = config(), config()
    with gpu_per_job(first, multirun=True, gpus=2, folder=tmp_path) as a:
        with gpu_per_job(second, multirun=True, gpus=2, folder=tmp_path) as b:
            assert (a, b) == (0, 1) and first.trainer.devices == [0] and second.trainer.devices == [1]
        third = config()
        with gpu_per_job(third, multirun=True, gpus=2, folder=tmp_path) as c:  # job 1's slot, freed
            assert c == 1 and third.trainer.devices == [1]


def test_more_parallel_jobs_than_gpus_is_refused(tmp_path):
    under_launcher(JOBLIB, 3)
    with pytest.raises(
        ConfigError,
        match=r"^hydra.launcher.n_jobs=3: .* this machine has 2; set hydra.launcher.n_jobs to at most 2$",
    ):
        with gpu_per_job(config(), multirun=True, gpus=2, folder=tmp_path):
            pass


@pytest.mark.parametrize(
    "why",
    ["one at a time", "not under -m", "no GPU", "a CPU sweep", "an explicit device list"],
)
def test_everything_else_is_left_as_it_is(tmp_path, why):
    under_launcher(
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher" if why == "one at a time" else JOBLIB, 2
    )
    cfg = config("trainer=cpu") if why == "a CPU sweep" else config()
    if why == "an explicit device list":
        cfg.trainer.devices = [1]
    before = cfg.trainer.devices
    gpus = 0 if why == "no GPU" else 2
    with gpu_per_job(cfg, multirun=why != "not under -m", gpus=gpus, folder=tmp_path) as slot:
        assert slot is None and cfg.trainer.devices == before
    assert not list(tmp_path.iterdir())


def test_a_job_waits_while_every_slot_is_held(tmp_path):
    got = []
    with claimed(1, tmp_path) as held:
        waiter = threading.Thread(target=lambda: got.append(claimed(1, tmp_path).__enter__()))
        waiter.start()
        time.sleep(0.8)
        assert held == 0 and not got  # still waiting
    waiter.join(timeout=10)
    assert got == [0]


def hold(folder, gpus, seconds, record) -> None:
    with claimed(gpus, folder) as slot:
        start = time.monotonic()
        time.sleep(seconds)
        record.put((slot, start, time.monotonic()))


def test_jobs_in_processes_of_their_own_never_share_a_slot(tmp_path):
    """Six jobs, three at a time on two slots, as joblib's processes would run them."""
    ctx = multiprocessing.get_context("fork")
    record = ctx.Queue()
    jobs = [ctx.Process(target=hold, args=(tmp_path, 2, 0.3, record)) for _ in range(6)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(timeout=30)
    spans = [record.get(timeout=5) for _ in jobs]
    for i, (slot, start, end) in enumerate(spans):
        for other, o_start, o_end in spans[i + 1 :]:
            if start < o_end and o_start < end:  # ran at the same time
                assert slot != other, spans
    assert {slot for slot, _, _ in spans} == {0, 1}

"""Every rank of a torchrun/srun job writes into rank 0's run folder (lightning_sota/run/launch.py)."""

from __future__ import annotations

import json
import sys
import threading
import time

import pytest

from lightning_sota.run import launch

from .conftest import ROOT, run_cli

TORCHRUN_ENV = {"TORCHELASTIC_RUN_ID": "job", "MASTER_PORT": "29500", "WORLD_SIZE": "2"}


@pytest.fixture
def job(monkeypatch, tmp_path):
    """A torchrun-like environment in an empty working folder; the resolver's cache emptied."""
    monkeypatch.chdir(tmp_path)
    for key in ("TORCHELASTIC_RUN_ID", "SLURM_NTASKS", "SLURM_PROCID", "RANK", "WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    launch.run_time.cache_clear()
    yield monkeypatch
    launch.run_time.cache_clear()


def test_a_lone_process_names_its_folder_itself(job):
    assert launch.launched_rank() is None
    assert launch.run_time("%Y") == time.strftime("%Y") and launch.rank_suffix("train") == "train"
    assert launch.rank_zero(".hydra") == ".hydra" and not launch.LAUNCHES.exists()


def test_other_ranks_wait_for_rank_zeros_time(job):
    for key, value in {**TORCHRUN_ENV, "RANK": "1"}.items():
        job.setenv(key, value)
    got = {}
    waiter = threading.Thread(target=lambda: got.update(time=launch.run_time("%H-%M-%S.%f")))
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive()  # nothing published yet: rank 1 waits
    published = launch.LAUNCHES / "torchrun-job-29500-0"
    published.parent.mkdir(parents=True)
    published.write_text("rank zero's time")
    waiter.join(timeout=5)
    assert got["time"] == "rank zero's time"
    assert launch.rank_suffix("train") == "train_rank1" and launch.rank_zero(".hydra") is None


def test_srun_ranks_share_the_job_steps_id(job):
    srun = {"SLURM_NTASKS": "4", "SLURM_PROCID": "0", "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "3"}
    for key, value in srun.items():
        job.setenv(key, value)
    assert launch.launched_rank() == (0, "slurm-77.3")
    now = launch.run_time("%Y-%m-%d_%H-%M-%S")
    assert (launch.LAUNCHES / "slurm-77.3").read_text() == now == launch.run_time("%Y-%m-%d_%H-%M-%S")


@pytest.mark.slow
def test_torchrun_ranks_started_seconds_apart_write_one_run_folder(tmp_path, mini):
    """torchrun --standalone, 2 processes (gloo, trainer=ddp_cpu); rank 1 starts 2 s after rank 0,
    so their clocks name different seconds: one run folder, one results.json, both ranks' logs."""
    delayed = 'if [ "$RANK" = 1 ]; then sleep 2; fi; exec "$0" "$@"'
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = run_cli(
        *torchrun,
        "--no-python",
        "bash",
        "-c",
        delayed,
        sys.executable,
        str(ROOT / "train.py"),
        "+experiment=normalize",
        "scale=smoke",
        "trainer=ddp_cpu",
        f"data.root={mini}",
        "trainer.enable_progress_bar=false",
        ok=None,
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    (run,) = (tmp_path / "outputs" / "runs" / "normalize").iterdir()
    assert json.loads((run / "results.json").read_text())["world_size"] == 2
    assert {p.name for p in run.iterdir()} >= {"results.json", "train.log", "train_rank1.log", ".hydra"}
    assert (run / ".hydra" / "config.yaml").is_file()
    # 32 a batch over 2 ranks, BatchNorm per rank: said once, by rank 0
    assert "set trainer.sync_batchnorm=true" in (run / "train.log").read_text()

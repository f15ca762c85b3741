"""Parallel local jobs through Hydra's joblib launcher (the README's Optuna and SLURM commands run
in test_readme.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .conftest import hydra_main


def smoke_multirun(tmp_path: Path, mini: Path, *overrides: str) -> Path:
    """A one-epoch smoke multirun on the mini split, Hydra's -m from this process (the jobs run
    where its launcher puts them); returns its sweep folder."""
    sweep = tmp_path / "sweep"
    cache = tmp_path / "cache"
    code = hydra_main(
        "-m",
        *overrides,
        "scale=smoke",
        "scale.epochs=1",
        f"data.root={mini}",
        f"data.cache_dir={cache}",
        f"hydra.sweep.dir={sweep}",
        "trainer.enable_progress_bar=false",
    )
    assert code == 0
    return sweep


@pytest.mark.slow
def test_local_launcher_runs_jobs_in_parallel_processes(tmp_path, mini):
    sweep = smoke_multirun(tmp_path, mini, "hydra/launcher=local", "+experiment=baseline", "seed=0,1")
    assert "JoblibLauncher" in (sweep / "multirun.yaml").read_text()
    results = [yaml.safe_load((sweep / job / "results.json").read_text()) for job in ("0", "1")]
    assert [r["seed"] for r in results] == [0, 1] and all(r["val_acc"] is not None for r in results)

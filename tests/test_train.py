"""End to end: `python train.py` on the real imagenette-mini, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from .conftest import ROOT

CONTRACT = {
    "experiment",
    "seed",
    "arch",
    "phases",
    "epochs",
    "val_acc",
    "tta_acc",
    "best_val_acc",
    "history",
    "train_seconds",
    "cache_seconds",
    "test_seconds",
    "train_images_per_second",
    "val_images_per_second",
    "precision",
    "device",
    "dataset",
}


def run_train(tmp_path, *overrides: str) -> dict:
    run_dir = tmp_path / "run"
    cmd = [
        sys.executable,
        "train.py",
        f"hydra.run.dir={run_dir}",
        f"data.cache_dir={tmp_path / 'cache'}",
        *overrides,
    ]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((run_dir / "results.json").read_text())


@pytest.mark.slow
def test_fp32_timm_model_without_channels_last(tmp_path, mini):
    res = run_train(
        tmp_path,
        "+experiment=normalize",
        "scale=smoke",
        f"data.root={mini}",
        "model.arch=resnet10t",
        "model.channels_last=false",
        "trainer.precision=32",
        "scale.epochs=1",
        "augment=flip",
    )
    assert res["arch"] == "resnet10t" and res["precision"] == "32-true" and res["epochs"] == 1
    assert res["normalize"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert res["cache_seconds"] > 0 and res["val_acc"] is not None

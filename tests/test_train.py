"""End to end: `python train.py` on the real imagenette-mini, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

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
def test_smoke_baseline_learns_and_writes_the_contract(tmp_path, mini):
    res = run_train(tmp_path, "+experiment=baseline", "scale=smoke", f"data.root={mini}")
    assert CONTRACT <= set(res)
    assert res["experiment"] == "baseline" and res["arch"] == "xresnet18" and res["epochs"] == 2
    assert res["phases"] == [{"size": 32, "batch_size": 32, "epochs": 2}]
    assert res["dataset"]["train"] == 500 and res["dataset"]["val"] == 200
    assert res["dataset"]["skipped"] == [] and res["device"] == "cpu"
    assert res["precision"] == "bf16-mixed" and res["tta_acc"] is None
    hist = res["history"]
    assert [h["epoch"] for h in hist] == [0, 1] and all(h["size"] == 32 for h in hist)
    # Every epoch trained 15 full batches of 32 (drop_last) and scored each val image once.
    assert all((h["train_images"], h["val_images"]) == (15 * 32, 200) for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]  # it learns
    assert res["val_acc"] == hist[-1]["val_acc"] > 0.1 and res["best_val_acc"] >= res["val_acc"]
    assert res["train_seconds"] > 0 and res["cache_seconds"] > 0 and res["train_images_per_second"] > 0

    run = tmp_path / "run"
    assert (run / ".hydra" / "config.yaml").exists()
    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert {"epoch", "train_loss", "val_loss", "val_acc"} <= set(header.split(","))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # The schedule was sized for exactly the steps taken: 500 // 32 = 15 per epoch.
    assert ckpt["global_step"] == 30
    sched = ckpt["lr_schedulers"][0]
    assert sched["last_epoch"] == 30 and sum(c["steps"] for c in sched["cycles"]) == 30


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

"""End to end: `python train.py` on the real imagenette-mini, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from lightning_sota.results import summarize

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
    "world_size",
    "dataset",
}


SMALL = ["+experiment=normalize", "scale=smoke", "model.arch=resnet10t", "scale.epochs=1"]


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
        *SMALL,
        f"data.root={mini}",
        "model.channels_last=false",
        "trainer.precision=32",
        "augment=flip",
    )
    assert res["arch"] == "resnet10t" and res["precision"] == "32-true" and res["epochs"] == 1
    assert res["normalize"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert res["cache_seconds"] > 0 and res["val_acc"] is not None


def test_compiled_model_trains_and_its_checkpoint_reads_back_eagerly(tmp_path, mini):
    """model.compile=true: the model really runs compiled (dynamo's graph count in results.json),
    and the checkpoint has the plain module's keys, so evaluate restores it eagerly."""
    res = run_train(
        tmp_path,
        *SMALL,
        f"data.root={mini}",
        "model.compile=true",
        "data.val_batch_size=50",  # 200 val images in equal batches: no extra graph for a last one
    )
    assert res["compile"]["mode"] is True and res["compile"]["graphs"] >= 2  # a train and a val graph
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "lightning_sota.evaluate",
            str(tmp_path / "run"),
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = yaml.safe_load(proc.stdout)
    # Eager and compiled kernels round differently: a borderline image may flip, no more.
    assert abs(evaluated["accuracy"] - res["val_acc"]) <= 1 / res["dataset"]["val"] + 1e-9


def test_results_keep_the_training_seed_beside_the_holdouts():
    row = {"epoch": 0, "val_acc": 0.5, "holdout_acc": 0.4, "val_images": 20}
    res = summarize(
        name="sota", seed=3, arch="xresnet18", phases=[{"size": 32, "batch_size": 8, "epochs": 1}],
        history=[row], train_seconds=2.0, cache_seconds=1.0, test_seconds=None, tta_acc=None,
        train_images=40, val_seconds=1.0, precision="32-true", device="cpu", world_size=2,
        dataset={"val": 20, "holdout": 5, "holdout_seed": 0}, normalize=None,
    )  # fmt: skip
    assert res["seed"] == 3 and res["world_size"] == 2 and "seed 0" in res["splits"]["holdout_acc"]
    assert res["selected_on"] == "holdout_acc" and res["holdout_acc"] == 0.4
    assert res["train_images_per_second"] == 40.0 and res["val_images_per_second"] == 25.0


@pytest.mark.slow
def test_on_device_batches_train_the_same_run(trained_run, tmp_path, mini):
    """data.on_device=true (the caches in RAM on the CPU, the code path a GPU's memory takes)
    trains, validates and scores TTA exactly as the host loader's run."""
    res = run_train(tmp_path, "+experiment=sota", "scale=smoke", f"data.root={mini}", "data.on_device=true")
    plain = json.loads((trained_run / "results.json").read_text())
    assert res["dataset"]["on_device"] is True and plain["dataset"]["on_device"] is False
    assert [h["train_loss"] for h in res["history"]] == [h["train_loss"] for h in plain["history"]]
    assert (res["val_acc"], res["tta_acc"]) == (plain["val_acc"], plain["tta_acc"])

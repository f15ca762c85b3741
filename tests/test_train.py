"""End to end: `python train.py` on the real imagenette-mini, as a user runs it."""

from __future__ import annotations

import pytest
import yaml

from .conftest import results, run_cli, run_train

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
    "cpu_tuning",
    "dataset",
}


SMALL = ["+experiment=normalize", "scale=smoke", "model.arch=resnet10t", "scale.epochs=1"]


def train(tmp_path, *overrides: str) -> dict:
    run_train(*overrides, tmp=tmp_path)
    return results(tmp_path / "run")


@pytest.mark.slow
def test_fp32_timm_model_without_channels_last(tmp_path, mini):
    res = train(
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
    res = train(
        tmp_path,
        *SMALL,
        f"data.root={mini}",
        "model.compile=true",
        "data.val_batch_size=50",  # 200 val images in equal batches: no extra graph for a last one
    )
    assert res["compile"]["mode"] is True and res["compile"]["graphs"] >= 2  # a train and a val graph
    proc = run_cli(
        "python",
        "-m",
        "lightning_sota.serve.evaluate",
        tmp_path / "run",
        f"data.cache_dir={tmp_path / 'cache'}",
    )
    evaluated = yaml.safe_load(proc.stdout)
    # Eager and compiled kernels round differently: a borderline image may flip, no more.
    assert abs(evaluated["accuracy"] - res["val_acc"]) <= 1 / res["dataset"]["val"] + 1e-9


@pytest.mark.slow
def test_on_device_batches_train_the_same_run(trained_run, tmp_path, mini):
    """data.on_device=true (the caches in RAM on the CPU, the code path a GPU's memory takes)
    trains, validates and scores TTA exactly as the host loader's run."""
    res = train(tmp_path, "+experiment=sota", "scale=smoke", f"data.root={mini}", "data.on_device=true")
    plain = results(trained_run)
    assert res["dataset"]["on_device"] is True and plain["dataset"]["on_device"] is False
    assert [h["train_loss"] for h in res["history"]] == [h["train_loss"] for h in plain["history"]]
    assert (res["val_acc"], res["tta_acc"]) == (plain["val_acc"], plain["tta_acc"])

"""The chapter-7 experiments and the leaderboard's at scale=smoke on the mini set, one after the
other in this process with one cache, as a multirun's jobs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from .conftest import MINI, TRAIN_IMAGES, VAL_IMAGES, hydra_main, restored, results, train_here
from .test_train import CONTRACT

BATCHES = TRAIN_IMAGES // 32  # a smoke epoch's, at batch size 32 (drop_last)

EXPERIMENTS = [
    "baseline",
    "normalize",
    "progressive_resize",
    "tta",
    "mixup",
    "label_smoothing",
    "sota",
    "leaderboard",
]


def cpu_precision() -> str:
    """The default precision this CPU should get, read from the kernel's CPU flags: bf16 autocast
    only where the hardware computes bf16 (AVX-512 BF16 or AMX)."""
    flags = set(Path("/proc/cpuinfo").read_text().split())
    return "bf16-mixed" if flags & {"avx512_bf16", "amx_bf16"} else "32-true"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """Every experiment, each in its folder, one cache for all (as Hydra's basic launcher runs
    `-m +experiment=...` in one process)."""
    tmp = tmp_path_factory.mktemp("experiments")
    for experiment in EXPERIMENTS:
        with restored():
            train_here(
                f"+experiment={experiment}",
                "scale=smoke",
                f"data.root={MINI}",
                tmp=tmp,
                run_dir=tmp / "sweep" / experiment,
                multirun=True,
            )
    return tmp / "sweep"


def test_the_leaderboard_experiment_at_its_scale_follows_its_rules(capsys):
    """scale=leaderboard: 5 epochs, all at 128 px, no TTA, random init; the row's network and
    recipe (radekosmulski/imagenette-LB-entry's notebook: conf/experiment/leaderboard.yaml)."""
    assert hydra_main("+experiment=leaderboard", "scale=leaderboard", "--cfg", "job", "--resolve") == 0
    cfg = yaml.safe_load(capsys.readouterr().out)
    assert cfg["resize"]["phases"] == [{"size": 128, "batch_size": 32, "epochs": 5}]
    assert not cfg["tta"] and not cfg["mix"] and cfg["model"]["pretrained"] is False
    model = cfg["model"]
    assert (model["arch"], model["act"], model["sa"], model["pool"], model["blur_pool"], model["widen"]) == (
        "xse_resnext50",
        "mish",
        True,
        "max_blur",
        False,
        1.0,
    )
    assert cfg["optim"]["_target_"] == "lightning_sota.training.optim.ranger" and cfg["optim"]["lr"] == 8e-3
    assert cfg["optim"]["betas"] == [0.95, 0.99] and cfg["optim"]["eps"] == 1e-6
    assert cfg["optim"]["weight_decay"] == 1e-4 and cfg["schedule"]["pct_start"] == 0.75
    assert cfg["loss"]["label_smoothing"] == 0.1 and cfg["normalize"]["mean"] is None
    assert not cfg["normalize"].get("from_batch")
    assert (cfg["data"]["presize"], cfg["data"]["variant"]) == (128, "320px")  # Resize(128) of the 320 px set
    augment = cfg["augment"]
    assert (augment["min_scale"], augment["max_rotate"], augment["max_lighting"], augment["p_flip"]) == (
        1.0,
        0.0,
        0.0,
        0.5,
    )
    assert (augment["max_warp"], augment["max_zoom"], augment["valid_scale"], augment["crop"]) == (
        0.0,
        1.0,
        1.0,
        "square",
    )


@pytest.mark.slow
def test_baseline_learns_and_writes_the_contract(sweep):
    run = sweep / "baseline"
    res = json.loads((run / "results.json").read_text())
    assert res["experiment"] == "baseline" and res["arch"] == "xresnet18" and res["epochs"] == 2
    assert res["phases"] == [{"size": 32, "batch_size": 32, "epochs": 2}]
    assert res["dataset"]["train"] == TRAIN_IMAGES and res["dataset"]["val"] == VAL_IMAGES
    assert res["dataset"]["skipped"] == [] and res["device"] == "cpu"
    assert res["precision"] == cpu_precision() and res["tta_acc"] is None
    assert res["cpu_tuning"] == {"small_map_gemm": True, "reuse_host_memory": True}  # cpu: auto
    hist = res["history"]
    assert [h["epoch"] for h in hist] == [0, 1] and all(h["size"] == 32 for h in hist)
    # Every epoch trained its full batches of 32 (drop_last) and scored each val image once.
    assert all((h["train_images"], h["val_images"]) == (BATCHES * 32, VAL_IMAGES) for h in hist)
    assert hist[-1]["train_loss"] < hist[0]["train_loss"]  # it learns
    assert res["val_acc"] == hist[-1]["val_acc"] > 0.1 and res["best_val_acc"] >= res["val_acc"]
    # The first job of the sweep built the cache; the others reused it.
    assert res["train_seconds"] > 0 and res["cache_seconds"] > 0 and res["train_images_per_second"] > 0
    assert res["val_images_per_second"] > 0
    assert json.loads((sweep / "normalize" / "results.json").read_text())["cache_seconds"] == 0

    header = (run / "metrics.csv").read_text().splitlines()[0]
    assert {"epoch", "train_loss", "val_loss", "val_acc"} <= set(header.split(","))
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    # The schedule was sized for exactly the steps taken: BATCHES per epoch.
    assert ckpt["global_step"] == 2 * BATCHES
    sched = ckpt["lr_schedulers"][0]
    assert sched["last_epoch"] == 2 * BATCHES and sum(c["steps"] for c in sched["cycles"]) == 2 * BATCHES


@pytest.mark.slow
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_at_smoke_scale(experiment, sweep):
    res = json.loads((sweep / experiment / "results.json").read_text())
    assert CONTRACT <= set(res) and res["experiment"] == experiment
    assert None not in (res["val_acc"], res["best_val_acc"]) and len(res["history"]) == res["epochs"]
    # The sizes and batch sizes the training batches had, epoch by epoch, are the phases'.
    planned = [(p["size"], p["batch_size"]) for p in res["phases"] for _ in range(p["epochs"])]
    assert [(h["size"], h["batch_size"]) for h in res["history"]] == planned
    ckpt = torch.load(
        sweep / experiment / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False
    )
    steps = sum(TRAIN_IMAGES // p["batch_size"] * p["epochs"] for p in res["phases"])
    sched = ckpt["lr_schedulers"][0]
    assert ckpt["global_step"] == steps == sched["last_epoch"] == sum(c["steps"] for c in sched["cycles"])

    if experiment in ("progressive_resize", "tta"):
        assert res["phases"] == [
            {"size": 24, "batch_size": 64, "epochs": 1},
            {"size": 32, "batch_size": 32, "epochs": 2},
        ]
        assert [c["steps"] for c in sched["cycles"]] == [TRAIN_IMAGES // 64, BATCHES, BATCHES]  # fine_tune
    if experiment in ("tta", "sota"):
        # The test pass scored the final weights on the whole split: its centre pass is exactly
        # the last validation, and TTA's accuracy is a count of the val images.
        (row,) = [r for r in csv.DictReader((sweep / experiment / "metrics.csv").open()) if r["tta_acc"]]
        assert float(row["test_acc"]) == pytest.approx(res["val_acc"], abs=1e-5)
        assert float(row["tta_acc"]) == pytest.approx(res["tta_acc"], abs=1e-5)
        assert res["tta_acc"] * VAL_IMAGES == pytest.approx(round(res["tta_acc"] * VAL_IMAGES), abs=1e-3)
        assert res["test_seconds"] > 0
    else:
        assert res["tta_acc"] is None and res["test_seconds"] is None
    if experiment == "leaderboard":  # the leaderboard's rules: the scale's epochs, all at its size
        assert (
            res["phases"] == [{"size": 32, "batch_size": 32, "epochs": 2}] and res["arch"] == "xse_resnext50"
        )
        assert not res["pretrained"] and res["holdout_acc"] is None
    if experiment in ("baseline", "leaderboard"):
        assert res["normalize"] is None
    else:
        assert res["normalize"]["std"] == pytest.approx([0.229, 0.224, 0.225])


@pytest.mark.slow
def test_batch_normalization_stats_and_cutmix(tmp_path, mini):
    train_here(
        "+experiment=label_smoothing",
        "scale=smoke",
        f"data.root={mini}",
        "normalize=batch",
        "mix=cutmix",
        "scale.epochs=1",
        tmp=tmp_path,
    )
    res = results(tmp_path / "run")
    stats = res["normalize"]
    assert 0.2 < min(stats["mean"]) and max(stats["mean"]) < 0.8 and min(stats["std"]) > 0.1
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["state_dict"]["normalize.mean"].flatten().tolist() == pytest.approx(stats["mean"], abs=1e-5)

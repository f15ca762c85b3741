"""End to end on the mini set: `python train.py` once as a user runs it, then train.py's job in
this process for what its options change."""

from __future__ import annotations

import shlex
import subprocess

import pytest
import torch
import yaml

from lightning_sota.run.results import is_complete
from lightning_sota.serve.evaluate import evaluate

from .conftest import MINI, ROOT, VAL_IMAGES, results, run_cli, train_here

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
    "cuda_graphs",
    "dataset",
}


SMALL = ["+experiment=normalize", "scale=smoke", "model.arch=resnet10t", "scale.epochs=1"]


def train(tmp_path, *overrides: str) -> dict:
    train_here(*overrides, tmp=tmp_path)
    return results(tmp_path / "run")


@pytest.mark.slow
def test_a_user_run_of_train_py(tmp_path):
    """The command itself, in a process of its own: Hydra names the run folder
    outputs/runs/<experiment>/<time> under the working folder and keeps the composed config and
    the command's overrides in .hydra/, the log goes to train.log, and the job writes its results
    and checkpoint there."""
    overrides = ["+experiment=baseline", "scale=smoke", "scale.epochs=1", f"data.root={MINI}"]
    run_cli("python", ROOT / "train.py", *overrides, "trainer.enable_progress_bar=false", cwd=tmp_path)
    (run,) = (tmp_path / "outputs" / "runs" / "baseline").iterdir()
    assert is_complete(run / "results.json")
    res = results(run)
    assert CONTRACT <= set(res) and res["experiment"] == "baseline" and res["epochs"] == 1
    typed = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
    assert typed == [*overrides, "trainer.enable_progress_bar=false"]
    assert yaml.safe_load((run / ".hydra" / "config.yaml").read_text())["scale"]["name"] == "smoke"
    log = (run / "train.log").read_text()
    assert "config:\n" in log and f"val_acc {res['val_acc']:.4f} in " in log
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / "metrics.csv").is_file()
    assert (tmp_path / "outputs" / "cache").is_dir()  # data.cache_dir's default, beside the runs
    # what made it: the command as typed, the job's overrides, and the checkout's commit
    made = res["provenance"]
    assert shlex.split(made["command"]) == [str(ROOT / "train.py"), *typed] and made["overrides"] == typed
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
        assert made["git"]["commit"] == head.stdout.strip()
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert checkpoint["lightning_sota"]["provenance"] == made


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
    assert res["cuda_graphs"]["why"] == "the run is on cpu: CUDA graphs need a GPU"  # graphs=auto


@pytest.mark.slow
def test_compiled_model_trains_and_its_checkpoint_reads_back_eagerly(tmp_path, mini):
    """model.compile=true: the model really runs compiled (dynamo's graph count in results.json),
    and the checkpoint has the plain module's keys, so evaluate restores it eagerly."""
    torch._dynamo.reset()  # the count is this process's: from this run only
    res = train(
        tmp_path,
        *SMALL,
        f"data.root={mini}",
        "model.compile=true",
        f"data.val_batch_size={VAL_IMAGES // 2}",  # equal val batches: no extra graph for a last one
    )
    assert res["compile"]["mode"] is True and res["compile"]["graphs"] >= 2  # a train and a val graph
    evaluated = evaluate(str(tmp_path / "run"), [f"data.cache_dir={tmp_path / 'cache'}"])
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

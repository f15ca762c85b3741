"""conf/checkpoint: the best epochs kept beside last.ckpt, chosen on the holdout, each re-scored
by evaluate at its own epoch's size to the value it was chosen with; early stopping."""

from __future__ import annotations

import pytest
import torch

from lightning_sota import load_run
from lightning_sota.config.checks import check_config
from lightning_sota.errors import ConfigError
from lightning_sota.run import layout
from lightning_sota.serve.evaluate import evaluate

from .conftest import config, results, train_here

# progressive resizing: two epochs at 24 px, two at 32 (batch sizes 20 and 10 split the
# 160 training images left by the holdout evenly)
PHASES = "resize.phases=[{size:24,batch_size:20,epochs:2},{size:32,batch_size:10,epochs:2}]"


def trained(tmp_path, mini, *overrides: str):
    run = tmp_path / "run"
    train_here("scale=smoke", PHASES, "data.holdout=0.2", f"data.root={mini}", *overrides, tmp=tmp_path)
    return run, results(run)


def test_top_two_by_holdout_acc_and_best_is_rescored_exactly(tmp_path, mini):
    run, res = trained(tmp_path, mini, "checkpoint.save_top_k=2")
    kept = sorted((run / "checkpoints").glob("best-*.ckpt"))
    by_epoch = {row["epoch"]: row for row in res["history"]}
    values = sorted(row["holdout_acc"] for row in res["history"])
    chosen = [torch.load(f, weights_only=True, mmap=True)["lightning_sota"]["selection"] for f in kept]
    assert len(kept) == 2 and sorted(round(c["value"], 5) for c in chosen) == values[-2:]
    assert all(c["monitor"] == "holdout_acc" and c["mode"] == "max" for c in chosen)
    best = res["best_checkpoint"]
    assert best["monitor"] == "holdout_acc" and best["chosen_on"] == "holdout" and best["kept"] == 2
    assert round(best["value"], 5) == values[-1] == by_epoch[best["epoch"]]["holdout_acc"]
    assert (run / "checkpoints" / "last.ckpt").is_file() and (run / best["file"]).is_file()
    scored = evaluate(str(run), [], split="holdout", which="best")
    assert scored["epoch"] == best["epoch"] and scored["size"] == by_epoch[best["epoch"]]["size"]
    assert scored["accuracy"] == by_epoch[best["epoch"]]["holdout_acc"]
    assert load_run(run, checkpoint="best").size == scored["size"]


@pytest.mark.slow
@pytest.mark.parametrize("averaging", [[], ["weight_averaging=ema"]], ids=["weights", "ema"])
def test_every_kept_epoch_rescores_at_its_own_size(tmp_path, mini, averaging):
    """Every epoch kept, in both phases: evaluate on its file gives the holdout accuracy its
    epoch logged, at the size it trained at. With EMA a file holds the average (what
    validation scored, Lightning's WeightAveraging swaps it in), and re-scores the same."""
    run, res = trained(tmp_path, mini, "checkpoint.save_top_k=4", *averaging)
    files = sorted((run / "checkpoints").glob("best-*.ckpt"))
    assert len(files) == 4
    for path in files:
        scored = evaluate(str(path), [], split="holdout")
        row = res["history"][scored["epoch"]]
        assert (scored["size"], scored["accuracy"]) == (row["size"], row["holdout_acc"]), path.name
    assert {res["history"][e]["size"] for e in range(4)} == {24, 32}


@pytest.mark.slow
def test_early_stopping_ends_the_fit(tmp_path, mini):
    """patience=1 on the training loss with mode=max (rising loss is "better"): the loss falls,
    so the fit stops after two epochs of the four."""
    _, res = trained(tmp_path, mini, "checkpoint.monitor=train_loss", "checkpoint.patience=1")
    assert len(res["history"]) == 2 and res["best_checkpoint"] is None


def test_best_without_kept_checkpoints_is_refused_in_one_line(tmp_path):
    (tmp_path / "checkpoints").mkdir()  # a run that kept only last.ckpt
    with pytest.raises(ConfigError, match=r"no best checkpoints kept; train with checkpoint.save_top_k=2"):
        layout.checkpoint_path(tmp_path, which="best")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["checkpoint.monitor=accuracy"], r"^checkpoint.monitor=accuracy: a run logs holdout_acc, "),
        (["checkpoint.monitor=holdout_acc"], r"^checkpoint.monitor=holdout_acc without a holdout"),
    ],
)
def test_a_monitor_the_run_does_not_log_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(config(*overrides))

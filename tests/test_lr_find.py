"""lr_find: fastai's valley against fastai's own function, and a run with lr_find=true that
records the suggestion and then trains exactly as the same run without it."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from lightning_sota.report.lr_find import trimmed, valley

from .conftest import MINI, results, train_here


def curves() -> list[tuple[list[float], list[float]]]:
    lrs = list(np.geomspace(1e-7, 10, 100))
    u = [2.5 - math.exp(-((math.log10(lr) + 2) ** 2)) + (lr > 0.5) * 3 * lr for lr in lrs]
    rng = np.random.default_rng(0)
    walks = [list(2.3 + np.cumsum(rng.normal(0, 0.05, 100))) for _ in range(5)]
    return [(lrs, u), *[(lrs, w) for w in walks]]


@pytest.mark.parametrize("lrs, losses", curves())
def test_valley_is_fastais(lrs, losses):
    fastai_valley = pytest.importorskip("fastai.callback.schedule").valley  # the bench extra
    want, _ = fastai_valley(lrs, losses, 100)
    assert lrs[valley(lrs, losses)] == want


def test_trimmed_drops_what_fastai_drops():
    lrs = [float(i) for i in range(100)]
    losses = [1.0] * 50 + [float("nan")] + [1.0] * 49
    got_lrs, got_losses = trimmed(lrs, losses)
    assert got_lrs == [float(i) for i in range(10, 50)] and len(got_losses) == 40  # first 10th; NaN on
    assert trimmed(lrs, [1.0] * 100)[0] == [float(i) for i in range(10, 95)]  # and the last 5


@pytest.mark.slow
def test_lr_find_then_the_same_fit(trained_run, tmp_path):
    """lr_find=true: the suggestion in results.json and lr_find.png, then the fit the run has
    without it (the search's steps are undone and its RNG draws forked)."""
    run = tmp_path / "run"
    # the trained run's cache, as it built it
    train_here(
        "+experiment=sota",
        "scale=smoke",
        f"data.root={MINI}",
        "lr_find=true",
        tmp=trained_run.parent,
        run_dir=run,
    )
    res, plain = results(run), results(trained_run)
    found = res["lr_find"]
    assert found["method"] == "valley" and 1e-6 < found["suggestion"] < 1
    # fastai's 100 steps, or fewer where the loss diverges at the top of the range (smoothed loss
    # past 4x its best, or not finite), as float rounding goes: on the mini set all 100 under
    # xdist's one thread; the curve's numbers are in lr_find.json
    curve = json.loads((run / "lr_find.json").read_text())
    steps = found["steps"]
    assert curve["suggestion"] == found["suggestion"] and curve["steps"] == steps
    assert len(curve["lr"]) == len(curve["loss"]) == steps and 90 <= steps <= 100
    assert curve["lr"][0] == pytest.approx(1e-7) and curve["lr"][-1] > 1  # fastai's range, up to 10
    assert found["phase"] == {"size": 24, "batch_size": 32}  # sota's first phase at smoke scale
    with Image.open(run / "lr_find.png") as picture:
        assert picture.format == "PNG"
    assert not list(run.glob(".lr_find_*"))  # Lightning's temporary checkpoint is gone
    assert [h["train_loss"] for h in res["history"]] == [h["train_loss"] for h in plain["history"]]
    assert res["val_acc"] == plain["val_acc"] and res["tta_acc"] == plain["tta_acc"]

"""fastai's ``lr_find`` on a run's own data, model and first phase: Lightning's learning-rate
finder runs the steps (fastai's range: 1e-7 to 10 in 100 exponential steps, stopping when the
smoothed loss passes 4x its best), fastai's ``valley`` picks the suggestion, and ``lr_find.png``
draws the curve the way fastai's ``plot_lr_find`` does.

The search runs before the fit on a forked RNG, and Lightning restores the weights and the
optimizer afterwards, so the fit that follows is the one the run would have had without it.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.tuner import Tuner  # noqa: E402

from lightning_sota.data.datamodule import ImagenetteDataModule  # noqa: E402
from lightning_sota.report.show_batch import save_figure  # noqa: E402
from lightning_sota.run import layout  # noqa: E402
from lightning_sota.run.plan import Plan  # noqa: E402
from lightning_sota.training.module import ImageClassifier  # noqa: E402

START_LR, END_LR, STEPS = 1e-7, 10.0, 100


def valley(lrs: list[float], losses: list[float]) -> int:
    """fastai's ``valley`` (callback/schedule.py): the index ``int(n/3) + int(n/6)`` steps into
    the longest decreasing subsequence of the losses (n its length), about halfway down."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n  # length of the longest decreasing sequence ending at i
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def trimmed(lrs: list[float], losses: list[float], steps: int = STEPS) -> tuple[list[float], list[float]]:
    """What fastai suggests from: without the first tenth and the last 5 steps, and cut at the
    first NaN loss."""
    lrs, losses = lrs[steps // 10 : -5], losses[steps // 10 : -5]
    nan = next((i for i, loss in enumerate(losses) if math.isnan(loss)), len(losses))
    return lrs[:nan], losses[:nan]


@contextlib.contextmanager
def searching(trainer: pl.Trainer, data: ImagenetteDataModule, plan: Plan) -> Iterator[Plan]:
    """The search's own plan handed to ``data`` while the finder runs: every epoch at the first
    phase's size and batch size, enough of them for its steps (the run's plan may have fewer),
    and no validation between them. The run's plan is handed back after."""
    search = plan.first_phase(STEPS)
    max_epochs = trainer.fit_loop.max_epochs
    data.plan, trainer.fit_loop.max_epochs, data.validate = search, search.epochs, False
    try:
        yield search
    finally:
        data.plan, trainer.fit_loop.max_epochs, data.validate = plan, max_epochs, True


def find_lr(
    trainer: pl.Trainer, module: ImageClassifier, data: ImagenetteDataModule, plan: Plan, run_dir: Path
) -> dict:
    """Run the finder on ``plan``'s first phase, draw ``lr_find.png``; the suggestion and the
    curve as a dict."""
    module.finite.stop = False  # the search ends where the loss blows up: that is its job
    try:
        # eager: the finder puts the weights and the optimizer's state back after its search
        with torch.random.fork_rng(), searching(trainer, data, plan), module.graphs.suspended():
            finder = Tuner(trainer).lr_find(
                module,
                datamodule=data,
                min_lr=START_LR,
                max_lr=END_LR,
                num_training=STEPS,
                mode="exponential",
                early_stop_threshold=4.0,
                update_attr=False,
            )
    finally:
        module.settle_finite()  # the search's last verdict is the search's: the fit starts clean
        module.finite.stop = True
    lrs, losses = finder.results["lr"], finder.results["loss"]
    kept_lrs, kept_losses = trimmed(lrs, losses)
    if len(kept_losses) < 2:
        raise RuntimeError(f"lr_find: the loss diverged after {len(losses)} steps, too soon to suggest an lr")
    i = valley(kept_lrs, kept_losses)
    suggestion = float(kept_lrs[i])
    plot(kept_lrs, kept_losses, i, run_dir / layout.LR_FIND_PLOT)
    return {
        "suggestion": suggestion,
        "method": "valley",
        "phase": {"size": plan.phases[0].size, "batch_size": plan.phases[0].batch_size},
        "steps": len(losses),
        "lr": [float(x) for x in lrs],
        "loss": [float(x) for x in losses],
    }


def plot(lrs: list[float], losses: list[float], i: int, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    ax.plot(lrs[i], losses[i], "o", color="red", label=f"valley: {lrs[i]:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("Learning Rate")
    ax.set_ylabel("Loss")
    ax.legend()
    ax.set_title("lr_find: smoothed training loss")
    try:
        return save_figure(fig, path)
    finally:
        plt.close(fig)

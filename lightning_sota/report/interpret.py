"""fastai's ClassificationInterpretation, for every run: top-5 accuracy, per-class accuracy,
precision, recall and F1, calibration error and most_confused in results.json;
``confusion_matrix.png``, ``top_losses.png`` and ``curves.png`` in its folder.

The metrics and the confusion-matrix plot are torchmetrics'; the predictions come from one pass
over the whole val split with the trained model, on the run's device in the precision the
validation ran in, so the overall accuracy here is the run's val_acc.
"""

from __future__ import annotations

import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from torch import Tensor  # noqa: E402
from torchmetrics.classification import (  # noqa: E402
    MulticlassAccuracy,
    MulticlassCalibrationError,
    MulticlassConfusionMatrix,
    MulticlassF1Score,
    MulticlassPrecision,
    MulticlassRecall,
)

from lightning_sota.data.datamodule import ImagenetteDataModule  # noqa: E402
from lightning_sota.report.show_batch import save_figure, save_grid  # noqa: E402
from lightning_sota.training.callbacks import History  # noqa: E402
from lightning_sota.training.module import ImageClassifier  # noqa: E402

# Rank 0 scores the whole split alone: under DDP the metrics must not wait for the other ranks.
LOCAL = {"sync_on_compute": False, "dist_sync_on_step": False}


@torch.no_grad()
def predictions(
    module: ImageClassifier, data: ImagenetteDataModule, trainer: pl.Trainer, split: str = "val"
) -> tuple[Tensor, Tensor, Tensor]:
    """Logits (fp32), labels and image indices of a whole split, at the final size."""
    module.eval()
    logits, labels, index = [], [], []
    with trainer.precision_plugin.val_step_context():
        for batch in data.whole_split_loader(split):
            batch = {k: v.to(module.device) if torch.is_tensor(v) else v for k, v in batch.items()}
            logits.append(module(module.prepare(batch, train=False)).float().cpu())
            labels.append(batch["label"].cpu())
            index.append(batch["index"].cpu())
    return torch.cat(logits), torch.cat(labels), torch.cat(index)


def most_confused(logits: Tensor, labels: Tensor, classes: list[str], min_val: int = 1) -> list[list]:
    """fastai's ClassificationInterpretation.most_confused: [actual, predicted, count] for every
    pair of different classes confused at least ``min_val`` times, the most frequent first."""
    matrix = MulticlassConfusionMatrix(len(classes), **LOCAL)(logits, labels).fill_diagonal_(0)
    pairs = [(matrix[i, j].item(), i, j) for i, j in zip(*torch.where(matrix >= min_val), strict=True)]
    return [[classes[i], classes[j], count] for count, i, j in sorted(pairs, key=lambda p: -p[0])]


def scores(logits: Tensor, labels: Tensor, classes: list[str]) -> dict:
    """What results.json and evaluate report beyond the accuracy (torchmetrics): top-5 and
    per-class accuracy; per class, precision, recall (the class's accuracy) and F1; the expected
    calibration error of the softmax probabilities (15 bins, L1); fastai's most_confused."""
    n = len(classes)

    def per_class(metric) -> list[float]:
        return [round(v.item(), 5) for v in metric(n, average=None, **LOCAL)(logits, labels)]

    precision, recall, f1 = (per_class(m) for m in (MulticlassPrecision, MulticlassRecall, MulticlassF1Score))
    top5 = MulticlassAccuracy(n, top_k=min(5, n), average="micro", **LOCAL)(logits, labels)
    calibration = MulticlassCalibrationError(n, n_bins=15, norm="l1", **LOCAL)(logits.softmax(1), labels)
    return {
        "top5_acc": round(top5.item(), 5),
        "per_class_acc": dict(zip(classes, recall, strict=True)),
        "per_class": {
            c: {"precision": p, "recall": r, "f1": f}
            for c, p, r, f in zip(classes, precision, recall, f1, strict=True)
        },
        "calibration_error": round(calibration.item(), 5),
        "most_confused": most_confused(logits, labels, classes),
    }


def plot_confusion_matrix(logits: Tensor, labels: Tensor, classes: list[str], path: Path) -> None:
    matrix = MulticlassConfusionMatrix(len(classes), **LOCAL)
    matrix.update(logits, labels)
    fig, ax = matrix.plot(labels=classes)  # the metric's own plot: it needs the updated metric
    ax.set_title("Confusion matrix (val split; rows: actual, columns: predicted)")
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
    fig.set_size_inches(8, 7.5)
    save_figure(fig, path, dpi=110)


def plot_top_losses(
    module: ImageClassifier,
    data: ImagenetteDataModule,
    logits: Tensor,
    labels: Tensor,
    index: Tensor,
    path: Path,
    k: int = 9,
) -> None:
    """fastai's plot_top_losses: the ``k`` val images with the highest loss (the run's own loss
    function), titled prediction / actual / loss / probability of the prediction."""
    losses = module.loss(logits, labels).float()
    top = losses.topk(min(k, len(losses))).indices
    probs = logits[top].softmax(1)
    size = data.plan.last.size
    batch = data.images("val", size)[index[top].tolist()]  # returned in index order: re-sort to top
    order = torch.searchsorted(batch["index"], index[top])
    batch = {key: v[order].to(module.device) if torch.is_tensor(v) else v for key, v in batch.items()}
    with torch.no_grad():
        images = module.augment(batch, train=False)
    classes = module.classes
    titles = [
        f"{classes[p]} / {classes[a]}\n{loss:.2f} / {prob:.2f}"
        for p, a, loss, prob in zip(
            probs.argmax(1).tolist(),
            labels[top].tolist(),
            losses[top].tolist(),
            probs.max(1).values.tolist(),
            strict=True,
        )
    ]
    save_grid(images, titles, path, "Top losses: prediction / actual / loss / probability", k)


def series(history: list[dict], key: str, scale: float = 1.0) -> list[float]:
    """One metric per epoch; a gap where an epoch has none (trainer.limit_val_batches=0)."""
    return [scale * row[key] if row.get(key) is not None else float("nan") for row in history]


def plot_curves(history: list[dict], path: Path) -> None:
    """Losses and accuracy per epoch; a dashed line where the training size changes."""
    epochs = [row["epoch"] + 1 for row in history]
    fig, loss_ax = plt.subplots(figsize=(7.5, 4.5))
    for key, style in (("train_loss", "o-"), ("val_loss", "s-")):
        loss_ax.plot(epochs, series(history, key), style, label=key.replace("_", " "))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    loss_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    acc_ax = loss_ax.twinx()
    acc_ax.plot(epochs, series(history, "val_acc", 100), "^-", color="tab:green", label="val acc")
    if any(row.get("holdout_acc") is not None for row in history):
        acc_ax.plot(
            epochs, series(history, "holdout_acc", 100), "v--", color="tab:olive", label="holdout acc"
        )
    acc_ax.set_ylabel("accuracy (%)")
    for before, row in zip(history, history[1:], strict=False):
        if row["size"] != before["size"]:
            loss_ax.axvline(row["epoch"] + 0.5, color="grey", linestyle="--")
            where = (row["epoch"] + 0.55, 0.97)
            loss_ax.annotate(
                f"{row['size']} px", where, xycoords=("data", "axes fraction"), va="top", color="grey"
            )
    loss_ax.set_title(f"Losses and accuracy per epoch (starts at {history[0]['size']} px)")
    handles = loss_ax.get_legend_handles_labels()[0] + acc_ax.get_legend_handles_labels()[0]
    loss_ax.legend(handles=handles, loc="center right")
    loss_ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def interpret(
    module: ImageClassifier,
    data: ImagenetteDataModule,
    trainer: pl.Trainer,
    history: list[dict],
    folder: Path,
) -> dict:
    """Writes the three pictures into ``folder``; returns results.json's additions."""
    logits, labels, index = predictions(module, data, trainer)
    plot_confusion_matrix(logits, labels, module.classes, folder / "confusion_matrix.png")
    plot_top_losses(module, data, logits, labels, index, folder / "top_losses.png")
    plot_curves(history, folder / "curves.png")
    return scores(logits, labels, module.classes)


class Interpretation(pl.Callback):
    """Interprets the trained model at the end of the fit, on rank 0 alone: in ``on_train_end``,
    after WeightAveraging has put the average into the model and before Lightning's teardown
    moves the model to the CPU (so the pass runs on the run's device). ``results`` holds
    results.json's additions, ``seconds`` the time it took (inside the fit's wall time)."""

    def __init__(self, history: History, data: ImagenetteDataModule, folder: Path) -> None:
        self.history, self.data, self.folder = history, data, folder
        self.results: dict = {}
        self.seconds = 0.0

    def on_train_end(self, trainer: pl.Trainer, pl_module: ImageClassifier) -> None:
        if not trainer.is_global_zero:
            return
        start = time.perf_counter()
        self.results = interpret(pl_module, self.data, trainer, self.history.rows, self.folder)
        self.seconds = time.perf_counter() - start

"""fastai's show_batch: a labelled grid of the images the model is given, saved as a PNG.

    python -m lightning_sota.report.show_batch +experiment=sota scale=smoke [--valid] [--out show_batch.png]

Every run saves its first training batch as ``show_batch.png`` in its folder (the ShowBatch
callback: the very images of the first step, before MixUp). This command draws one for any
config without training: the first batch of the first phase, through the config's augmentation
(the training view) or the validation centre crop (``--valid``). The images are drawn before
normalization, which is exactly the de-normalized view fastai's show_batch decodes back to.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from torch import Tensor  # noqa: E402

from lightning_sota.cli import one_line_errors  # noqa: E402
from lightning_sota.config.checks import check_config  # noqa: E402
from lightning_sota.config.compose import compose_config  # noqa: E402
from lightning_sota.files import staged  # noqa: E402
from lightning_sota.run.plan import prepared_data  # noqa: E402
from lightning_sota.training.module import step_seed  # noqa: E402


def save_grid(images: Tensor, titles: list[str], path: Path, title: str, n: int = 9) -> Path:
    """``images``: N x 3 x H x W in [0, 1], ``titles`` one per image; ``n`` of them, evenly spaced
    through the batch, in a square-ish grid, as fastai's show_batch (max_n=9). Spaced, not the
    first: a batch is gathered in index order (data.py), so its first images share a class.
    Written through a temporary name (save_figure)."""
    k = min(n, len(images))
    pick = torch.linspace(0, len(images) - 1, k).round().long()
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    lines = max(titles[i].count("\n") + 1 for i in pick.tolist())  # top_losses titles take two
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.4 * cols, (2.4 + 0.2 * lines) * rows + 0.4), squeeze=False
    )
    pictures = images[pick].detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    for ax, picture, i in zip(axes.flat, pictures, pick.tolist(), strict=False):
        ax.imshow(picture, interpolation="nearest")
        ax.set_title(titles[i], fontsize=10)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return save_figure(fig, Path(path))


def save_figure(fig: plt.Figure, path: Path, dpi: int = 100) -> Path:
    """Through a temporary name: a crash never leaves half a PNG that looks finished."""
    try:
        with staged(path) as stage:
            fig.savefig(stage.path, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


class ShowBatch(pl.Callback):
    """Saves the first training batch of a fit, augmented exactly as the first step sees it: with
    the step's own seed (ImageClassifier.seed_draws), under a forked RNG, so the training itself
    is unchanged. The batch is augmented in the first step and held on its device; ``draw``
    (after the fit: run/train.py) reads it back and draws it, so matplotlib and the host's wait
    for the device stay out of the timed fit."""

    def __init__(self, path: Path, n: int = 9) -> None:
        self.path, self.n = Path(path), n
        self.held: tuple[Tensor, Tensor, list[str], str] | None = None

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch, batch_idx
    ) -> None:
        if trainer.current_epoch or batch_idx or not trainer.is_global_zero or self.path.exists():
            return
        device = batch["image"].device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad():
            pl_module.seed_draws(batch_idx)
            images = pl_module.augment(batch, train=True)
        name = pl_module.config.get("name", "run")
        title = f"{name}: first training batch, {int(batch['size'])} px"
        self.held = (images, batch["label"], pl_module.classes, title)

    def draw(self) -> Path | None:
        """The held batch's picture, if the fit held one."""
        if self.held is None:
            return None
        (images, labels, classes, title), self.held = self.held, None
        return save_grid(images.cpu(), [classes[i] for i in labels.tolist()], self.path, title, self.n)


def first_batch(overrides: list[str], valid: bool) -> tuple[Tensor, list[str], str]:
    """The config's first batch of its first phase, augmented (or centre-cropped)."""
    cfg = compose_config(overrides)
    check_config(cfg)
    data, _ = prepared_data(cfg)
    loader = data.val_dataloader() if valid else data.train_dataloader()
    batch = next(iter(loader[0] if isinstance(loader, list) else loader))
    torch.manual_seed(step_seed(cfg.seed, 0, 0, 0))  # the draws of the run's first step on rank 0
    images = instantiate(cfg.augment)(batch, train=not valid)
    view = "validation (centre crop)" if valid else "training"
    titles = [data.classes[label] for label in batch["label"].tolist()]
    return images, titles, f"{cfg.name}: first {view} batch, {int(batch['size'])} px"


@one_line_errors
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as train.py takes them")
    parser.add_argument("--valid", action="store_true", help="the validation view instead of training's")
    parser.add_argument("--out", default="show_batch.png")
    parser.add_argument("--n", type=int, default=9, help="images in the grid (fastai's max_n)")
    args = parser.parse_intermixed_args(argv)
    images, titles, title = first_batch(args.overrides, args.valid)
    print(save_grid(images, titles, Path(args.out), title, args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Step 8: test-time augmentation as fastai's ``Learner.tta``, as a Lightning callback.

At test time the module gives the centre prediction of each batch; this callback adds ``n``
predictions of the same batch under the training augmentation (or one horizontal flip) and
combines them: ``lerp(mean(aug), centre, beta)``, or the element-wise max with ``use_max``.
"""

from __future__ import annotations

import contextlib

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_sota.errors import ConfigError


def combine(aug: Tensor, centre: Tensor, beta: float = 0.25, use_max: bool = False) -> Tensor:
    """fastai's combination of ``aug`` [n, B, C] and ``centre`` [B, C] probabilities."""
    if use_max:
        return torch.maximum(aug.max(0).values, centre)
    return torch.lerp(aug.mean(0), centre, beta)


class TestTimeAugmentation(pl.Callback):
    """``mode='augment'``: n passes with the training augmentation; ``mode='flip'``: one pass of
    the centre view flipped. ``accuracy`` holds the TTA accuracy once the test loop ends."""

    def __init__(
        self, n: int = 4, beta: float = 0.25, use_max: bool = False, mode: str = "augment", seed: int = 0
    ) -> None:
        if mode not in ("augment", "flip"):
            raise ConfigError(f"tta.mode must be 'augment' or 'flip', got {mode!r}")
        self.n, self.beta, self.use_max, self.mode, self.seed = n, beta, use_max, mode, seed
        self.accuracy: float | None = None

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._correct = torch.zeros((), device=pl_module.device)
        self._total = torch.zeros((), device=pl_module.device)
        # The augmented passes draw from (seed, rank), not from wherever training left the RNG:
        # evaluate.py re-scores a checkpoint to the same tta_acc. The RNG is restored after.
        self._rng = contextlib.ExitStack()
        device = pl_module.device
        self._rng.enter_context(torch.random.fork_rng(devices=[device] if device.type == "cuda" else []))
        torch.manual_seed(self.seed + trainer.global_rank)

    @torch.no_grad()
    def predict(self, pl_module, batch: dict, centre: Tensor) -> Tensor:
        if self.mode == "flip":
            aug = [pl_module.predict_probs(pl_module.prepare(batch, train=False).flip(-1))]
        else:
            aug = [pl_module.predict_probs(pl_module.prepare(batch, train=True)) for _ in range(self.n)]
        return combine(torch.stack(aug), centre, self.beta, self.use_max)

    def on_test_batch_end(self, trainer, pl_module, outputs: Tensor, batch, batch_idx, dataloader_idx=0):
        with trainer.precision_plugin.test_step_context():  # the autocast test_step had
            probs = self.predict(pl_module, batch, outputs)
        self._correct += (probs.argmax(1) == batch["label"]).sum()
        self._total += len(batch["label"])

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self._rng.close()
        correct = trainer.strategy.reduce(self._correct, reduce_op="sum")
        total = trainer.strategy.reduce(self._total, reduce_op="sum")
        self.accuracy = round((correct / total).item(), 5)
        pl_module.log("tta_acc", self.accuracy)

"""Steps 4-7 for one batch: augment and normalize on the device, forward, loss, one-cycle step."""

from __future__ import annotations

from collections.abc import Callable

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from .augment import BatchAugment
from .normalize import Normalize


class ImageClassifier(pl.LightningModule):
    """Trains ``model`` on uint8 cache batches (see data.py) with fastai's recipe.

    ``optimizer(model)`` and ``schedule(optimizer, phase_steps)`` are factories (Hydra partials)
    so the schedule can be sized from the datamodule's phases once they are known.
    """

    def __init__(
        self,
        model: nn.Module,
        augment: BatchAugment,
        normalize: Normalize,
        loss: nn.Module,
        optimizer: Callable,
        schedule: Callable,
        num_classes: int,
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.model, self.augment, self.normalize, self.loss = model, augment, normalize, loss
        self.optimizer_factory, self.schedule_factory = optimizer, schedule
        self.channels_last = channels_last
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")

    def prepare(self, batch: dict, train: bool) -> Tensor:
        """uint8 cache batch -> normalized float input at the batch's size."""
        x = self.normalize(self.augment(batch, train))
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        x = self.prepare(batch, train=True)
        loss = self.loss(self.model(x), batch["label"])
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        x = self.prepare(batch, train=False)
        logits = self.model(x)
        self.log(
            "val_loss", self.loss(logits, batch["label"]), on_epoch=True, prog_bar=True, batch_size=len(x)
        )
        self.val_acc(logits, batch["label"])
        self.log("val_acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(x))

    def configure_optimizers(self) -> dict:
        optimizer = self.optimizer_factory(self.model)
        data = self.trainer.datamodule
        phase_steps = [data.steps_per_epoch(p) * p.epochs for p in data.phases]
        schedule = self.schedule_factory(optimizer, phase_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

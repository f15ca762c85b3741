"""Callbacks the DDP tests add to a real `python train.py ... trainer=ddp_cpu` run through the
config (`+callbacks.<name>._target_=tests.ddp_hooks.<Class>`): they only observe or break one rank."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import Tensor, nn


class RecordDraws(pl.Callback):
    """Each rank writes ``draws_rank<r>.pt`` after its first training step: the RNG state that
    step's augmentation left (equal states: equal draws) and the images it trained on."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module, outputs, batch: dict, batch_idx: int
    ) -> None:
        if trainer.current_epoch == 0 and batch_idx == 0:
            record = {
                "rng": torch.get_rng_state(),
                "label": batch["label"].cpu(),
                "image": batch["image"].cpu(),
            }
            torch.save(record, self.out / f"draws_rank{trainer.global_rank}.pt")


class NaNLoss(nn.Module):
    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.inner = loss

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        return self.inner(logits, target) * float("nan")


class PoisonOneRank(pl.Callback):
    """From batch ``batch`` of epoch ``epoch`` on, rank ``rank``'s loss is NaN; the other ranks'
    stay finite."""

    def __init__(self, rank: int = 1, epoch: int = 1, batch: int = 2) -> None:
        self.rank, self.epoch, self.batch = rank, epoch, batch

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module, batch: dict, batch_idx: int) -> None:
        due = (trainer.current_epoch, batch_idx) == (self.epoch, self.batch)
        if trainer.global_rank == self.rank and due and not isinstance(pl_module.loss, NaNLoss):
            pl_module.loss = NaNLoss(pl_module.loss)

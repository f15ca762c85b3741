"""Callbacks that watch the fit: per-epoch history and timings for results.json."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class History(pl.Callback):
    """One row per epoch (size, batch size, losses, accuracy) and the time spent training
    and validating, so results.json can report images/s of the training steps alone."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.train_images = 0
        self.val_seconds = 0.0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.train_images += len(batch["label"])

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.val_seconds += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        phase = trainer.datamodule.current_phase()
        metrics = trainer.callback_metrics

        def value(key: str) -> float | None:
            return round(float(metrics[key]), 5) if key in metrics else None

        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "size": phase.size,
                "batch_size": phase.batch_size,
                "train_loss": value("train_loss"),
                "val_loss": value("val_loss"),
                "val_acc": value("val_acc"),
            }
        )

"""The best epochs kept beside last.ckpt (Lightning's ModelCheckpoint with a monitor and
save_top_k) and early stopping (Lightning's EarlyStopping), from conf/checkpoint. Each file
holds the weights its epoch validated (with weight averaging: the average, which validation
scored) and, from the module's on_save_checkpoint, its epoch, phase, size and monitored value;
run/layout.best_checkpoint picks the best of them."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

from lightning_sota.run import layout

# what a run logs once an epoch, which a checkpoint may be chosen on
METRICS = ("holdout_acc", "holdout_loss", "val_acc", "val_loss", "train_loss")


def monitored(cfg: DictConfig) -> str:
    """checkpoint.monitor, ``auto`` resolved: the holdout's accuracy when there is one."""
    if cfg.checkpoint.monitor != "auto":
        return str(cfg.checkpoint.monitor)
    return "holdout_acc" if cfg.data.get("holdout") else "val_acc"


def selection_callbacks(cfg: DictConfig, run_dir: Path) -> list[pl.Callback]:
    """ModelCheckpoint of the save_top_k best epochs and EarlyStopping, as conf/checkpoint asks."""
    choice, metric = cfg.checkpoint, monitored(cfg)
    callbacks: list[pl.Callback] = []
    if choice.save_top_k:
        callbacks.append(
            ModelCheckpoint(
                dirpath=run_dir / layout.CHECKPOINTS,
                filename=f"{layout.BEST}-epoch={{epoch}}-{metric}={{{metric}:.5f}}",
                auto_insert_metric_name=False,
                monitor=metric,
                mode=str(choice.mode),
                save_top_k=choice.save_top_k,
                enable_version_counter=False,
            )
        )
    if choice.patience:
        callbacks.append(EarlyStopping(monitor=metric, mode=str(choice.mode), patience=choice.patience))
    return callbacks

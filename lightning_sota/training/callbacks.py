"""Callbacks that watch the fit: per-epoch history and timings for results.json."""

from __future__ import annotations

import threading
import time
import warnings
from collections import Counter
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import RichProgressBar, TQDMProgressBar
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.imports import _RICH_AVAILABLE

from lightning_sota.files import write_json
from lightning_sota.run.plan import Phase, phase_index


class History(pl.Callback):
    """One row per epoch with the size and batch size the training batches really had, the
    images trained and validated (summed over DDP ranks, so a row proves every validation image
    was scored once), the losses and the accuracy; and the time spent validating, so
    results.json can report the images/s of the training steps alone."""

    def __init__(self) -> None:
        self.rows: list[dict] = []
        self.train_images = 0
        self.val_seconds = 0.0
        self.seconds_before = 0.0  # fit time spent before a resume, restored from the checkpoint
        self._fit_start = time.perf_counter()

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def state_dict(self) -> dict:
        fit_seconds = self.seconds_before + time.perf_counter() - self._fit_start
        return {
            "rows": self.rows,
            "train_images": self.train_images,
            "val_seconds": self.val_seconds,
            "fit_seconds": fit_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.rows, self.train_images = state["rows"], state["train_images"]
        self.val_seconds, self.seconds_before = state["val_seconds"], state["fit_seconds"]

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start = time.perf_counter()
        self._sizes: set[int] = set()
        self._batch_sizes: set[int] = set()
        self._images = {"train": 0, "val": 0}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._images["train"] += len(batch["label"])
        self._sizes.add(int(batch["size"]))
        self._batch_sizes.add(len(batch["label"]) * trainer.world_size)  # the global batch (data.py)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if not trainer.sanity_checking and dataloader_idx == 0:  # loader 1 is the holdout
            self._images["val"] += len(batch["label"])

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.val_seconds += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = trainer.callback_metrics

        def value(key: str) -> float | None:
            return round(float(metrics[key]), 5) if key in metrics else None

        def seen(values: set[int]) -> int | list[int] | None:
            return next(iter(values)) if len(values) == 1 else sorted(values) or None

        # Every rank reaches this hook, so the collective sum cannot deadlock.
        counts = torch.tensor([self._images["train"], self._images["val"]], device=pl_module.device)
        train_images, val_images = trainer.strategy.reduce(counts, reduce_op="sum").tolist()
        self.train_images += int(train_images)
        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "size": seen(self._sizes),
                "batch_size": seen(self._batch_sizes),
                "train_images": int(train_images),
                "val_images": int(val_images),
                "train_loss": value("train_loss"),
                "val_loss": value("val_loss"),
                "val_acc": value("val_acc"),
                "holdout_acc": value("holdout_acc"),
                "seconds": round(time.perf_counter() - self._epoch_start, 2),  # training and validation
            }
        )


class ProgressiveResize(pl.Callback):
    """Reports the progressive-resizing phases as the run moves through them.

    The switch itself is the datamodule's: Lightning asks for each epoch's loader before any
    epoch-start hook runs, so the phase must be a pure function of the epoch that the
    datamodule evaluates when asked (which also makes a resumed run land in the right phase).
    This callback logs ``size`` and ``batch_size`` every epoch (metrics.csv) and announces each
    new phase of the ``phases`` it is given (the plan's). (The Trainer's max_epochs is the
    phases' sum: build.py sets it, checks.py refuses a user's.)
    """

    def __init__(self, phases: tuple[Phase, ...]) -> None:
        self.phases = phases

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        number = phase_index(self.phases, epoch)
        phase = self.phases[number]
        if epoch == 0 or number != phase_index(self.phases, epoch - 1):
            rank_zero_info(
                f"phase {number + 1}/{len(self.phases)}: {phase.size} px, batch size "
                f"{phase.batch_size}, {phase.epochs} epochs"
            )
        pl_module.log("size", float(phase.size), on_step=False, on_epoch=True)
        pl_module.log("batch_size", float(phase.batch_size), on_step=False, on_epoch=True)


class LearningRates(pl.Callback):
    """Each parameter group's learning rate on the Trainer's logging steps, under the names
    Lightning's LearningRateMonitor gives them (``lr-<optimizer>/pg<n>``), from the schedule's
    own host-side values. LearningRateMonitor copies every value to the device for
    callback_metrics (a host wait per group on a GPU), reads an lr held as a device tensor
    (optim.FusedRAdamW's) back to the host, and refuses a run without loggers (``~logger``)."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        # the connector's and the loop's own step: what LearningRateMonitor logs on, and at
        logging = trainer._logger_connector.should_update_logs
        if not trainer.loggers or not trainer.lr_scheduler_configs or not logging:
            return
        schedule = trainer.lr_scheduler_configs[0].scheduler
        lrs = getattr(schedule, "host_lrs", None) or [float(lr) for lr in schedule.get_last_lr()]
        name = "lr-" + type(schedule.optimizer).__name__
        metrics = {f"{name}/pg{i + 1}" if len(lrs) > 1 else name: lr for i, lr in enumerate(lrs)}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.fit_loop.epoch_loop._batches_that_stepped)


class SparseOnGpu:
    """A progress bar refreshed at every step on a CPU (a step takes a second) and every
    ``GPU_REFRESH`` steps on a GPU, where a step takes milliseconds and each refresh is host
    time the step waits for (benchmarks/RESULTS.md, "Host cost of a training step")."""

    GPU_REFRESH = 25
    on_gpu = False

    def setup(self, trainer, pl_module, stage) -> None:
        self.on_gpu = trainer.strategy.root_device.type == "cuda"
        super().setup(trainer, pl_module, stage)

    @property
    def refresh_rate(self) -> int:
        return self.GPU_REFRESH if self.on_gpu else 1


class RichBar(SparseOnGpu, RichProgressBar):
    pass


class TqdmBar(SparseOnGpu, TQDMProgressBar):
    pass


def progress_bar() -> pl.Callback:
    """The bar Lightning would pick (Rich where it is installed), refreshed as SparseOnGpu says."""
    return RichBar() if _RICH_AVAILABLE else TqdmBar()


class HostSyncCount(pl.Callback):
    """debug=syncs: how often the training loop waits for the GPU, per training step and per
    validation batch, counted by torch's CUDA sync debug mode over every epoch after the first
    (the first sets up: allocations, cuDNN's choices, the pinned buffers). Each epoch's counts,
    and the lines that waited, go to ``path`` (syncs.json). Waits on other threads are counted
    apart (``background_waits``): Lightning's AsyncCheckpointIO writes the last checkpoint from
    a thread of its own, whose copies to the host wait there while the loop trains on. On the
    loop, 16-mixed's GradScaler waits once a step by torch's design; nothing else should (the
    learning rates are logged from host values: LearningRates)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.epochs: list[dict] = []
        self._caught: list[tuple[bool, str]] | None = None

    def _watching(self, trainer: pl.Trainer) -> bool:
        return trainer.current_epoch >= 1 and trainer.strategy.root_device.type == "cuda"

    def _start(self) -> None:
        # catch_warnings(record=True) would mix every thread's warnings: each is recorded with
        # whether the loop's thread raised it.
        self._loop = threading.get_ident()
        self._caught = []
        self._catcher = warnings.catch_warnings()
        self._catcher.__enter__()
        warnings.simplefilter("always")
        warnings.showwarning = self._show
        torch.cuda.set_sync_debug_mode("warn")

    def _show(self, message, category, filename, lineno, file=None, line=None) -> None:
        if self._caught is not None and "synchroniz" in str(message):
            self._caught.append((threading.get_ident() == self._loop, f"{filename}:{lineno}"))

    def _stop(self) -> list[tuple[bool, str]]:
        torch.cuda.set_sync_debug_mode("default")
        caught, self._caught = self._caught, None
        self._catcher.__exit__(None, None, None)
        return caught

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._batches = {"train": 0, "val": 0}
        if self._watching(trainer):
            self._start()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._batches["train"] += 1

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        if self._caught is not None:
            self._train_waits = self._stop()
            self._start()

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        self._batches["val"] += 1

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._caught is not None:
            self._record(trainer, self._train_waits, self._stop())

    def _record(self, trainer, train: list, val: list) -> None:
        def where(waits: list, on_loop: bool, n: int) -> dict[str, int]:
            return dict(Counter(w for loop, w in waits if loop == on_loop).most_common(n))

        self.epochs.append(
            {
                "epoch": trainer.current_epoch,
                "train_steps": self._batches["train"],
                "train_waits": sum(loop for loop, _ in train),
                "train_where": where(train, True, 8),
                "val_batches": self._batches["val"],
                "val_waits": sum(loop for loop, _ in val),
                "val_where": where(val, True, 4),
                "background_waits": sum(not loop for loop, _ in (*train, *val)),
                "background_where": where([*train, *val], False, 4),
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            device = trainer.strategy.root_device
            note = {} if device.type == "cuda" else {"skipped": f"the run is on {device}: no GPU to wait for"}
            write_json(self.path, {"device": str(device), **note, "epochs": self.epochs})

"""The run's plan: its phases (size, batch size, epochs) and the training batches each epoch
takes. ``build_run`` makes it once, from the config and the training split's size, and hands it
to the DataModule (which loader each epoch gets), the LightningModule (the schedule's length, the
checkpoint's size), the callbacks and lr_find. Nothing reads it back through the Trainer, and
nothing rewrites it: lr_find is handed a plan of its own."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from hydra.utils import instantiate
from omegaconf import DictConfig

if TYPE_CHECKING:
    from lightning_sota.data.datamodule import ImagenetteDataModule


@dataclass(frozen=True)
class Phase:
    size: int
    batch_size: int
    epochs: int


def planned_phases(resize: DictConfig) -> tuple[Phase, ...]:
    """``resize.phases``, each run for ``resize.epochs_per_phase`` epochs when a debug config
    sets it (the whole plan, each phase briefly)."""
    phases = tuple(Phase(int(p["size"]), int(p["batch_size"]), int(p["epochs"])) for p in resize.phases)
    if resize.get("epochs_per_phase"):
        phases = tuple(replace(p, epochs=int(resize.epochs_per_phase)) for p in phases)
    return phases


def train_batches(images: int, batch_size: int, overfit: int = 0, limit: int | float = 1.0) -> int:
    """Training batches an epoch takes, the same on every rank and any number of ranks (global
    batches, data.batches.ShardedBatches): drop_last (as fastai trains), debug=overfit's first
    ``overfit`` batches, then the Trainer's ``limit_train_batches`` the way Lightning applies it
    (int: at most that many; float: that fraction, rounded down)."""
    batches = images // batch_size
    if overfit:
        batches = min(batches, overfit)
    return min(batches, limit) if isinstance(limit, int) else int(batches * limit)


def phase_index(phases: tuple[Phase, ...], epoch: int) -> int:
    """Which of ``phases`` trains ``epoch`` (the last one past their end)."""
    for i, phase in enumerate(phases):
        if epoch < phase.epochs:
            return i
        epoch -= phase.epochs
    return len(phases) - 1


@dataclass(frozen=True)
class Plan:
    phases: tuple[Phase, ...]
    batches: tuple[int, ...]  # training batches an epoch takes, in each phase
    accumulate: int = 1  # batches per optimizer step (trainer.accumulate_grad_batches)
    overfit: int = 0  # debug=overfit: every epoch trains these first batches of epoch 0's shuffle

    @classmethod
    def make(
        cls,
        phases: tuple[Phase, ...],
        train_images: int,
        overfit_batches: int = 0,
        limit_train_batches: int | float = 1.0,
        accumulate: int = 1,
    ) -> Plan:
        batches = tuple(
            train_batches(train_images, p.batch_size, overfit_batches, limit_train_batches) for p in phases
        )
        return cls(phases, batches, accumulate, overfit_batches)

    @property
    def epochs(self) -> int:
        return sum(p.epochs for p in self.phases)

    @property
    def sizes(self) -> list[int]:
        return sorted({p.size for p in self.phases})

    @property
    def last(self) -> Phase:
        """The final phase: what validation, the checkpoint and serving use."""
        return self.phases[-1]

    def phase_at(self, epoch: int) -> Phase:
        return self.phases[phase_index(self.phases, epoch)]

    def batches_at(self, epoch: int) -> int:
        return self.batches[phase_index(self.phases, epoch)]

    def optimizer_steps(self) -> list[tuple[int, int]]:
        """(optimizer steps an epoch, epochs) for each phase, as Lightning steps: with gradient
        accumulation one every ``accumulate`` batches and one on an epoch's last batch (so the lr
        still ends its cycle, as under fastai's GradientAccumulation)."""
        return [
            (math.ceil(b / self.accumulate), p.epochs) for p, b in zip(self.phases, self.batches, strict=True)
        ]

    def first_phase(self, steps: int) -> Plan:
        """lr_find's plan: every epoch at the first phase's size and batch size, enough of them for
        ``steps`` batches (the run's plan may have fewer)."""
        first, batches = self.phases[0], max(1, self.batches[0])
        epochs = math.ceil(steps / batches) + 1
        return replace(self, phases=(replace(first, epochs=epochs),), batches=(self.batches[0],))

    def as_list(self) -> list[dict]:
        return [vars(p) for p in self.phases]


def build_data(cfg: DictConfig) -> ImagenetteDataModule:
    """The config's DataModule, not yet set up: caches at each size of its planned phases."""
    return instantiate(cfg.data, sizes=[p.size for p in planned_phases(cfg.resize)])


def make_plan(cfg: DictConfig, data: ImagenetteDataModule) -> Plan:
    """The run's plan, from the config and ``data``'s training split (set up), handed to ``data``."""
    trainer = cfg.trainer
    data.plan = Plan.make(
        planned_phases(cfg.resize),
        len(data.train_index),
        overfit_batches=cfg.resize.get("overfit_batches", 0),
        limit_train_batches=trainer.get("limit_train_batches", 1.0),
        accumulate=trainer.get("accumulate_grad_batches", 1),
    )
    return data.plan


def prepared_data(cfg: DictConfig) -> tuple[ImagenetteDataModule, Plan]:
    """The config's data, set up (acquired, caches built), and its plan."""
    data = build_data(cfg)
    data.setup("fit")
    return data, make_plan(cfg, data)

"""Per-batch learning-rate and momentum schedules with fastai's exact shapes.

A schedule is a list of cycles, each a number of optimizer steps with its own peak learning rate,
so one cycle over the whole run (``fit_one_cycle``) and a new cycle per progressive phase
(``fine_tune``) are the same code. Stepped once per batch by Lightning (``interval: step``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


def cos_anneal(start: float, end: float, pos: float) -> float:
    """fastai's SchedCos: from ``start`` at pos 0 to ``end`` at pos 1 along half a cosine."""
    return start + (1 + math.cos(math.pi * (1 - pos))) * (end - start) / 2


def one_cycle_value(pos: float, start: float, middle: float, end: float, pct_start: float) -> float:
    """fastai's combined_cos: start -> middle over ``pct_start``, then middle -> end."""
    if pos < pct_start:
        return cos_anneal(start, middle, pos / pct_start)
    return cos_anneal(middle, end, (pos - pct_start) / (1 - pct_start))


@dataclass
class Cycle:
    steps: int
    lr_max: float
    div: float = 25.0
    div_final: float = 1e5
    pct_start: float = 0.25
    clear_state: bool = False  # start with fresh optimizer state (fastai's freeze()/unfreeze())


class CycleSchedule(LRScheduler):
    """Learning rate and Adam's beta1 (momentum) for every optimizer step of ``cycles``;
    ``moms=None`` leaves the momentum at the optimizer's own (fastai's fit_flat_cos)."""

    def __init__(
        self,
        optimizer: Optimizer,
        cycles: list[Cycle],
        moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95),
    ) -> None:
        self.cycles = [asdict(c) for c in cycles]  # plain dicts: checkpoints load weights_only
        self.moms = None if moms is None else list(moms)
        super().__init__(optimizer)

    @property
    def total_steps(self) -> int:
        return sum(c["steps"] for c in self.cycles)

    @property
    def clear_at(self) -> set[int]:
        """The optimizer steps that begin a cycle with ``clear_state``."""
        starts = [sum(c["steps"] for c in self.cycles[:i]) for i in range(len(self.cycles))]
        return {start for start, c in zip(starts, self.cycles, strict=True) if c["clear_state"]}

    def values(self, step: int) -> tuple[float, float | None]:
        """(lr, momentum) at optimizer step ``step`` (0-based); past the end, the final values."""
        for c in self.cycles:
            if step < c["steps"] or c is self.cycles[-1]:
                pos = min(step / c["steps"], 1.0)
                lr = one_cycle_value(
                    pos, c["lr_max"] / c["div"], c["lr_max"], c["lr_max"] / c["div_final"], c["pct_start"]
                )
                mom = None if self.moms is None else one_cycle_value(pos, *self.moms, c["pct_start"])
                return lr, mom
            step -= c["steps"]
        raise ValueError("a schedule needs at least one cycle")

    def get_lr(self) -> list[float]:
        if self.last_epoch in self.clear_at:  # Adam's moments and step count start over
            # a wrapper (timm's Lookahead, i.e. ranger) keeps them in its base optimizer
            getattr(self.optimizer, "_base_optimizer", self.optimizer).state.clear()
        lr, mom = self.values(self.last_epoch)
        for group in self.optimizer.param_groups if mom is not None else []:
            if "betas" in group:
                group["betas"] = (mom, group["betas"][1])
            elif "momentum" in group:
                group["momentum"] = mom
        return [lr for _ in self.optimizer.param_groups]


def one_cycle(
    optimizer: Optimizer,
    phases: list[tuple[int, int]],
    lr_max: float,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95),
) -> CycleSchedule:
    """fit_one_cycle over every phase together; ``phases`` are (steps per epoch, epochs).

    With div=1, pct_start=0.75 and moms=None this is fit_flat_cos."""
    steps = sum(per_epoch * epochs for per_epoch, epochs in phases)
    return CycleSchedule(optimizer, [Cycle(steps, lr_max, div, div_final, pct_start)], moms)


def fine_tune(
    optimizer: Optimizer,
    phases: list[tuple[int, int]],
    lr_max: float,
    fine_tune_lr: float = 1e-3,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95),
) -> CycleSchedule:
    """Chapter 7's progressive resizing: fit_one_cycle over the first phase, then fastai's
    ``fine_tune(epochs - 1, fine_tune_lr)`` for each later phase: one epoch at fine_tune_lr with
    pct_start 0.99, then the remaining epochs at fine_tune_lr / 2 with div 5 and pct_start 0.3.
    Both cycles start with fresh optimizer state: fine_tune's freeze() and unfreeze() go through
    ``Learner.freeze_to``, which calls ``opt.clear_state()`` (even when nothing is frozen)."""
    (first_steps, first_epochs), *later = phases
    cycles = [Cycle(first_steps * first_epochs, lr_max, div, div_final, pct_start)]
    for per_epoch, epochs in later:
        cycles.append(Cycle(per_epoch, fine_tune_lr, div, div_final, pct_start=0.99, clear_state=True))
        if epochs > 1:
            rest = per_epoch * (epochs - 1)
            cycles.append(Cycle(rest, fine_tune_lr / 2, 5.0, div_final, 0.3, clear_state=True))
    return CycleSchedule(optimizer, cycles, moms)

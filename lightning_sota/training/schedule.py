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

from lightning_sota.errors import ConfigError


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
    # discriminative learning rates: the multiple of the lr each split of the model gets
    # (optim._groups' "split"), fastai's slice(); None: the same lr everywhere
    mults: list[float] | None = None
    # fastai's freeze(): every split but the last gets lr 0, except its norm layers' parameters
    frozen: bool = False


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

    def values(self, step: int) -> tuple[float, float | None, dict]:
        """(lr, momentum, cycle) at optimizer step ``step`` (0-based); past the end, the final
        values. The lr is the last split's: see ``group_lr``."""
        for c in self.cycles:
            if step < c["steps"] or c is self.cycles[-1]:
                pos = min(step / c["steps"], 1.0)
                lr = one_cycle_value(
                    pos, c["lr_max"] / c["div"], c["lr_max"], c["lr_max"] / c["div_final"], c["pct_start"]
                )
                mom = None if self.moms is None else one_cycle_value(pos, *self.moms, c["pct_start"])
                return lr, mom, c
            step -= c["steps"]
        raise ValueError("a schedule needs at least one cycle")

    @staticmethod
    def group_lr(lr: float, cycle: dict, group: dict) -> float:
        """A parameter group's share of ``lr``: its split's multiple, and 0 for what a frozen
        cycle keeps fixed (one cycle shape scaled per split is fastai's schedule over an array of
        lr_max). A group without a split (an optimizer not built by optim.py) gets ``lr``."""
        mults, split = cycle["mults"], group.get("split")
        if split is None or not mults:
            return lr
        if cycle["frozen"] and split < len(mults) - 1 and not group.get("norm"):
            return 0.0
        return lr * mults[split]

    def get_lr(self) -> list[float]:
        if self.last_epoch in self.clear_at:  # Adam's moments and step count start over
            # a wrapper (timm's Lookahead, i.e. ranger) keeps them in its base optimizer
            getattr(self.optimizer, "_base_optimizer", self.optimizer).state.clear()
        lr, mom, cycle = self.values(self.last_epoch)
        for group in self.optimizer.param_groups if mom is not None else []:
            if "betas" in group:
                group["betas"] = (mom, group["betas"][1])
            elif "momentum" in group:
                group["momentum"] = mom
        # host floats for logging (training.callbacks.LearningRates): the groups' lr may be tensors
        self.host_lrs = [self.group_lr(lr, cycle, group) for group in self.optimizer.param_groups]
        return self.host_lrs


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


def even_mults(start: float, stop: float, n: int) -> list[float]:
    """fastai's even_mults: ``n`` values from ``start`` to ``stop``, evenly spaced in log."""
    if n == 1:
        return [stop]
    step = (stop / start) ** (1 / (n - 1))
    return [start * step**i for i in range(n)]


def check_freeze_epochs(freeze_epochs: int, epochs: int) -> None:
    """fine_tune trains at least one epoch frozen and one unfrozen (checks.py asks before the run)."""
    if not 0 < freeze_epochs < epochs:
        raise ConfigError(
            f"schedule.freeze_epochs={freeze_epochs}: the run has {epochs} epochs: "
            "freeze fewer, leaving at least one to train unfrozen"
        )


def pretrained_fine_tune(
    optimizer: Optimizer,
    phases: list[tuple[int, int]],
    base_lr: float = 2e-3,
    freeze_epochs: int = 1,
    lr_mult: float = 100.0,
    pct_start: float = 0.3,
    div: float = 5.0,
    div_final: float = 1e5,
    moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95),
) -> CycleSchedule:
    """fastai's ``Learner.fine_tune`` over the run's epochs, for a pretrained model: freeze()
    (every split but the classifier fixed, their norm layers trained), ``fit_one_cycle(
    freeze_epochs, slice(base_lr), pct_start=0.99)``, then base_lr halved, unfreeze() and
    ``fit_one_cycle(the other epochs, slice(base_lr / lr_mult, base_lr), pct_start, div)``.
    slice(b) gives the classifier b and every other split b/10; slice(a, b) spreads the splits
    from a to b (even_mults). freeze() and unfreeze() each start with fresh optimizer state.
    ``phases`` are (steps per epoch, epochs), as the run's resize phases give them."""
    per_epoch = [steps for steps, epochs in phases for _ in range(epochs)]
    check_freeze_epochs(freeze_epochs, len(per_epoch))
    splits = 1 + max(group.get("split", 0) for group in optimizer.param_groups)
    frozen = Cycle(
        sum(per_epoch[:freeze_epochs]),
        base_lr,
        25.0,
        div_final,
        0.99,
        True,
        [0.1] * (splits - 1) + [1.0],
        True,
    )
    unfrozen = Cycle(
        sum(per_epoch[freeze_epochs:]),
        base_lr / 2,
        div,
        div_final,
        pct_start,
        True,
        even_mults(1 / lr_mult, 1, splits),
    )
    return CycleSchedule(optimizer, [frozen, unfrozen], moms)

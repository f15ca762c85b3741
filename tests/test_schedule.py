"""fastai's one-cycle schedule and Adam, checked against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from lightning_sota.training.optim import adam
from lightning_sota.training.schedule import Cycle, CycleSchedule, fine_tune, one_cycle

from .conftest import config


def make(steps: int = 100, lr: float = 1e-2):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 5, 5))
    opt = adam(model, lr=lr)
    return model, opt, one_cycle(opt, [(steps // 2, 1), (steps - steps // 2, 1)], lr_max=lr)


def test_fastai_one_cycle_values():
    _, _, sched = make()
    lr, mom, _ = sched.values(0)
    assert lr == pytest.approx(1e-2 / 25) and mom == pytest.approx(0.95)
    lr, mom, _ = sched.values(25)  # end of warm-up (pct_start 0.25)
    assert lr == pytest.approx(1e-2) and mom == pytest.approx(0.85)
    # Half-way through the whole run: 1/3 of the way down the cosine.
    lr, mom, _ = sched.values(50)
    assert lr == pytest.approx(1e-7 + (1e-2 - 1e-7) * (1 + math.cos(math.pi / 3)) / 2)
    assert mom == pytest.approx(0.85 + 0.10 * (1 + math.cos(math.pi * 2 / 3)) / 2)
    # Warm-up is a cosine too: at 12.5% of the run, half-way from lr/25 to lr.
    assert sched.values(12)[0] < (4e-4 + 1e-2) / 2 < sched.values(13)[0]
    assert sched.values(100)[0] == pytest.approx(1e-7) and sched.values(100)[1] == pytest.approx(0.95)
    assert sched.total_steps == 100


def one_cycle_lr(step: int, steps: int, lr_max: float = 3e-3, pct: float = 0.25) -> float:
    """fit_one_cycle's lr at ``step`` of ``steps``, written out from fastai's SchedCos formula."""
    return _cos_phases(step / steps, (lr_max / 25, lr_max, lr_max / 1e5), pct)


def one_cycle_mom(step: int, steps: int, pct: float = 0.25) -> float:
    return _cos_phases(step / steps, (0.95, 0.85, 0.95), pct)


def _cos_phases(pos: float, values: tuple[float, float, float], pct: float) -> float:
    first, middle, last = values
    start, end, p = (first, middle, pos / pct) if pos < pct else (middle, last, (pos - pct) / (1 - pct))
    return start + (1 + math.cos(math.pi * (1 - p))) * (end - start) / 2


def test_scheduler_drives_the_optimizer_every_step():
    model, opt, sched = make(steps=40, lr=3e-3)
    for step in range(40):
        for group in opt.param_groups:
            assert group["lr"] == pytest.approx(one_cycle_lr(step, 40), rel=1e-9)
            assert group["betas"] == (pytest.approx(one_cycle_mom(step, 40), rel=1e-9), 0.99)
        opt.step()
        sched.step()


def test_cycles_chain():
    _, opt, _ = make()
    sched = CycleSchedule(opt, [Cycle(10, 1e-2, pct_start=0.99), Cycle(20, 5e-3, div=5)])
    assert sched.values(10)[0] == pytest.approx(5e-3 / 5)  # the second cycle starts over
    assert sched.total_steps == 30


def test_adam_is_fastais():
    """Decoupled weight decay on weights alone: none on norm layers or biases (fastai's
    wd_bn_bias=False); the norm layers' parameters flagged for freeze() (optim._groups)."""
    model, opt, _ = make()
    for group in opt.param_groups:
        assert group["weight_decay"] == (0.01 if all(p.ndim > 1 for p in group["params"]) else 0.0)
    norm = {id(p) for group in opt.param_groups if group["norm"] for p in group["params"]}
    assert norm == {id(p) for p in model[1].parameters()}
    assert sum(len(group["params"]) for group in opt.param_groups) == len(list(model.parameters()))
    assert opt.defaults["eps"] == 1e-5 and isinstance(opt, torch.optim.AdamW)


@pytest.mark.parametrize("optim", ["adam", "ranger"])
def test_fine_tune_clears_adams_state_where_fastai_does(optim):
    """fastai's progressive run: fit_one_cycle, then fine_tune, whose freeze() and unfreeze()
    each clear the optimizer state. Adam's step count (its bias correction) therefore runs
    1..7 over the small phase, then 1..5 over the pct_start=0.99 epoch, then 1..10; ranger's
    RAdam state lives inside its Lookahead wrapper and is cleared there."""
    model = nn.Linear(3, 2)
    opt = instantiate(config(f"optim={optim}", "scale.lr=1e-2").optim)(model)
    sched = fine_tune(opt, [(7, 1), (5, 3)], lr_max=1e-2)
    state = getattr(opt, "_base_optimizer", opt).state
    counts, moments = [], []
    for _ in range(7 + 5 + 10):
        model(torch.randn(4, 3)).square().mean().backward()
        opt.step()
        opt.zero_grad()
        counts.append(int(state[model.weight]["step"]))
        moments.append(state[model.weight]["exp_avg"].abs().sum().item())
        sched.step()
    assert counts == [*range(1, 8), *range(1, 6), *range(1, 11)]
    # A fresh first moment is (1 - beta1) * grad: much smaller than one that has accumulated.
    assert moments[7] < moments[6] and moments[12] < moments[11]

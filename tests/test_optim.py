"""conf/optim/*: the optimizers a user names, built as train.py builds them, against fastai's."""

from __future__ import annotations

import io

import pytest
import torch
from hydra.utils import instantiate
from timm.optim import Lookahead
from torch import nn

from .conftest import config

# fastai is the bench extra, which make test installs; an environment without it skips these
fastai_optimizer = pytest.importorskip("fastai.optimizer")


def _model() -> nn.Module:
    torch.manual_seed(0)  # weights only: every parameter gets weight decay in both
    return nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh(), nn.Linear(8, 3, bias=False))


def _trajectory(model: nn.Module, opt, steps: int, skip: int = 0) -> list[torch.Tensor]:
    """The weights after each of ``steps`` steps on the same fixed batches, from batch ``skip``."""
    out, gen = [], torch.Generator().manual_seed(1)
    torch.randn(skip, 16, 4, generator=gen)  # the batches a resumed run has already seen
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
    return out


def test_ranger_steps_as_fastais_for_one_lookahead_period():
    """conf/optim/ranger.yaml against fastai's ranger with its defaults (mom 0.95, sqr_mom 0.99,
    eps 1e-6, wd 0.01 decoupled, k 6, alpha 0.5) over steps 1-5: RAdam's unadapted momentum
    steps (rho_t <= 5), done outside the fused kernel."""
    ours, theirs = _model(), _model()
    opt = instantiate(config("optim=ranger", "scale.lr=1e-2").optim)(ours)
    fastai = fastai_optimizer.ranger(list(theirs.parameters()), lr=1e-2)
    for a, b in zip(_trajectory(ours, opt, 5), _trajectory(theirs, fastai, 5), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_fused_radam_steps_as_fastais_radam():
    """The RAdam inside ranger, through torch's fused Adam kernel with lr * r_t and wd / r_t,
    against fastai's RAdam over 40 steps: the rectified steps from 6 on. fastai adds eps after
    the bias correction, as Adam does: within fp32 rounding (6e-8 measured). torch's own RAdam
    adds it before and drifts by 1.5e-5 here. Lookahead is left out: timm's first sync (step 6)
    is a no-op, fastai's pulls halfway back to the initial weights."""
    ours, theirs = _model(), _model()
    opt = instantiate(config("optim=ranger", "scale.lr=1e-2").optim)(ours)._base_optimizer
    fastai = fastai_optimizer.RAdam(list(theirs.parameters()), lr=1e-2, mom=0.95, eps=1e-6, wd=0.01)
    for a, b in zip(_trajectory(ours, opt, 40), _trajectory(theirs, fastai, 40), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("host_counts", [False, True], ids=["today", "host_step_counts"])
def test_ranger_resumes_from_a_saved_state_as_if_never_stopped(host_counts):
    """A checkpoint mid-run (step counts, moments, Lookahead's slow weights and its count) loads
    with weights_only into a fresh ranger and continues on the same trajectory; so does one saved
    before the step counts and lr moved to the device (ints and floats, as earlier runs saved them)."""
    whole, resumed = _model(), _model()
    build = instantiate(config("optim=ranger", "scale.lr=1e-2").optim)
    expected = _trajectory(whole, build(whole), 16)[-1]
    opt = build(resumed)
    _trajectory(resumed, opt, 9)
    state = opt.state_dict()
    if host_counts:
        for s in state["state"].values():
            s["step"] = int(s["step"])
        for g in state["param_groups"]:
            g["lr"] = float(g["lr"])
    saved = io.BytesIO()
    torch.save({"model": resumed.state_dict(), "opt": state}, saved)
    saved.seek(0)
    checkpoint = torch.load(saved, weights_only=True)
    fresh = _model()
    fresh.load_state_dict(checkpoint["model"])
    opt = build(fresh)
    opt.load_state_dict(checkpoint["opt"])
    torch.testing.assert_close(_trajectory(fresh, opt, 7, skip=9)[-1], expected)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_configs_step_as_fastais_adam(name):
    """fastai's Adam (mom 0.9, sqr_mom 0.99, eps 1e-5, wd 0.01 decoupled): ours fused, timm's."""
    ours, theirs = _model(), _model()
    opt = instantiate(config(f"optim={name}", "scale.lr=1e-2").optim)(ours)
    fastai = fastai_optimizer.Adam(list(theirs.parameters()), lr=1e-2, wd=0.01)
    for a, b in zip(_trajectory(ours, opt, 8), _trajectory(theirs, fastai, 8), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ranger", "adamw", "lamb", "sgd"])
def test_optimizers_keep_norm_and_bias_out_of_weight_decay(name):
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    opt = instantiate(config(f"optim={name}").optim)(model)
    decay = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    assert decay == {id(model[0].weight)}
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    opt.step()
    saved = io.BytesIO()
    torch.save(opt.state_dict(), saved)
    saved.seek(0)
    torch.load(saved, weights_only=True)  # plain containers: a checkpoint with it resumes


def test_foreach_lookahead_steps_exactly_as_timms():
    """ranger's Lookahead (three foreach ops a group every k-th step) against timm's Lookahead
    (three ops a parameter) over the same RAdam, through three slow-weight updates: equal to
    the bit."""
    ours, theirs = _model(), _model()
    opt = instantiate(config("optim=ranger", "scale.lr=1e-2").optim)(ours)
    base = type(opt._base_optimizer)(
        [{**g, "params": list(theirs.parameters())} for g in opt._base_optimizer.param_groups if g["params"]]
    )
    timms = Lookahead(base, alpha=0.5, k=6)
    for a, b in zip(_trajectory(ours, opt, 19), _trajectory(theirs, timms, 19), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)

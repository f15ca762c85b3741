"""conf/optim/*: the optimizers a user names, built as train.py builds them, against fastai's."""

from __future__ import annotations

import io

import fastai.optimizer as fastai_optimizer  # the bench extra: make test installs it
import pytest
import torch
from hydra.utils import instantiate
from torch import nn

from .conftest import config


def _model() -> nn.Module:
    torch.manual_seed(0)  # weights only: every parameter gets weight decay in both
    return nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh(), nn.Linear(8, 3, bias=False))


def _trajectory(model: nn.Module, opt, steps: int) -> list[torch.Tensor]:
    """The weights after each of ``steps`` steps on the same fixed batches."""
    out, gen = [], torch.Generator().manual_seed(1)
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
        out.append(torch.cat([p.detach().flatten() for p in model.parameters()]).clone())
    return out


@pytest.mark.parametrize("steps", [5, 12])
def test_ranger_steps_as_fastais(steps):
    """conf/optim/ranger.yaml (timm's lookahead_radamw) against fastai's ranger with its
    defaults (mom 0.95, sqr_mom 0.99, eps 1e-6, wd 0.01 decoupled, k 6, alpha 0.5). Steps 1-5
    are RAdam's unadapted steps; from step 6 the rectified adaptive one. Lookahead differs at
    its first sync: fastai's slow weights are the initial ones, timm's the weights at step 6
    (a no-op sync), so over 12 steps only the RAdam inside is compared. torch adds eps to
    sqrt(v) before the bias correction, fastai after: 1e-5 absolute on steps of about 1e-2."""
    ours, theirs = _model(), _model()
    opt = instantiate(config("optim=ranger", "scale.lr=1e-2").optim)(ours)
    if steps > 5:
        opt, fastai = (
            opt._base_optimizer,
            fastai_optimizer.RAdam(list(theirs.parameters()), lr=1e-2, mom=0.95, eps=1e-6, wd=0.01),
        )
    else:
        fastai = fastai_optimizer.ranger(list(theirs.parameters()), lr=1e-2)
    for a, b in zip(_trajectory(ours, opt, steps), _trajectory(theirs, fastai, steps), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["adam", "adamw"])
def test_adam_configs_step_as_fastais_adam(name):
    """fastai's Adam (mom 0.9, sqr_mom 0.99, eps 1e-5, wd 0.01 decoupled): ours fused, timm's."""
    ours, theirs = _model(), _model()
    opt = instantiate(config(f"optim={name}", "scale.lr=1e-2").optim)(ours)
    fastai = fastai_optimizer.Adam(list(theirs.parameters()), lr=1e-2, wd=0.01)
    for a, b in zip(_trajectory(ours, opt, 8), _trajectory(theirs, fastai, 8), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["ranger", "adamw", "lamb", "sgd"])
def test_timm_optimizers_keep_norm_and_bias_out_of_weight_decay(name):
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

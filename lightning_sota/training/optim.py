"""fastai's optimizers with fused updates: Adam (AdamW) and ranger (Lookahead over RAdamW).

Norm weights and biases get no weight decay in both (fastai's ``wd_bn_bias=False``)."""

from __future__ import annotations

import math

import torch
from timm.optim import Lookahead
from torch import nn
from torch.optim.adam import adam as adam_update

from lightning_sota.models.xresnet import param_splits

NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def _groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """fastai's parameter groups (models.param_splits: stem / body / classifier of a ResNet),
    each cut by what weight decay applies to (weights of more than one dimension outside norm
    layers: fastai's ``wd_bn_bias=False``). ``split`` is the group's place for discriminative
    learning rates; ``norm``: a norm layer's parameters, which fastai's freeze() leaves trainable."""
    norms = {id(p) for m in model.modules() if isinstance(m, NORMS) for p in m.parameters(recurse=False)}
    groups = []
    for split, params in enumerate(param_splits(model)):
        for norm in (False, True):
            for decay in (True, False):
                members = [
                    p
                    for p in params
                    if p.requires_grad and (id(p) in norms) == norm and (p.ndim > 1 and not norm) == decay
                ]
                if members:
                    wd = weight_decay if decay else 0.0
                    groups.append({"params": members, "weight_decay": wd, "split": split, "norm": norm})
    return groups


def adam(
    model: nn.Module,
    lr: float = 3e-3,
    betas: tuple[float, float] = (0.9, 0.99),
    eps: float = 1e-5,
    weight_decay: float = 0.01,
    fused: bool = True,
) -> torch.optim.AdamW:
    """AdamW is fastai's Adam with ``decouple_wd=True``. ``fused``: one kernel for the whole
    update (CPU and CUDA), faster than foreach (benchmarks/RESULTS.md)."""
    return torch.optim.AdamW(_groups(model, weight_decay), lr=lr, betas=tuple(betas), eps=eps, fused=fused)


class FusedRAdamW(torch.optim.Optimizer):
    """fastai's RAdam (``decouple_wd=True``) through torch's fused Adam kernel.

    Written by hand because neither torch nor timm has a fused RAdam, and timm's foreach ranger
    updates several times slower (benchmarks/RESULTS.md). Once rho_t > 5, RAdam's step is Adam's
    with the step size scaled by r_t, so the fused kernel runs with lr * r_t and weight decay
    wd / r_t (the decay stays lr * wd), and fastai's denominator sqrt(v / debias2) + eps is Adam's
    exactly. The first steps (rho_t <= 5: five with beta2 0.99) are momentum SGD, done per tensor.
    The step count is a Python int per parameter so that r_t never reads the device (no host sync
    on CUDA)."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            # Parameters whose state was cleared (fastai's clear_state) count from 0 again.
            by_step: dict[tuple[int, torch.device], list[torch.Tensor]] = {}
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state.update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
                by_step.setdefault((state["step"], p.device), []).append(p)
            for (done, device), params in by_step.items():
                self._update(group, params, done + 1, device)
        return loss

    def _update(self, group: dict, params: list[torch.Tensor], step: int, device: torch.device) -> None:
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        states = [self.state[p] for p in params]
        rho_inf = 2 / (1 - beta2) - 1
        rho = rho_inf - 2 * step * beta2**step / (1 - beta2**step)
        if rho > 5:
            r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
            # the kernel adds 1 to each step count it is given, then bias-corrects with it
            counts = torch.full((len(params),), float(step - 1), device=device).unbind()
            adam_update(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                list(counts),
                fused=True,
                decoupled_weight_decay=True,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=lr * r,
                weight_decay=wd / r,
                eps=eps,
                maximize=False,
            )
        else:
            for p, s in zip(params, states, strict=True):
                p.mul_(1 - lr * wd)
                s["exp_avg"].lerp_(p.grad, 1 - beta1)
                s["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                p.add_(s["exp_avg"], alpha=-lr / (1 - beta1**step))
        for s in states:
            s["step"] = step


def ranger(
    model: nn.Module,
    lr: float = 8e-3,
    betas: tuple[float, float] = (0.95, 0.99),
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    alpha: float = 0.5,
    k: int = 6,
) -> Lookahead:
    """fastai's ranger: timm's Lookahead(k, alpha) over fastai's RAdamW, fused."""
    return Lookahead(FusedRAdamW(_groups(model, weight_decay), lr=lr, betas=betas, eps=eps), alpha=alpha, k=k)

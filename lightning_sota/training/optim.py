"""fastai's optimizers with fused updates: Adam (AdamW) and ranger (Lookahead over RAdamW).

Norm weights and biases get no weight decay in both (fastai's ``wd_bn_bias=False``)."""

from __future__ import annotations

import torch
from timm.optim import Lookahead as TimmLookahead
from torch import nn

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
    """fastai's RAdam (``decouple_wd=True``) through torch's fused Adam kernel, every per-step
    number on the device so that the step can be captured in a CUDA graph.

    Written by hand because neither torch nor timm has a fused RAdam, and timm's foreach ranger
    updates several times slower (benchmarks/RESULTS.md). Once rho_t > 5, RAdam's step is Adam's
    with the step size scaled by r_t, and fastai's denominator sqrt(v / debias2) + eps is Adam's
    exactly: the fused kernel runs with the tensor lr * r_t (r_t computed on the device from the
    step count) after the decoupled decay, p *= 1 - lr * wd, as one foreach op with a tensor
    factor (the kernel takes weight decay as a host float, which would change every step). The
    learning rate is a tensor the schedule fills between steps (torch's LRScheduler does for a
    tensor lr), and the step counts are device tensors, so no op of the step takes a host
    number that changes (benchmarks/host_overhead.py). A host count per group, never read from
    the device, says when rho_t > 5: the first steps (five with beta2 0.99) are momentum SGD,
    done per tensor. ``host_step`` keeps that count; a captured step (training/graphs.py) sets
    ``defer_host`` and calls it after each step, replay or not: a replay runs no Python."""

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.99),
        eps: float = 1e-5,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self._lists: dict[int, tuple] = {}  # per group: its parameters' state, as the kernel takes it
        self._stepped: list[list[int]] = []  # the host counts of the groups the last step moved
        self.defer_host = False

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rectifiers: dict[tuple[int, float], torch.Tensor] = {}  # groups at the same step share r_t
        self._stepped = []
        for i, group in enumerate(self.param_groups):
            params, grads = group["params"], [p.grad for p in group["params"]]
            if any(g is None for g in grads):  # not trained this step (frozen, unused)
                params = [p for p, g in zip(params, grads, strict=True) if g is not None]
                grads = [g for g in grads if g is not None]
                if not params:
                    continue
            lists = self._lists.get(i)
            if lists is None or not self._current(lists, params):
                lists = self._state_lists(i, group, params)
            self._update(group, lists, grads, rectifiers)
            self._stepped.append(lists[4])
        if not self.defer_host:
            self.host_step()
        return loss

    def host_step(self) -> None:
        """The host's side of the last step: its groups' counts move on."""
        for count in self._stepped:
            count[0] += 1

    def settled(self) -> bool:
        """Whether every group's next step is the fused one (rho_t > 5), as every later step is:
        the step a graph may capture. False before the first step."""
        return bool(self._lists) and all(
            self._fused(lists[4][0] + 1, group["betas"][1])
            for i, group in enumerate(self.param_groups)
            if (lists := self._lists.get(i)) is not None
        )

    def unchanged(self) -> bool:
        """Whether every group's state is still the one its lists were made from: what a
        captured step reads."""
        return all(self._fresh(lists) for lists in self._lists.values())

    def _fresh(self, lists: tuple) -> bool:
        """Whether the state ``lists`` were made from is still the state (not cleared by fastai's
        clear_state, not loaded from a checkpoint): one look at the first parameter's."""
        return self.state.get(lists[0][0], {}).get("exp_avg") is lists[1][0]

    @staticmethod
    def _fused(t: int, beta2: float) -> bool:
        """RAdam's rho_t > 5 at step ``t``: the rectified (fused Adam) step, not momentum SGD."""
        rho_inf = 2 / (1 - beta2) - 1
        return rho_inf - 2 * t * beta2**t / (1 - beta2**t) > 5

    def _current(self, lists: tuple, params: list[torch.Tensor]) -> bool:
        """Whether the cached lists are ``params``' and still fresh."""
        cached = lists[0]
        same = cached is params or (
            len(cached) == len(params) and all(a is b for a, b in zip(cached, params, strict=True))
        )
        return same and self._fresh(lists)

    def _state_lists(self, i: int, group: dict, params: list[torch.Tensor]) -> tuple:
        """The group's (params, moments, squared moments, step count, host count), made again
        when its trained parameters or their state change. The group's parameters share one step
        count (a device tensor), which the fused kernel reads once per parameter."""
        device = params[0].device
        if not isinstance(group["lr"], torch.Tensor) or group["lr"].device != device:
            group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)
        for p in params:
            if "exp_avg" not in self.state[p]:
                self.state[p].update(step=0, exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        states = [self.state[p] for p in params]
        counts = {int(s["step"]) for s in states}  # a read once per rebuild, never per step
        if len(counts) > 1:  # a parameter frozen for a while: r_t is one per group
            raise ValueError(f"parameter group {i}: its parameters have taken different step counts {counts}")
        count = counts.pop()
        shared = torch.tensor(float(count), dtype=torch.float32, device=device)
        for s in states:
            s["step"] = shared
        self._lists[i] = cached = (params, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                                   shared, [count])  # fmt: skip
        return cached

    def _update(self, group: dict, lists: tuple, grads: list[torch.Tensor], rectifiers: dict) -> None:
        params, exp_avgs, exp_avg_sqs, step, host = lists
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        t = host[0] + 1  # this step's number: host_step counts it after
        step.add_(1)
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        rho_inf = 2 / (1 - beta2) - 1
        if self._fused(t, beta2):
            r = rectifiers.get((t, beta2))
            if r is None:
                beta2_t = torch.pow(beta2, step)
                rho = rho_inf - 2 * step * beta2_t / (1 - beta2_t)
                r = ((rho - 4) * (rho - 2) * (rho_inf / ((rho_inf - 4) * (rho_inf - 2))) / rho).sqrt()
                rectifiers[t, beta2] = r
            torch._fused_adamw_(
                params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params),
                lr=lr * r, beta1=beta1, beta2=beta2, weight_decay=0.0, eps=eps, amsgrad=False, maximize=False,
            )  # fmt: skip
        else:
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1 - beta2)
            torch._foreach_add_(params, torch._foreach_mul(exp_avgs, -lr / (1 - beta1**t)))


class Lookahead(TimmLookahead):
    """timm's Lookahead (its state, checkpoints and name in the lr logs unchanged) with the
    slow-weight update of every k-th step as three foreach ops per group instead of three ops
    per parameter, with fastai's arithmetic: slow += alpha * (fast - slow); fast = slow. Its
    count and k-th update are ``host_step``'s, as FusedRAdamW's count: outside a captured step,
    which replays its base optimizer's update only."""

    @property
    def defer_host(self) -> bool:
        return self._base_optimizer.defer_host

    @defer_host.setter
    def defer_host(self, value: bool) -> None:
        self._base_optimizer.defer_host = value

    @torch.no_grad()
    def step(self, closure=None):
        loss = self._base_optimizer.step(closure)
        if not self.defer_host:
            self._lookahead()
        return loss

    def host_step(self) -> None:
        self._base_optimizer.host_step()
        self._lookahead()

    def _lookahead(self) -> None:
        for group in self._base_optimizer.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self.update_slow(group)

    def settled(self) -> bool:
        return self._base_optimizer.settled()

    def unchanged(self) -> bool:
        return self._base_optimizer.unchanged()

    @torch.no_grad()
    def update_slow(self, group: dict) -> None:
        fast = [p for p in group["params"] if p.grad is not None]
        state = self._base_optimizer.state
        for p in fast:
            if "lookahead_slow_buff" not in state[p]:
                state[p]["lookahead_slow_buff"] = p.detach().clone()
        slow = [state[p]["lookahead_slow_buff"] for p in fast]
        torch._foreach_add_(slow, torch._foreach_sub(fast, slow), alpha=group["lookahead_alpha"])
        torch._foreach_copy_(fast, slow)


def ranger(
    model: nn.Module,
    lr: float = 8e-3,
    betas: tuple[float, float] = (0.95, 0.99),
    eps: float = 1e-6,
    weight_decay: float = 0.01,
    alpha: float = 0.5,
    k: int = 6,
) -> Lookahead:
    """fastai's ranger: Lookahead(k, alpha) over fastai's RAdamW, fused."""
    return Lookahead(FusedRAdamW(_groups(model, weight_decay), lr=lr, betas=betas, eps=eps), alpha=alpha, k=k)

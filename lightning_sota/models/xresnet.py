"""fastai's xresnet family, built on timm.

timm's ``resnet*d`` is xresnet's topology (deep 32-32-64 stem, average-pool shortcut
downsampling, zero-initialised last BatchNorm of each block), and ``resnext50d_32x4d`` is
xresnext50's; only the initialisation differs, so we apply fastai's: kaiming_normal (fan_in) on
every conv and linear, biases zero. fastai's ``xse_`` variants add squeeze-excitation to each
block (layers.fastai_se), ``act`` swaps the activation everywhere, ``sa`` adds fastai's
self-attention. Any other timm architecture name is passed through unchanged. ``pretrained``
starts from given weights instead (weights.py), and then nothing is re-initialised.
"""

from __future__ import annotations

from functools import partial

import timm
import torch
from timm.layers import BlurPool2d, get_act_layer
from torch import nn

from lightning_sota.errors import ConfigError
from lightning_sota.models.layers import MaxBlurPool, SimpleSelfAttention, fastai_se
from lightning_sota.models.weights import XRESNETS, check_pretrained, from_timm, load_pretrained


def add_self_attention(model: nn.Module, arch: str) -> None:
    """fastai's ``sa=True``: SimpleSelfAttention in the last block of the first stage, inside its
    residual branch after squeeze-excitation, before the addition (timm calls ``block.se`` there)."""
    block = model.layer1[-1] if hasattr(model, "layer1") else None
    if not hasattr(block, "se"):
        raise ConfigError(f"model.sa=true: {arch} is not a timm ResNet: set model.sa=false")
    channels = (block.bn3 if hasattr(block, "bn3") else block.bn2).num_features  # the block's output
    attention = SimpleSelfAttention(channels)
    block.se = attention if block.se is None else nn.Sequential(block.se, attention)


POOLS = ("avg", "max", "max_blur")


def set_pool(model: nn.Module, pool: str, arch: str) -> None:
    """fastai's ``XResNet(pool=)``: the pooling before each strided block's shortcut conv. ``avg``
    (fastai's default, timm's ``avg_down``), ``max`` (``MaxPool``: 2x2, ceil mode), or
    ``max_blur``: max, then every max pool, the stem's included, made ``MaxBlurPool``, as the
    leaderboard row's notebook converts fastai's ``xse_resnext50(pool=MaxPool)``."""
    if pool not in POOLS:
        raise ConfigError(f"model.pool={pool!r}: use avg, max or max_blur")
    if pool == "avg":
        return
    shortcuts = [
        block.downsample
        for stage in (getattr(model, f"layer{i}", ()) for i in range(1, 5))
        for block in stage
        if block.downsample is not None and isinstance(block.downsample[0], nn.AvgPool2d)
    ]
    if not shortcuts or not isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        raise ConfigError(
            f"model.pool={pool}: {arch} has no average-pool shortcuts to replace "
            "(fastai's xresnets do): set model.pool=avg"
        )
    for shortcut in shortcuts:
        shortcut[0] = MaxBlurPool() if pool == "max_blur" else nn.MaxPool2d(2, ceil_mode=True)
    if pool == "max_blur":
        model.maxpool = MaxBlurPool()


def fastai_init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model  # BatchNorms keep timm's init: 1/0, and 0 for each block's last (zero_init_last)


def param_splits(model: nn.Module) -> list[list[nn.Parameter]]:
    """fastai's splitter, for discriminative learning rates and freeze(): a ResNet's stem /
    body / classifier (fastai's ``_xresnet_split`` on timm's names: [conv1, bn1] / [maxpool,
    layer1-4] / [fc]); any other model's body / classifier."""
    if all(hasattr(model, name) for name in ("conv1", "bn1", "layer4", "fc")):
        stem = [*model.conv1.parameters(), *model.bn1.parameters()]
        head = list(model.fc.parameters())
        taken = {id(p) for p in (*stem, *head)}
        return [stem, [p for p in model.parameters() if id(p) not in taken], head]
    head = list(model.get_classifier().parameters()) if hasattr(model, "get_classifier") else []
    taken = {id(p) for p in head}
    return (
        [[p for p in model.parameters() if id(p) not in taken], head] if head else [list(model.parameters())]
    )


def activation(act: str | None) -> type[nn.Module] | None:
    if act is None:
        return None
    try:
        return get_act_layer(act)
    except KeyError:
        raise ConfigError(
            f"model.act={act}: not an activation timm knows: use relu, mish, silu, gelu, ..."
        ) from None


def se_base(arch: str) -> str | None:
    """The xresnet an ``xse_`` name adds squeeze-excitation to (xse_resnext50 -> xresnext50)."""
    base = "x" + arch.removeprefix("xse_")
    return base if arch.startswith("xse_") and base in XRESNETS else None


def initialised(arch: str, num_classes: int, widen: float, **kwargs) -> nn.Module:
    """A new model: an xresnet with fastai's init, or any timm model with timm's."""
    base = se_base(arch)
    if base:
        kwargs["block_args"] = {
            "attn_layer": partial(fastai_se, act_layer=kwargs.get("act_layer") or nn.ReLU)
        }
        arch = base
    if arch in XRESNETS:
        return fastai_init(timm.create_model(XRESNETS[arch], num_classes=num_classes, **kwargs))
    try:
        return timm.create_model(arch, num_classes=num_classes, **kwargs)
    except RuntimeError as err:  # timm: "Unknown model (...)"
        raise ConfigError(
            f"unknown model.arch={arch!r}: use one of {sorted(XRESNETS)} or a "
            "timm model name (timm.list_models())"
        ) from err
    except TypeError as err:  # a constructor without ``channels``: not a ResNet
        if widen == 1:
            raise
        raise ConfigError(f"model.widen={widen}: {arch} is not a timm ResNet: set model.widen=1") from err


def create_model(
    arch: str = "xresnet50",
    num_classes: int = 10,
    channels_last: bool = True,
    compile: bool | str = False,
    widen: float = 1.0,
    blur_pool: bool = False,
    pool: str = "avg",
    act: str | None = None,
    sa: bool = False,
    pretrained: bool | str = False,
    **kwargs,
) -> nn.Module:
    """``arch``: an xresnet name (timm's resnet*d with fastai's init) or any timm model name.
    ``compile``: true, or a ``torch.compile`` mode ("reduce-overhead", "max-autotune").
    ``widen``: fastai's ``XResNet(widen=)``, each stage's width times it, the stem unchanged;
    any timm ResNet takes it (as its ``channels``), other architectures refuse it.
    ``blur_pool``: the Imagenette leaderboard's MaxBlurPool stem (Zhang 2019, anti-aliased
    downsampling): the stem's max pool at stride 1, then timm's BlurPool2d at stride 2, as timm's
    own ``aa_layer`` builds the stem. Only the stem: timm's ``aa_layer`` also blurs every strided
    block, at a much larger cost per step (benchmarks/RESULTS.md); any timm ResNet takes it.
    ``pool``: the shortcuts' pooling, fastai's ``pool`` (``set_pool``: avg, max or max_blur, the
    leaderboard row's); any timm ResNet with average-pool shortcuts (the xresnets) takes it.
    ``act``: the activation everywhere, squeeze-excitation included (timm's name: relu, mish,
    ...); None keeps the architecture's own (ReLU for the xresnets).
    ``sa``: fastai's SimpleSelfAttention where fastai's ``XResNet(sa=True)`` puts it; any timm
    ResNet takes it.
    ``pretrained``: true (timm's ImageNet weights) or a weights file, run folder or checkpoint.
    The model is plain timm/torch: CPU-only speed-ups are applied by the caller for CPU runs
    (lightning_sota/cpu/)."""
    check_pretrained(arch, pretrained, widen, act, sa)
    if act is not None:
        kwargs["act_layer"] = activation(act)
    if widen != 1:
        kwargs["channels"] = tuple(int(c * widen) for c in (64, 128, 256, 512))
        if min(kwargs["channels"]) < 1:
            raise ConfigError(f"model.widen={widen}: leaves a stage without channels: use at least 1/64")
    if pretrained is True:
        model = from_timm(arch, num_classes, **kwargs)
    else:
        model = initialised(arch, num_classes, widen, **kwargs)
    if blur_pool and pool == "max_blur":
        raise ConfigError(
            "model.blur_pool=true with model.pool=max_blur: max_blur already makes the stem's max pool "
            "a MaxBlurPool: set model.blur_pool=false"
        )
    set_pool(model, pool, arch)
    if blur_pool:
        if not isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
            raise ConfigError(f"model.blur_pool=true: {arch} has no max-pool stem: set model.blur_pool=false")
        width = model.bn1.num_features
        model.maxpool = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), BlurPool2d(width, stride=2))
    if sa:
        add_self_attention(model, arch)
    if pretrained and pretrained is not True:  # after the init: the file's tensors are kept as they are
        load_pretrained(model, str(pretrained), arch)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        # In place (nn.Module.compile), not torch.compile(model): the state_dict keeps its keys,
        # so checkpoints, resume, evaluate and export read a compiled run like any other.
        model.compile(mode=None if compile is True else compile)
    return model

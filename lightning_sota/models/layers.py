"""The pieces of the Imagenette leaderboard row's network that timm does not build as it does.

timm's ResNet takes squeeze-excitation through ``block_args.attn_layer``, but its SE keeps ReLU
inside whatever the network's activation and rounds its width to the nearest multiple of 8;
fastai's ``SEModule`` uses the network's activation and rounds up. timm has no
``SimpleSelfAttention`` at all, and its ``BlurPool2d`` is not the row's MaxBlurPool (kornia's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import SEModule
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def fastai_se(channels: int, act_layer: type[nn.Module] = nn.ReLU, **kwargs) -> SEModule:
    """fastai's ``SEModule(ch, reduction=16, act_cls)`` as timm's SEModule: the same two biased
    1x1 convs and sigmoid gate, the hidden width ``ceil(ch // 16 / 8) * 8``, and the network's
    activation between them. ``kwargs``: timm's device/dtype."""
    return SEModule(channels, rd_channels=math.ceil(channels // 16 / 8) * 8, act_layer=act_layer, **kwargs)


class SimpleSelfAttention(nn.Module):
    """fastai's ``SimpleSelfAttention(n_in, ks=1, sym=False)``: ``gamma * (x xᵀ) W x + x`` over the
    flattened positions, W a 1x1 Conv1d under spectral normalisation, gamma starting at 0 (the
    block starts as it would be without it).

    The spectral norm is torch's maintained parametrization, not the deprecated hook fastai
    uses: that one keeps a non-leaf ``weight`` tensor on the module, which ``copy.deepcopy``
    (weight averaging) refuses after the first training step. Their ``u``/``v`` power iterations
    run in the opposite order, so in training the two estimates of the largest singular value
    agree to the iteration's convergence; in eval, from the same u and v, exactly."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        conv = nn.Conv1d(channels, channels, 1, bias=False)
        nn.init.kaiming_normal_(conv.weight)  # fastai's _conv1d_spect
        self.conv = spectral_norm(conv)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(2)  # (N, C, H*W); a view for contiguous and channels_last inputs alike
        attended = torch.bmm(torch.bmm(flat, flat.transpose(1, 2)), self.conv(flat))
        return (self.gamma * attended + flat).reshape(x.shape)


class MaxBlurPool(nn.Module):
    """The leaderboard row's MaxBlurPool: kornia 0.4's ``MaxBlurPool2d(3, ceil_mode=True)``, which
    its notebook puts in place of every max pool of fastai's xse_resnext50. A 3x3 max at stride 1,
    then kornia's ``pyrdown``: the 5x5 binomial blur ([1, 4, 6, 4, 1] / 16 each way) with
    reflected edges and a bilinear resize to half the size (floored). timm's ``BlurPool2d`` (the
    ``model.blur_pool`` stem) is a 3-tap blur at stride 2 instead: another filter. No parameters,
    so a state_dict is the same with or without it."""

    def __init__(self) -> None:
        super().__init__()
        taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
        self.register_buffer("kernel", torch.outer(taps, taps).view(1, 1, 5, 5), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(x, 3, stride=1, padding=1, ceil_mode=True)
        channels, (h, w) = x.shape[1], x.shape[2:]
        kernel = self.kernel.to(x.dtype).expand(channels, 1, 5, 5)
        # A side of 2 or less cannot be reflected by 2 (kornia fails there; only inputs under
        # 64 px reach it, scale=smoke's): the edge is repeated instead.
        edge = "reflect" if min(h, w) > 2 else "replicate"
        x = F.conv2d(F.pad(x, (2, 2, 2, 2), mode=edge), kernel, groups=channels)
        return F.interpolate(x, size=(h // 2, w // 2), mode="bilinear", align_corners=False)

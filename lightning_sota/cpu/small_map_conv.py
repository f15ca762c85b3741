"""3x3 convolutions whose output map is at most 2x2, as one small GEMM per pair of positions.

On a 2x2 map a padded 3x3 window around any position covers every position, so the convolution is
    y[p] = sum over input positions q of  x[q] @ W[:, :, q - p + (1, 1)].T
16 products of (batch x C) by (C x O). oneDNN's convolution multiplies all 9 taps at each of the 4
positions (36, 20 of them against the zero padding) and its backward is slow at this shape. The
same holds for the stride-2 convolution that enters the stage (4x4 or 3x3 in, 2x2 out: 36 or 25
pairs). xresnet's last stage is on 2x2 maps at 48-64 px, the quick scale's sizes. Written by hand
because no library has it: torch routes every 3x3 convolution to oneDNN on a CPU. One GEMM per tap
(the pairs gathered by index) and one dense GEMM per pass were both measured slower than the pairs;
``benchmarks/small_map_conv.py`` times it against oneDNN (figures: benchmarks/RESULTS.md).

Numerics: each product is rounded to the input dtype by the GEMM, and the sums over positions add
up in fp32 (fp64 for fp64) and round once. Under bf16 that is a few roundings where oneDNN rounds
once, a bf16 rounding of an fp32 sum either way; tests/test_small_map_conv.py bounds the mean
error against an fp64 convolution at 1.75x oneDNN's own for the output and the input's gradient.
The weight's gradient is one GEMM per tap over every pair that uses it, rounded once.
"""

from __future__ import annotations

from functools import cache

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

MAX_SIDE = 2  # the output map's: at 3x3 and beyond the pairs' GEMMs are too small to beat oneDNN


def out_side(side: int, stride: int) -> int:
    """A 3x3 convolution's output side, padding 1."""
    return (side - 1) // stride + 1


@cache
def _pairs(h: int, w: int, stride: int) -> tuple[tuple[int, int, int, int], ...]:
    """(output position, input position, tap row, tap column) for every output position and
    every input position its window covers, on an h x w input map."""
    ho, wo = out_side(h, stride), out_side(w, stride)
    return tuple(
        (py * wo + px, qy * w + qx, ky, kx)
        for py in range(ho)
        for px in range(wo)
        for ky in range(3)
        for kx in range(3)
        if 0 <= (qy := stride * py + ky - 1) < h and 0 <= (qx := stride * px + kx - 1) < w
    )


@cache
def _taps(h: int, w: int, stride: int) -> dict[tuple[int, int], tuple[list[int], list[int]]]:
    """Each tap in use -> (its output positions, its input positions), pair by pair."""
    taps: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    for p, q, ky, kx in _pairs(h, w, stride):
        ps, qs = taps.setdefault((ky, kx), ([], []))
        ps.append(p)
        qs.append(q)
    return taps


def _sum_dtype(x: Tensor) -> torch.dtype:
    """Where the products add up: fp32 for bf16 and fp16 operands, else their own."""
    return torch.promote_types(x.dtype, torch.float32)


class _PairGemm(torch.autograd.Function):
    @staticmethod
    def forward(ctx: FunctionCtx, x: Tensor, weight: Tensor, stride: int) -> Tensor:
        """x [N, C, H, W] and weight [O, C, 3, 3], both channels_last in one dtype: then
        x[:, :, qy, qx] and weight[:, :, ky, kx] are strided views a GEMM reads without a copy."""
        n, c, h, w = x.shape
        ho, wo = out_side(h, stride), out_side(w, stride)
        xs = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        acc = x.new_zeros(n, ho * wo, weight.shape[0], dtype=_sum_dtype(x))
        for p, q, ky, kx in _pairs(h, w, stride):
            acc[:, p] += xs[:, q] @ weight[:, :, ky, kx].t()
        ctx.save_for_backward(x, weight)
        ctx.stride = stride
        return acc.to(x.dtype).view(n, ho, wo, -1).permute(0, 3, 1, 2)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        x, weight = ctx.saved_tensors
        n, c, h, w = x.shape
        o, stride = weight.shape[0], ctx.stride
        xs = x.permute(0, 2, 3, 1).reshape(n, h * w, c)
        gs = grad.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n, -1, o)
        gx = x.new_zeros(n, h * w, c, dtype=_sum_dtype(x))
        for p, q, ky, kx in _pairs(h, w, stride):
            gx[:, q] += gs[:, p] @ weight[:, :, ky, kx]
        # one GEMM per tap over all its pairs' rows (any order, the same in both): it rounds once
        gw = weight.new_zeros(3, 3, o, c)
        for (ky, kx), (ps, qs) in _taps(h, w, stride).items():
            torch.mm(gs[:, ps].reshape(-1, o).t(), xs[:, qs].reshape(-1, c), out=gw[ky, kx])
        gx = gx.to(x.dtype).view(n, h, w, c).permute(0, 3, 1, 2)
        return gx, gw.permute(2, 3, 0, 1), None


class SmallMapConv2d(nn.Conv2d):
    """nn.Conv2d (3x3, padding 1, stride 1 or 2) that multiplies pairs of positions where its
    output map on a CPU is at most 2x2, and calls the usual convolution otherwise. Same parameters
    and state_dict keys, so checkpoints read either way; under torch.compile or export it leaves
    the choice to the compiler."""

    def forward(self, x: Tensor) -> Tensor:
        stride = self.stride[0]
        if (
            x.device.type != "cpu"  # cuDNN's small-map kernels were not measured against this
            or max(out_side(s, stride) for s in x.shape[-2:]) > MAX_SIDE
            or torch.compiler.is_compiling()
            or torch.compiler.is_exporting()
        ):
            return super().forward(x)
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else x.dtype
        fmt = torch.channels_last
        # what autocast does for F.conv2d: both operands in its dtype (a no-op copy outside it)
        x = x.to(dtype, memory_format=fmt)
        y = _PairGemm.apply(x, self.weight.to(dtype, memory_format=fmt), stride)
        return y if self.bias is None else y + self.bias.to(dtype).view(1, -1, 1, 1)


def eligible(m: nn.Module) -> bool:
    return (
        type(m) is nn.Conv2d
        and m.kernel_size == (3, 3)
        and m.stride in ((1, 1), (2, 2))
        and m.padding == (1, 1)
        and m.dilation == (1, 1)
        and m.groups == 1
        and m.padding_mode == "zeros"
    )


def use_small_map_gemm(model: nn.Module) -> int:
    """Turns every plain 3x3 convolution at stride 1 or 2 of ``model`` into a SmallMapConv2d in
    place (the class only: parameters, hooks and state_dict stay); returns how many."""
    convs = [m for m in model.modules() if eligible(m)]
    for m in convs:
        m.__class__ = SmallMapConv2d
    return len(convs)

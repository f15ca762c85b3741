"""The 3x3 convolutions lightning_sota/cpu/small_map_conv.py takes over, by its pairs' GEMMs and by
torch's own convolution (oneDNN on a CPU): milliseconds for a forward and backward (the input's
and the weight's gradients), the best of --repeats rounds of --calls with the two taking turns,
in bf16 autocast and fp32; then, under bf16, each one's mean error against an fp64 convolution of
the same rounded operands, as the ratio ours / torch's for the output and the two gradients.

    python benchmarks/small_map_conv.py [--bs 64] [--calls 20] [--repeats 3]

Figures only: nothing is asserted (tests/test_small_map_conv.py bounds the error).
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_sota.cpu.host_memory import reuse_freed_host_memory
from lightning_sota.cpu.small_map_conv import out_side, use_small_map_gemm

CL = torch.channels_last
# (in channels, out channels, input side, stride): xresnet's last stage at 48-64 px
SHAPES = ((512, 512, 2, 1), (256, 512, 4, 2), (256, 512, 3, 2), (512, 512, 1, 1))


def autocast(dtype: torch.dtype) -> torch.autocast:
    return torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32)


def forward_backward(conv: nn.Conv2d, x: Tensor, g: Tensor, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """The output, the input's gradient and the weight's."""
    with autocast(dtype):
        y = conv(x)
    return (y, *torch.autograd.grad(y, (x, conv.weight), g))


def best_ms(
    convs: tuple[nn.Conv2d, ...], x: Tensor, g: Tensor, dtype: torch.dtype, calls: int, repeats: int
) -> list[float]:
    """Each conv's best round, the convs taking turns in every round so that both see the same
    moments of a shared machine; the first round warms up."""
    times = [[] for _ in convs]
    for _ in range(repeats + 1):
        for conv, t in zip(convs, times, strict=True):
            start = time.perf_counter()
            for _ in range(calls):
                forward_backward(conv, x, g, dtype)
            t.append(time.perf_counter() - start)
    return [min(t[1:]) / calls * 1000 for t in times]


def error_ratios(torchs: nn.Conv2d, ours: nn.Conv2d, x: Tensor, g: Tensor) -> list[float]:
    stride = torchs.stride[0]
    x64 = x.detach().bfloat16().double().requires_grad_()
    w64 = torchs.weight.detach().bfloat16().double().requires_grad_()
    y64 = F.conv2d(x64, w64, stride=stride, padding=1)
    exact = (y64, *torch.autograd.grad(y64, (x64, w64), g.bfloat16().double()))

    def errors(conv: nn.Conv2d) -> list[float]:
        out = forward_backward(conv, x, g, torch.bfloat16)
        return [(a.double() - b).abs().mean().item() for a, b in zip(out, exact, strict=True)]

    return [a / b for a, b in zip(errors(ours), errors(torchs), strict=True)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    reuse_freed_host_memory()  # as a CPU run does (cpu.reuse_host_memory)
    print(
        f"bs {args.bs}, {torch.get_num_threads()} threads, torch {torch.__version__}; ms per forward+backward"
    )
    header = ("layer", "bf16 pairs", "bf16 torch", "fp32 pairs", "fp32 torch", "bf16 error ratio: y, gx, gw")
    widths = (24, 11, 11, 11, 11, 30)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for cin, cout, side, stride in SHAPES:
        torch.manual_seed(0)
        torchs = nn.Conv2d(cin, cout, 3, stride, 1, bias=False).to(memory_format=CL)
        ours = copy.deepcopy(torchs)
        use_small_map_gemm(ours)
        x = torch.randn(args.bs, cin, side, side).contiguous(memory_format=CL).requires_grad_()
        o = out_side(side, stride)
        g = torch.randn(args.bs, cout, o, o).contiguous(memory_format=CL)
        ms = [
            t
            for dtype in (torch.bfloat16, torch.float32)
            for t in best_ms((ours, torchs), x, g, dtype, args.calls, args.repeats)
        ]
        ratios = ", ".join(f"{r:.2f}x" for r in error_ratios(torchs, ours, x, g))
        layer = f"{cin}->{cout} {side}x{side} s{stride}"
        print(f"{layer:>24} " + " ".join(f"{t:>11.1f}" for t in ms) + f" {ratios:>30}", flush=True)


if __name__ == "__main__":
    main()

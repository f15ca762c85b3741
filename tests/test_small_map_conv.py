"""small_map_conv: the pair-of-positions GEMMs against torch's own convolution, the reference,
in fp64 (to rounding), under bf16 autocast (to oneDNN's own error), and inside xresnet18."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_sota.cpu.small_map_conv import SmallMapConv2d, use_small_map_gemm
from lightning_sota.models.xresnet import create_model

CL = torch.channels_last


def pair_conv(c: int, o: int, stride: int, bias: bool, dtype=torch.float64) -> nn.Conv2d:
    conv = nn.Conv2d(c, o, 3, stride=stride, padding=1, bias=bias).to(dtype=dtype, memory_format=CL)
    assert use_small_map_gemm(conv) == 1 and type(conv) is SmallMapConv2d
    return conv


def ran_pairs(y: torch.Tensor) -> bool:
    """Whether y came out of the pairs' Function, directly or through the bias's add."""
    fns = [y.grad_fn] + [f for f, _ in y.grad_fn.next_functions if f is not None]
    return any(type(f).__name__ == "_PairGemmBackward" for f in fns)


# (input side h, w; stride): every output map of at most 2x2, square or not
SHAPES = [
    ((1, 1), 1),
    ((1, 2), 1),
    ((2, 1), 1),
    ((2, 2), 1),
    ((3, 3), 2),
    ((4, 4), 2),
    ((4, 3), 2),
    ((2, 2), 2),
]


@pytest.mark.parametrize(("hw", "stride"), SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_pairs_equal_torchs_convolution_and_its_gradients_in_fp64(hw, stride, bias):
    torch.manual_seed(0)
    conv = pair_conv(5, 7, stride, bias)
    x = torch.randn(3, 5, *hw, dtype=torch.float64).contiguous(memory_format=CL).requires_grad_()
    y = conv(x)
    assert ran_pairs(y)
    ref = F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=1)
    assert y.shape == ref.shape and y.is_contiguous(memory_format=CL)
    torch.testing.assert_close(y, ref, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ref)
    params = (x, conv.weight) + ((conv.bias,) if bias else ())
    for got, want in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(ref, params, g), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_a_hand_computed_two_by_two_map():
    """One channel, a 2x2 map: output (0, 0) sees x[0,0]·w[1,1] + x[0,1]·w[1,2] + x[1,0]·w[2,1]
    + x[1,1]·w[2,2], by hand."""
    conv = pair_conv(1, 1, 1, False)
    w = torch.arange(1.0, 10.0, dtype=torch.float64).view(1, 1, 3, 3)  # w[ky, kx] = 3 ky + kx + 1
    conv.weight.data.copy_(w)
    x = torch.tensor([[[[1.0, 10.0], [100.0, 1000.0]]]], dtype=torch.float64)
    y = conv(x)[0, 0]
    assert y.tolist() == [
        [1 * 5 + 10 * 6 + 100 * 8 + 1000 * 9, 1 * 4 + 10 * 5 + 100 * 7 + 1000 * 8],
        [1 * 2 + 10 * 3 + 100 * 5 + 1000 * 6, 1 * 1 + 10 * 2 + 100 * 4 + 1000 * 5],
    ]


@pytest.mark.parametrize(("hw", "stride"), [((2, 2), 1), ((4, 4), 2)])
def test_under_bf16_autocast_the_error_is_onednns_own(hw, stride):
    """Against an fp64 convolution of the same bf16-rounded operands, the output's and the
    gradients' mean errors stay near those of torch's bf16 convolution: the output and the input's
    gradient round each of a position's 2-9 products before they add up, oneDNN rounds once."""
    torch.manual_seed(0)
    conv = pair_conv(256, 128, stride, False, torch.float32)
    x = torch.randn(16, 256, *hw).contiguous(memory_format=CL).requires_grad_()
    g = torch.randn(16, 128, 2, 2).contiguous(memory_format=CL)
    with torch.autocast("cpu", torch.bfloat16):
        y = conv(x)
        ref_bf16 = F.conv2d(x, conv.weight, stride=stride, padding=1)
    assert ran_pairs(y) and y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=CL)
    # the exact result of what both multiplied: the operands as autocast rounds them
    x64 = x.detach().bfloat16().double().requires_grad_()
    w64 = conv.weight.detach().bfloat16().double().requires_grad_()
    exact = F.conv2d(x64, w64, stride=stride, padding=1)
    exact_grads = torch.autograd.grad(exact, (x64, w64), g.bfloat16().double())

    def errors(out):
        grads = torch.autograd.grad(out, (x, conv.weight), g)
        return [
            (a.double() - b).abs().mean().item()
            for a, b in zip((out, *grads), (exact, *exact_grads), strict=True)
        ]

    ours, torchs = errors(y), errors(ref_bf16)
    # measured 1.54-1.58x (output), 1.29-1.57x (input grad), 1.00x (weight grad: one GEMM a tap)
    bounds = {"output": 1.75, "input grad": 1.75, "weight grad": 1.05}
    for (name, bound), e, t in zip(bounds.items(), ours, torchs, strict=True):
        assert 0 < e <= bound * t, f"{name}: mean error {e:.3g} against torch's {t:.3g}"


def test_larger_maps_and_other_convolutions_keep_torchs_path():
    torch.manual_seed(0)
    conv = pair_conv(4, 4, 1, False)
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert not ran_pairs(conv(x))  # a 3x3 output map
    assert not ran_pairs(
        pair_conv(4, 4, 2, False)(torch.randn(2, 4, 5, 5, dtype=torch.float64, requires_grad=True))
    )
    for other in (
        nn.Conv2d(4, 4, 1),
        nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2),
        nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, stride=3, padding=1),
        nn.Conv2d(4, 4, 5, padding=2),
    ):
        assert use_small_map_gemm(other) == 0 and type(other) is nn.Conv2d


def test_xresnet18_runs_its_last_stage_through_pairs_and_matches_the_plain_model():
    """At 64 px xresnet18's last stage is on 2x2 maps: its strided entry and its three 3x3
    convolutions take the pairs' path; the model's output and gradients are the plain one's
    (fp64), its state_dict keys the same, so checkpoints read either way."""
    torch.manual_seed(0)
    ours = create_model("xresnet18").double()
    assert use_small_map_gemm(ours) == 19  # every plain 3x3 conv at stride 1 or 2, the stem's too
    plain = create_model("xresnet18").double()
    assert ours.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(ours.state_dict())
    assert not any(isinstance(m, SmallMapConv2d) for m in plain.modules())
    paired = []
    for name, m in ours.named_modules():
        if isinstance(m, SmallMapConv2d):
            m.register_forward_hook(
                lambda mod, inp, out, name=name: paired.append(name) if ran_pairs(out) else None
            )
    x = torch.rand(4, 3, 64, 64, dtype=torch.float64).contiguous(memory_format=CL)
    ours.train(), plain.train()
    y, y_plain = ours(x), plain(x)
    assert sorted(paired) == ["layer4.0.conv1", "layer4.0.conv2", "layer4.1.conv1", "layer4.1.conv2"]
    torch.testing.assert_close(y, y_plain, rtol=1e-10, atol=1e-10)
    y.square().sum().backward()
    y_plain.square().sum().backward()
    for (name, p), q in zip(ours.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-8, atol=1e-10, msg=name)


def test_a_copy_keeps_the_class():
    model = create_model("xresnet18")
    use_small_map_gemm(model)
    assert isinstance(copy.deepcopy(model).layer4[1].conv2, SmallMapConv2d)

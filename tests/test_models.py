"""xresnet on timm: fastai's topology and init, at every size the scales use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_sota.errors import ConfigError
from lightning_sota.models.layers import MaxBlurPool
from lightning_sota.models.xresnet import create_model


def test_xresnet50_topology_and_init():
    model = create_model("xresnet50", num_classes=10, channels_last=False)
    stem = [m for m in model.conv1 if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.stride[0]) for c in stem] == [
        (3, 32, 2),
        (32, 32, 1),
        (32, 64, 1),
    ]
    assert isinstance(model.maxpool, nn.MaxPool2d)
    assert [len(model.get_submodule(f"layer{i}")) for i in range(1, 5)] == [3, 4, 6, 3]
    down = model.layer2[0].downsample
    assert isinstance(down[0], nn.AvgPool2d) and down[0].ceil_mode and down[1].stride == (1, 1)
    assert model.layer2[0].conv2.stride == (2, 2)  # the stride sits on the 3x3 conv
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            assert torch.all(block.bn3.weight == 0)  # zero-initialised last BN
    conv = model.layer3[1].conv2
    fan_in = conv.weight[0].numel()
    assert abs(conv.weight.std().item() - (2 / fan_in) ** 0.5) < 0.1 * (2 / fan_in) ** 0.5
    assert model.fc.out_features == 10 and torch.all(model.fc.bias == 0)
    assert 23.4e6 < sum(p.numel() for p in model.parameters()) < 23.6e6


@pytest.mark.parametrize("size", [32, 64, 128, 224])
def test_xresnet50_runs_at_every_size(size):
    model = create_model("xresnet50", num_classes=10).eval()
    x = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert model(x).shape == (2, 10)


@pytest.mark.parametrize("arch", ["xresnet18", "xresnet34"])
def test_small_xresnets(arch):
    model = create_model(arch, num_classes=3)
    assert model.conv1[0].out_channels == 32 and torch.all(model.layer1[0].bn2.weight == 0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_any_timm_name_and_a_clear_error():
    assert create_model("resnet10t", num_classes=4)(torch.randn(2, 3, 32, 32)).shape == (2, 4)
    with pytest.raises(ValueError, match="unknown model.arch='nope'.*timm"):
        create_model("nope")


@pytest.mark.parametrize(("arch", "widen"), [("xresnet18", 0.5), ("xresnet50", 0.25)])
def test_widen_is_fastais(arch, widen):
    """model.widen (scale=smoke's 0.5) scales each stage's width as fastai's XResNet(widen=):
    the same conv and linear shapes as fastai's own model, the stem unchanged."""
    xresnet = pytest.importorskip("fastai.vision.models.xresnet")

    def shapes(model: nn.Module) -> list[tuple[int, ...]]:
        return sorted(tuple(m.weight.shape) for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear))

    ours = create_model(arch, num_classes=10, widen=widen)
    assert shapes(ours) == shapes(getattr(xresnet, arch)(n_out=10, widen=widen))
    assert [m.out_channels for m in ours.conv1 if isinstance(m, nn.Conv2d)] == [32, 32, 64]
    assert ours.layer4[0].conv1.out_channels == int(512 * widen)


def test_widen_refused_where_it_cannot_be_honoured():
    with pytest.raises(ValueError, match=r"model.widen=0.5: mobilenetv3_small_050 is not a timm ResNet"):
        create_model("mobilenetv3_small_050", widen=0.5)
    with pytest.raises(ValueError, match="model.widen=0.001: leaves a stage without channels"):
        create_model("xresnet18", widen=0.001)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blur_pool_is_the_leaderboards_max_blur_pool_stem(dtype):
    """model.blur_pool: max pool 3x3 at stride 1, then the [1, 2, 1] binomial blur at stride 2 with
    reflected edges, on the stem only. Expectations worked out by hand on impulses (one channel of
    the stem's 64): in the middle the 3x3 block of ones left by the max pool blurs to 3/4 x 3/4 on
    a 2x2 block (a plain stride-2 max pool gives ones); in the corner, reflection folds the blur's
    outer tap back onto the block (zero padding would give 9/16 at the corner). Under bf16
    autocast, as the stem runs in bf16-mixed, the same values, exact (sixteenths are bf16 values)."""
    model = create_model("xresnet50", num_classes=10, channels_last=False, blur_pool=True)
    assert model.layer2[0].conv2.stride == (2, 2)  # the blocks keep their strided convs
    middle = torch.zeros(1, 64, 8, 8, dtype=dtype)
    middle[0, 5, 3, 3] = 1
    corner = torch.zeros(1, 64, 8, 8, dtype=dtype)
    corner[0, 5, 0, 0] = 1
    expected_middle = torch.zeros(4, 4)
    expected_middle[1:3, 1:3] = 9 / 16
    expected_corner = torch.zeros(4, 4)
    expected_corner[:2, :2] = torch.tensor([[1, 1 / 4], [1 / 4, 1 / 16]])
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for x, expected in ((middle, expected_middle), (corner, expected_corner)):
            out = model.maxpool(x)
            assert out.shape == (1, 64, 4, 4) and out.dtype == dtype
            assert out[0, :5].abs().sum() == 0 and out[0, 6:].abs().sum() == 0
            torch.testing.assert_close(out[0, 5].float(), expected, rtol=0, atol=0)
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 10)


def test_blur_pool_backpropagates_under_bf16_and_is_refused_without_a_max_pool_stem():
    model = create_model("xresnet18", num_classes=10, blur_pool=True)
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    assert model.conv1[0].weight.grad.abs().sum() > 0  # the gradient flows back through the blur
    with pytest.raises(ValueError, match="model.blur_pool=true: mobilenetv3_small_050 has no max-pool stem"):
        create_model("mobilenetv3_small_050", blur_pool=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_max_blur_pool_is_kornias_by_hand(dtype):
    """model.pool=max_blur's layer on a 4x4 ramp x[i, j] = 4i + j. The 3x3 max at stride 1 gives
    4a[i] + a[j] with a = [1, 2, 3, 3]; the blur is separable and sums to 1, so it blurs a alone:
    reflected to [3, 2, 1, 2, 3, 3, 3, 2] and weighed by [1, 4, 6, 4, 1] / 16 it is
    [28, 33, 42, 46] / 16, and halving bilinearly averages pairs: b = [61, 88] / 32. The output is
    4b[i] + b[j]. In bf16 the same values to bf16's rounding."""
    x = torch.arange(16, dtype=dtype).view(1, 1, 4, 4)
    b = torch.tensor([61 / 32, 88 / 32])
    expected = 4 * b.view(2, 1) + b.view(1, 2)  # [[305, 332], [413, 440]] / 32
    out = MaxBlurPool()(x)
    assert out.shape == (1, 1, 2, 2) and out.dtype == dtype
    tolerance = 0 if dtype == torch.float32 else 0.05
    torch.testing.assert_close(out[0, 0].float(), expected, rtol=0, atol=tolerance)
    odd = MaxBlurPool()(torch.randn(2, 3, 7, 9).contiguous(memory_format=torch.channels_last))
    assert odd.shape == (2, 3, 3, 4)  # kornia floors the halved size
    tiny = torch.tensor([[[[1.0, -2.0], [0.5, 3.0]]]])  # too small to reflect: edges repeated
    torch.testing.assert_close(MaxBlurPool()(tiny), torch.full((1, 1, 1, 1), 3.0))


def test_pool_max_blur_is_the_leaderboard_rows_network_and_refused_where_it_cannot_be():
    """model.pool=max_blur is the row's notebook: fastai's xse_resnext50(pool=MaxPool) with every
    nn.MaxPool2d (the stem's and the three shortcuts') replaced. Here fastai's own network is
    converted as the notebook does it, with our MaxBlurPool standing in for kornia's (checked by
    hand above): the same weights loaded in order give the same output in eval and training."""
    xresnet = pytest.importorskip("fastai.vision.models.xresnet")
    torch.manual_seed(0)
    theirs = xresnet.xse_resnext50(n_out=10, act_cls=nn.Mish, sa=True, pool=xresnet.MaxPool)
    converted = 0
    for module in list(theirs.modules()):
        for name, child in module.named_children():
            if type(child) is nn.MaxPool2d:
                setattr(module, name, MaxBlurPool())
                converted += 1
    assert converted == 4
    theirs = randomised(theirs)
    ours = create_model("xse_resnext50", num_classes=10, act="mish", sa=True, pool="max_blur")
    ours = loaded_in_order(ours, theirs)
    assert sum(isinstance(m, MaxBlurPool) for m in ours.modules()) == 4
    x = torch.randn(2, 3, 64, 64)
    theirs.eval()
    ours.eval()
    with torch.no_grad():
        expected = theirs(x)
        torch.testing.assert_close(
            ours(x.contiguous(memory_format=torch.channels_last)), expected, rtol=1e-4, atol=1e-4
        )
    assert expected.abs().max() > 0.1
    plain_max = create_model("xresnet18", num_classes=10, pool="max")
    assert [
        type(b.downsample[0]) for b in (plain_max.layer2[0], plain_max.layer3[0], plain_max.layer4[0])
    ] == [nn.MaxPool2d] * 3
    with pytest.raises(ValueError, match=r"^model.pool='mean': use avg, max or max_blur$"):
        create_model("xresnet18", pool="mean")
    with pytest.raises(
        ValueError, match="model.pool=max: mobilenetv3_small_050 has no average-pool shortcuts"
    ):
        create_model("mobilenetv3_small_050", pool="max")
    with pytest.raises(
        ValueError, match="model.blur_pool=true with model.pool=max_blur: .*set model.blur_pool=false"
    ):
        create_model("xresnet18", pool="max_blur", blur_pool=True)


def randomised(model: nn.Module) -> nn.Module:
    """Every BatchNorm, SE bias and self-attention gamma away from its init, so the residual
    branches (zero-initialised last BatchNorm, gamma 0) and SE's biases count in the output."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith(("running_var", "num_batches_tracked")) or tensor.ndim != 1:
                if name.endswith("running_var"):
                    tensor.copy_(torch.rand(tensor.shape, generator=generator) + 0.5)
                continue
            if name.endswith("gamma"):
                tensor.fill_(1e-3)  # attention grows from 0: a small gamma already dominates x
            elif name.endswith("weight") and "_orig" not in name:  # BatchNorm scales
                tensor.copy_(torch.rand(tensor.shape, generator=generator) * 0.5 + 0.5)
            elif not name.endswith(("_u", "_v")):  # biases, running means
                tensor.copy_((torch.rand(tensor.shape, generator=generator) - 0.5) * 0.2)
    return model


def loaded_in_order(ours: nn.Module, theirs: nn.Module) -> nn.Module:
    """``theirs``' tensors copied into ``ours`` by position: the same architecture has the same
    tensors, of the same shapes, in the same order."""
    own, their = ours.state_dict(), theirs.state_dict()
    assert [tuple(t.shape) for t in own.values()] == [tuple(t.shape) for t in their.values()]
    ours.load_state_dict(dict(zip(own, their.values(), strict=True)))
    return ours


@pytest.mark.parametrize(
    ("arch", "widen", "act", "sa"),
    [
        ("xse_resnext50", 1.0, None, False),
        ("xse_resnext50", 1.0, "mish", True),  # the leaderboard row's network
        ("xresnext50", 1.0, "mish", False),
        ("xresnet18", 0.5, "mish", True),  # scale=smoke's
    ],
)
def test_the_leaderboards_pieces_are_fastais_network(arch, widen, act, sa):
    """fastai's own network with the same weights loaded in order computes what ours does, in
    eval and (without self-attention, whose spectral norm's power iteration runs in the other
    order: layers.py) in training, where BatchNorm uses the batch's statistics."""
    xresnet = pytest.importorskip("fastai.vision.models.xresnet")
    act_cls = {None: nn.ReLU, "mish": nn.Mish}[act]
    torch.manual_seed(0)
    theirs = randomised(getattr(xresnet, arch)(n_out=10, widen=widen, act_cls=act_cls, sa=sa))
    ours = loaded_in_order(create_model(arch, num_classes=10, widen=widen, act=act, sa=sa), theirs)
    x = torch.randn(4, 3, 64, 64)
    modes = ("eval",) if sa else ("eval", "train")
    for mode in modes:
        theirs.train(mode == "train")
        ours.train(mode == "train")
        with torch.no_grad():
            expected = theirs(x)
            out = ours(x.contiguous(memory_format=torch.channels_last))
        assert expected.abs().max() > 0.1  # not a network whose output is all biases
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_self_attention_sits_where_fastai_puts_it_and_learns():
    """sa=true: one SimpleSelfAttention, after SE in the last block of the first stage; at init
    (gamma 0) the network computes what it would without it; gamma and the conv get gradients."""
    model = randomised(create_model("xse_resnext50", num_classes=10, act="mish", sa=True))
    attention = [name for name, m in model.named_modules() if type(m).__name__ == "SimpleSelfAttention"]
    assert attention == ["layer1.2.se.1"]
    assert type(model.layer1[2].se[0]).__name__ == "SEModule" and isinstance(
        model.layer1[2].se[0].act, nn.Mish
    )
    plain = create_model("xse_resnext50", num_classes=10, act="mish")
    plain.load_state_dict(
        {k.replace("2.se.0.", "2.se."): v for k, v in model.state_dict().items() if ".se.1." not in k}
    )
    x = torch.randn(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    model.eval()
    plain.eval()
    with torch.no_grad():
        model.layer1[2].se[1].gamma.zero_()
        torch.testing.assert_close(model(x), plain(x))
        model.layer1[2].se[1].gamma.fill_(0.5)
        assert not torch.allclose(model(x), plain(x))
    model.train()
    model(x).logsumexp(1).sum().backward()
    sa = model.layer1[2].se[1]
    assert sa.gamma.grad.abs() > 0 and sa.conv.parametrizations.weight.original.grad.abs().sum() > 0


def test_the_leaderboards_options_refused_where_they_cannot_be_honoured():
    with pytest.raises(
        ValueError, match=r"model.sa=true: mobilenetv3_small_050 is not a timm ResNet: set model.sa=false"
    ):
        create_model("mobilenetv3_small_050", sa=True)
    with pytest.raises(ValueError, match="model.act=nope: not an activation timm knows"):
        create_model("xresnet18", act="nope")
    with pytest.raises(ConfigError, match="model.act=mish with model.pretrained=true: .*set model.act=null"):
        create_model("xresnet50", act="mish", pretrained=True)
    with pytest.raises(ConfigError, match="model.sa=true with model.pretrained=true: .*set model.sa=false"):
        create_model("xresnet50", sa=True, pretrained=True)
    with pytest.raises(ConfigError, match="timm has no pretrained weights for xse_resnext50"):
        create_model("xse_resnext50", pretrained=True)

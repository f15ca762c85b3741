"""xresnet on timm: fastai's topology and init, at every size the scales use."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_sota.models import create_model


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

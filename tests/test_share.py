"""export --timm: timm's Hugging Face layout, loaded back by timm alone, computes the run's logits."""

from __future__ import annotations

import json
import shutil

import pytest
import timm
import torch
from huggingface_hub import ModelCard
from omegaconf import OmegaConf

from lightning_sota import load_run
from lightning_sota.augment.augment import BatchAugment
from lightning_sota.models.weights import timm_name
from lightning_sota.models.xresnet import create_model
from lightning_sota.serve.export import beyond_timm, main, timm_view


@pytest.mark.slow
def test_timm_loads_the_export_back_and_computes_the_runs_logits(trained_run, tmp_path):
    out = tmp_path / "timm-export"
    assert main([str(trained_run), "--timm", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    run = load_run(trained_run, precision="32-true")
    arch = json.loads((trained_run / "results.json").read_text())["arch"]
    assert config["label_names"] == run.classes and config["architecture"] == timm_name(arch)
    assert config["pretrained_cfg"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert config["pretrained_cfg"]["crop_mode"] == "center"
    assert config["pretrained_cfg"]["crop_pct"] == 0.875 and config["pretrained_cfg"]["input_size"] == [
        3,
        32,
        32,
    ]
    assert (out / "model.safetensors").is_file() and not list(tmp_path.glob(".timm-export.tmp-*"))

    rebuilt = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # smoke's half width too
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), run.model.eval()(x), atol=1e-5, rtol=1e-5)

    # the model card: huggingface_hub reads it back, the run's accuracies as evaluation results
    card = ModelCard.load(out / "README.md")
    results = json.loads((trained_run / "results.json").read_text())
    scores = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert scores["val_acc"] == results["val_acc"] and scores["tta_acc"] == results["tta_acc"]
    assert card.data.library_name == "timm"
    assert card.data.model_name == "timm-export" and f"{results['val_acc']:.4f}" in card.text
    assert results["provenance"]["git"] is None or results["provenance"]["git"]["commit"] in card.text


@pytest.mark.parametrize("crop", ["square", "image"])
@pytest.mark.parametrize("valid_scale", [1.0, 0.5])
def test_timms_preprocessing_from_the_export_is_predicts_view(crop, valid_scale):
    """The data config export writes makes timm's own eval transform (PIL) give our validation
    view of a 30x40 photo, to its uint8 output and (centre crop) its long side resized to whole
    pixels: 85 for 85.3, under 3/255 on this gradient."""
    from PIL import Image
    from timm.data import create_transform

    ys, xs = torch.meshgrid(torch.arange(30), torch.arange(40), indexing="ij")
    photo = torch.stack([xs * 6, ys * 8, torch.full_like(xs, 128)], -1).to(torch.uint8)
    augment = BatchAugment(crop=crop, valid_scale=valid_scale)
    zero, one = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    timms = create_transform(input_size=(3, 64, 64), mean=zero, std=one, **timm_view(augment))
    batch = {
        "image": photo[None],
        "box": torch.tensor([[0.0, 0, 30, 40]]),
        "transposed": torch.tensor([False]),
    }
    ours = augment(batch | {"size": 64}, train=False)[0]
    torch.testing.assert_close(ours, timms(Image.fromarray(photo.numpy())), atol=3 / 255, rtol=0)


@pytest.mark.slow  # the trained smoke run
def test_a_blur_pool_stem_is_refused_in_one_line(trained_run, tmp_path, capsys):
    """timm's config has no place for it: the blur's filter is not in the state_dict, so timm
    would load every tensor into a max-pool stem and compute other logits."""
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    ckpt["lightning_sota"]["config"]["model"]["blur_pool"] = True
    (tmp_path / "checkpoints").mkdir()
    torch.save(ckpt, tmp_path / "checkpoints" / "last.ckpt")
    shutil.copy(trained_run / "results.json", tmp_path)
    with pytest.raises(SystemExit) as exit:
        main([str(tmp_path), "--timm", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit.value.code == 2 and err.count("\n") == 1
    assert err.startswith("error: --timm: timm's config cannot describe the MaxBlurPool stem")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"blur_pool": True}, "the MaxBlurPool stem (model.blur_pool=true)"),
        ({"pool": "max_blur"}, "the shortcuts' pooling (model.pool=max_blur)"),
        ({"sa": True}, "fastai's self-attention (model.sa=true)"),
        ({"act": "mish"}, "the activation (model.act=mish)"),
        ({"arch": "xse_resnext50"}, "fastai's squeeze-excitation (model.arch=xse_resnext50)"),
    ],
)
def test_what_timm_cannot_rebuild_is_named(override, named):
    model = OmegaConf.create({"arch": "xresnet50", "blur_pool": False, "sa": False, "act": None, **override})
    assert beyond_timm(model) == named


@pytest.mark.parametrize("arch", ["xresnet50", "xresnext50"])
def test_what_timm_rebuilds_from_its_architecture_name(arch):
    """save_for_hf records pretrained_cfg's architecture: timm's model of that name has exactly
    our tensors, so --timm is allowed."""
    model = OmegaConf.create({"arch": arch, "blur_pool": False, "sa": False, "act": None})
    ours = create_model(arch, num_classes=10)
    rebuilt = timm.create_model(ours.pretrained_cfg["architecture"], num_classes=10)
    assert beyond_timm(model) is None
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in ours.state_dict().items()
    }

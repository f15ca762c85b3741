"""model.pretrained: a weights file, a run of ours or timm's ImageNet weights, loaded and kept."""

from __future__ import annotations

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

from lightning_sota.config.checks import check_config
from lightning_sota.errors import ConfigError
from lightning_sota.models.weights import normalize_for_weights
from lightning_sota.run.build import build_module, cpu_tuning
from lightning_sota.serve.evaluate import evaluate

from .conftest import config, results, train_here

CPU = torch.device("cpu")
CLASSES = [str(i) for i in range(10)]


def module_of(*overrides: str):
    cfg = config(*overrides, "~logger")
    return build_module(cfg, CLASSES, cpu_tuning(cfg, CPU))


def weights_file(path, num_classes: int, seed: int = 1):
    """timm's resnet18d (xresnet18's counterpart) with timm's own init, saved as safetensors."""
    torch.manual_seed(seed)
    model = timm.create_model("resnet18d", num_classes=num_classes)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    return model.eval()


def test_a_weights_file_is_loaded_and_never_reinitialised(tmp_path):
    """Every tensor of the file is the model's (fastai's init would redraw every conv), so the
    model computes what timm's own model with those weights computes."""
    reference = weights_file(tmp_path / "w.safetensors", num_classes=10)
    module = module_of("model.arch=xresnet18", f"model.pretrained={tmp_path / 'w.safetensors'}")
    state = module.model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key
    x = torch.rand(2, 3, 64, 64)
    module.model.eval()
    torch.testing.assert_close(module.model(x), reference(x))


def test_other_classes_get_a_new_classifier_and_keep_the_rest(tmp_path):
    reference = weights_file(tmp_path / "imagenet.safetensors", num_classes=1000)
    module = module_of("model.arch=xresnet18", f"model.pretrained={tmp_path / 'imagenet.safetensors'}")
    state = module.model.state_dict()
    assert state["fc.weight"].shape == (10, 512)
    for key, value in reference.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(state[key], value), key


@pytest.mark.slow  # the trained smoke run
def test_a_run_of_ours_is_a_starting_point(trained_run):
    """Its checkpoint's network, and its normalization (unless the command line picks one)."""
    cfg = config("+experiment=sota", "scale=smoke", f"model.pretrained={trained_run}", "~logger")
    normalize_for_weights(cfg, [f"model.pretrained={trained_run}"])
    assert cfg.normalize.mean == results(trained_run)["normalize"]["mean"]
    module = build_module(cfg, CLASSES, cpu_tuning(cfg, CPU))
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    for key, value in module.model.state_dict().items():
        assert torch.equal(value, ckpt[f"model.{key}"]), key
    chosen = config("+experiment=sota", f"model.pretrained={trained_run}", "normalize=batch")
    normalize_for_weights(chosen, ["normalize=batch"])
    assert chosen.normalize.from_batch is True


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["model.arch=resnet200", "model.pretrained=true"],
            "^model.pretrained=true: timm has no pretrained weights for resnet200",
        ),
        (
            ["scale=smoke", "model.pretrained=true"],
            r"^model.widen=0.5 with model.pretrained=true: .* set model.widen=1$",
        ),
        (["model.pretrained=/nowhere/w.pth"], "^model.pretrained=/nowhere/w.pth: no such file or folder$"),
    ],
)
def test_weights_that_cannot_be_used_are_refused_before_any_data(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(config(*overrides))


def test_weights_of_another_architecture_are_named(tmp_path):
    weights_file(tmp_path / "w.safetensors", num_classes=10)
    with pytest.raises(
        ConfigError, match=r"do not fit model.arch=xresnet34 \(\d+ tensors differ, the first "
    ):
        module_of("model.arch=xresnet34", f"model.pretrained={tmp_path / 'w.safetensors'}")


def test_without_network_timm_weights_fail_in_one_line(tmp_path, mini, monkeypatch):
    # HF_HUB_OFFLINE=1, as Hugging Face's client reads it once imported: as fast as a machine
    # without network, without its retries
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(
        ConfigError, match=r"^model.pretrained=true: timm could not fetch the weights of resnet18d \("
    ):
        train_here(
            "scale=smoke",
            "model.widen=1",
            "model.arch=xresnet18",
            "model.pretrained=true",
            f"data.root={mini}",
            tmp=tmp_path,
        )


@pytest.mark.slow
def test_a_run_from_a_weights_file_records_it_and_outlives_it(tmp_path, mini):
    """results.json names the weights, normalization is timm's ImageNet statistics (not chosen
    on the command line), and evaluate rebuilds the run from its checkpoint alone."""
    weights = tmp_path / "w.safetensors"
    weights_file(weights, num_classes=1000)
    train_here(
        "scale=smoke",
        "scale.epochs=1",
        "model.widen=1",
        "model.arch=xresnet18",
        f"model.pretrained={weights}",
        f"data.root={mini}",
        tmp=tmp_path,
    )
    res = results(tmp_path / "run")
    assert res["pretrained"] == str(weights)
    assert res["normalize"]["mean"] == pytest.approx([0.485, 0.456, 0.406], abs=1e-6)
    weights.unlink()
    scored = evaluate(str(tmp_path / "run"), [f"data.root={mini}", f"data.cache_dir={tmp_path / 'cache'}"])
    assert scored["accuracy"] == res["val_acc"]

"""model.pretrained: where a model's starting weights come from, and the statistics they expect.

``true`` loads timm's default ImageNet weights for the architecture (timm fetches them; an xresnet
name stands for its timm counterpart, ``resnet50d`` for xresnet50). A path loads a timm or Hugging
Face weights file (safetensors, .pth, .bin) or one of this project's run folders or checkpoints.
The classifier is loaded when its shape fits and left as built otherwise (other classes); every
other tensor must fit, and nothing is re-initialised after loading.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from lightning_sota.errors import ConfigError
from lightning_sota.run.layout import checkpoint_path, read_checkpoint

XRESNETS = {
    "xresnet18": "resnet18d",
    "xresnet34": "resnet34d",
    "xresnet50": "resnet50d",
    "xresnet101": "resnet101d",
    "xresnet152": "resnet152d",
    "xresnext50": "resnext50d_32x4d",
}
WEIGHT_FILES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")


def timm_name(arch: str) -> str:
    return XRESNETS.get(arch, arch)


def check_pretrained(
    arch: str, pretrained: bool | str, widen: float, act: str | None = None, sa: bool = False
) -> None:
    """What can be refused before anything is built: the one-line reasons."""
    if not pretrained:
        return
    if pretrained is True:
        if widen != 1:
            raise ConfigError(
                f"model.widen={widen} with model.pretrained=true: timm's weights are for the full "
                "width: set model.widen=1"
            )
        if act is not None:
            raise ConfigError(
                f"model.act={act} with model.pretrained=true: timm's weights were trained with the "
                "architecture's own activation: set model.act=null"
            )
        if sa:
            raise ConfigError(
                "model.sa=true with model.pretrained=true: timm's weights have no self-attention: "
                "set model.sa=false"
            )
        if not timm.list_pretrained(timm_name(arch)):
            raise ConfigError(
                f"model.pretrained=true: timm has no pretrained weights for {arch}: pick an "
                "architecture that has some (timm.list_pretrained()) or point model.pretrained at a file"
            )
        return
    path = Path(str(pretrained))
    if not (path.is_dir() or path.is_file()):
        raise ConfigError(f"model.pretrained={pretrained}: no such file or folder")
    if path.is_file() and path.suffix not in WEIGHT_FILES:
        raise ConfigError(
            f"model.pretrained={pretrained}: not a weights file ({', '.join(WEIGHT_FILES)}) or a run folder"
        )


def from_timm(arch: str, num_classes: int, **kwargs) -> nn.Module:
    """timm's model with its default pretrained weights (a new classifier for other classes)."""
    name = timm_name(arch)
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, **kwargs)
    except Exception as err:  # no network, a hub error, a broken cache: said in one line
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"model.pretrained=true: timm could not fetch the weights of {name} ({reason}): without "
            "network, download them where there is one and set model.pretrained=<the file>"
        ) from err


def ours(path: Path) -> bool:
    """A run folder or a checkpoint of this project (else a timm or Hugging Face weights file)."""
    return path.is_dir() or path.suffix == ".ckpt"


def state_from(path: Path) -> dict[str, torch.Tensor]:
    """The model's tensors in a weights file, a checkpoint of ours or a run folder."""
    if ours(path):  # the LightningModule's state: the network under model.
        state = read_checkpoint(checkpoint_path(path, "model.pretrained"))["state_dict"]
        return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    return timm.models.load_state_dict(str(path))


def load_pretrained(model: nn.Module, source: str, arch: str) -> None:
    """Copy the tensors of ``source`` into ``model``; its classifier only where its shape fits."""
    state = state_from(Path(source))
    own = model.state_dict()
    head = model.pretrained_cfg.get("classifier", "fc") if hasattr(model, "pretrained_cfg") else "fc"
    other_classes = [
        k for k in state if k.startswith(head + ".") and k in own and state[k].shape != own[k].shape
    ]
    if other_classes:
        state = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    unfit = sorted(
        {k for k in own if k not in state and not (other_classes and k.startswith(head + "."))}
        | {k for k in state if k not in own or state[k].shape != own[k].shape}
    )
    if unfit:
        raise ConfigError(
            f"model.pretrained={source}: its weights do not fit model.arch={arch} ({len(unfit)} tensors "
            f"differ, the first {unfit[0]}): set model.arch, model.widen, model.blur_pool and model.sa "
            "as for the model that made them"
        )
    model.load_state_dict(state, strict=not other_classes)


def weight_stats(arch: str, pretrained: bool | str) -> dict | None:
    """The mean and std the weights were trained with: timm's for its ImageNet weights (and for a
    weights file, which timm's default config describes), the run's own for a run or checkpoint
    of ours (None if it trained without normalization)."""
    path = Path(str(pretrained))
    if pretrained is not True and ours(path):
        return read_checkpoint(checkpoint_path(path, "model.pretrained"))["lightning_sota"]["normalize"]
    cfg = timm.models.get_pretrained_cfg(timm_name(arch))
    return {"mean": list(cfg.mean), "std": list(cfg.std)} if cfg else None


def normalize_for_weights(cfg: DictConfig, overrides: list[str]) -> None:
    """A pretrained model is normalized with its weights' statistics, unless the command line
    chose ``normalize`` itself (as fastai normalizes with the pretrained model's stats)."""
    pretrained = cfg.model.get("pretrained", False)
    chosen = any(o.lstrip("+~").split("=")[0].split(".")[0] == "normalize" for o in overrides)
    if not pretrained or chosen:
        return
    stats = weight_stats(cfg.model.arch, pretrained)
    if stats:
        target = {"_target_": "lightning_sota.augment.normalize.Normalize", **stats, "from_batch": False}
        OmegaConf.update(cfg, "normalize", target, merge=False)

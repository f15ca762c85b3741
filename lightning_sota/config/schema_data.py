"""The schema of what a batch goes through before the loss: scale, data, resize, model,
normalize, augment, mix and tta (the groups of the same names in conf/)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from lightning_sota.config.fields import (
    BELOW_ONE,
    FRACTION,
    POSITIVE,
    POSITIVE_INT,
    RGB,
    SIDE,
    choice,
)
from lightning_sota.config.rules import at_least, each, passes, rule

Variant = choice("Variant", "160px", "320px", "full")
Dataset = choice("Dataset", "imagenette", "imagewoof")  # data/acquire.py's ARCHIVES
Labels = choice("Labels", "clean", "noisy_1", "noisy_5", "noisy_25", "noisy_50")  # folders.noisy_labels
Pool = choice("Pool", "avg", "max", "max_blur")
Interpolation = choice("Interpolation", "bilinear", "nearest", "bicubic")
PadMode = choice("PadMode", "reflection", "border")
Crop = choice("Crop", "square", "image")
TtaMode = choice("TtaMode", "augment", "flip")


def rising(phases: list) -> str | None:
    """Progressive resizing goes from small to large; sizes that are not integers are said by
    the phases' own checks."""
    if not phases:
        return "give at least one {size, batch_size, epochs}"
    sizes = [p["size"] for p in phases]
    if all(isinstance(s, int) for s in sizes) and sizes != sorted(sizes):
        return f"sizes {sizes} decrease: progressive resizing goes from small to large"
    return None


@dataclass
class Phase:
    size: int = rule(POSITIVE_INT)
    batch_size: int = rule(POSITIVE_INT)  # the global batch, split over the ranks
    epochs: int = rule(POSITIVE_INT)


@dataclass
class DataConf:
    _target_: str = MISSING
    root: str = MISSING
    dataset: Dataset = MISSING
    labels: Labels = MISSING
    variant: Variant = MISSING
    download: bool = MISSING
    base_url: str | None = MISSING
    presize: int | None = rule(POSITIVE)
    max_aspect: float = rule(at_least(1))
    cache_dir: str = MISSING
    cache_workers: int | None = rule(POSITIVE)
    workers: int = rule(at_least(0))
    on_device: bool | None = MISSING
    val_batch_size: int | None = rule(POSITIVE)
    seed: int = MISSING
    holdout: float = rule(BELOW_ONE)
    holdout_seed: int = MISSING
    valid_pct: float = rule(BELOW_ONE)
    split_seed: int = MISSING


# torch.compile's modes (model.compile: true is the default one)
COMPILE_MODES = ("default", "lite", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class ModelConf:
    _target_: str = MISSING
    arch: str = MISSING  # an xresnet or any timm name: checks.check_model builds it to know
    widen: float = rule(POSITIVE)
    blur_pool: bool = MISSING
    pool: Pool = MISSING
    act: str | None = MISSING
    sa: bool = MISSING
    channels_last: bool = MISSING
    compile: Any = rule(
        passes(
            lambda v: isinstance(v, bool) or v in COMPILE_MODES,
            f"use true, false or a torch.compile mode: {', '.join(COMPILE_MODES)}",
        )
    )
    # true: timm's ImageNet weights; a path: a weights file, run folder or checkpoint (checks.py)
    pretrained: Any = rule(
        passes(
            lambda v: isinstance(v, bool) or (isinstance(v, str) and v != ""),
            "use true, false or a weights file, run folder or checkpoint",
        )
    )


@dataclass
class NormalizeConf:
    _target_: str = MISSING
    mean: list[float] | None = rule(RGB)
    std: list[float] | None = rule(each(POSITIVE, length=3))
    from_batch: bool = False


@dataclass
class AugmentConf:
    _target_: str = MISSING
    min_scale: float = rule(SIDE)
    ratio: list[float] = rule(
        passes(
            lambda r: len(r) == 2 and 0 < r[0] <= r[1],
            "use [low, high] with 0 < low <= high, e.g. [0.75, 1.333]",
        )
    )
    p_flip: float = rule(FRACTION)
    max_rotate: float = rule(at_least(0))
    min_zoom: float = rule(POSITIVE)
    max_zoom: float = rule(POSITIVE)
    max_warp: float = rule(BELOW_ONE)
    p_affine: float = rule(FRACTION)
    max_lighting: float = rule(BELOW_ONE)
    p_lighting: float = rule(FRACTION)
    mode: Interpolation = MISSING
    pad_mode: PadMode = MISSING
    crop: Crop = MISSING
    valid_scale: float = rule(SIDE)


@dataclass
class ResizeConf:
    phases: list[Phase] = rule(rising)
    # experiment/sota.yaml's phases for each scale (scale name -> phases), picked by ls.pick
    budget: dict[str, list[Phase]] | None = None
    epochs_per_phase: int | None = rule(POSITIVE)  # debug: every phase runs this many epochs
    overfit_batches: int = rule(at_least(0))  # debug=overfit


@dataclass
class MixConf:
    _target_: str = MISSING
    alpha: float = rule(POSITIVE)  # Beta(alpha, alpha)


@dataclass
class TtaConf:
    _target_: str = MISSING
    n: int = rule(at_least(1))
    beta: float = rule(FRACTION)
    use_max: bool = MISSING
    mode: TtaMode = MISSING
    seed: int = MISSING


@dataclass
class ScaleConf:
    name: str = MISSING  # experiment/sota.yaml picks its phases by it
    size: int = rule(POSITIVE)
    batch_size: int = rule(POSITIVE)
    epochs: int = rule(POSITIVE)
    lr: float = rule(POSITIVE)
    progressive: list[Phase] = rule(rising)  # resize=progressive's phases

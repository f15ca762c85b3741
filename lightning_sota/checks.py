"""Reject invalid settings before any data is touched, each with a message that names the fix."""

from __future__ import annotations

from omegaconf import DictConfig


class ConfigError(ValueError):
    """An invalid setting; the message names the key and the valid range."""


def check_config(cfg: DictConfig) -> None:
    phases = cfg.resize.phases
    if not phases:
        raise ConfigError("resize.phases is empty: give at least one {size, batch_size, epochs}")
    for i, p in enumerate(phases):
        for key in ("size", "batch_size", "epochs"):
            if not isinstance(p[key], int) or p[key] <= 0:
                raise ConfigError(f"resize.phases[{i}].{key}={p[key]!r}: must be a positive integer")
    sizes = [p["size"] for p in phases]
    if sizes != sorted(sizes):
        raise ConfigError(
            f"resize.phases sizes {sizes} decrease: progressive resizing goes from small to large"
        )
    if cfg.optim.lr <= 0:
        raise ConfigError(f"optim.lr={cfg.optim.lr}: must be > 0")
    if cfg.mix and cfg.mix.get("alpha", 1) <= 0:
        raise ConfigError(f"mix.alpha={cfg.mix.alpha}: must be > 0 (Beta(alpha, alpha))")
    eps = cfg.loss.get("label_smoothing", 0.0)
    if not 0 <= eps < 1:
        raise ConfigError(f"loss.label_smoothing={eps}: must be in [0, 1)")
    if not 0 < cfg.augment.min_scale <= 1:
        raise ConfigError(f"augment.min_scale={cfg.augment.min_scale}: must be in (0, 1]")
    if cfg.tta and cfg.tta.n < 1:
        raise ConfigError(f"tta.n={cfg.tta.n}: must be >= 1")

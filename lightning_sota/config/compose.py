"""The config folder, the resolvers its YAML uses, and composing it outside a Hydra run."""

from __future__ import annotations

from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lightning_sota.config.schema import config_error, validate  # importing it stores the schemas
from lightning_sota.run.launch import rank_suffix, rank_zero, run_time


def config_dir() -> str:
    """``conf/``: inside the installed package (a wheel maps the project's top-level ``conf/``
    to ``lightning_sota/conf``), else beside the package in a checkout."""
    package = Path(__file__).resolve().parent.parent
    inside = package / "conf"
    return str(inside if (inside / "config.yaml").is_file() else package.parent / "conf")


CONFIG_DIR = config_dir()

# ${ls.if_null:x,a,b}: a when x is null, else b. conf/config.yaml picks the run folder with it
# (resume= continues in the run's own folder); oc.select cannot, as it falls back only for a
# missing key and `resume: null` is present.
OmegaConf.register_new_resolver(
    "ls.if_null", lambda value, then, otherwise: then if value is None else otherwise, replace=True
)
# ${ls.pick:key,{key: value, ...},default}: a recipe's value for one scale (experiment/sota.yaml).
OmegaConf.register_new_resolver("ls.pick", lambda key, table, default: table.get(key, default), replace=True)
# ${ls.plus:a,b}: a + b (experiment/fine_tune.yaml: the frozen epochs, then the scale's).
OmegaConf.register_new_resolver("ls.plus", lambda *values: sum(values), replace=True)

# The run folder, its log and its saved config, the same for every rank of a torchrun/srun job.
OmegaConf.register_new_resolver("ls.run_time", run_time, replace=True)
OmegaConf.register_new_resolver("ls.rank_suffix", rank_suffix, replace=True)
OmegaConf.register_new_resolver("ls.rank_zero", rank_zero, replace=True)


def fast_precision(accelerator: str) -> str:
    """bf16-mixed where the device computes bf16 natively; else 16-mixed on a GPU and 32-true
    on a CPU, where emulated bf16 trains slower than fp32 (benchmarks/RESULTS.md)."""
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "16-mixed"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16-mixed" if native else "32-true"


OmegaConf.register_new_resolver("ls.fast_precision", fast_precision, replace=True)


def compose_config(overrides: list[str]) -> DictConfig:
    """The config `python train.py <overrides>` composes (no Hydra run, no run folder), checked
    against the schema; a mistyped override, option or value is refused in one line."""
    try:
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            cfg = compose("config", overrides=list(overrides))
    except (HydraException, OmegaConfBaseException) as err:
        raise config_error(err) from err
    validate(cfg)
    return cfg

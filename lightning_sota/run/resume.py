"""``resume=<run folder>``: continue an interrupted run from its last checkpoint, in its own
folder, with its own config. The command line may repeat the run's settings or move its data and
cache (checkpoint.FREE["resume"]); an override that would change the plan is refused, since the
checkpoint's schedule and phases were made for the old one."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig

from lightning_sota.errors import ConfigError
from lightning_sota.run import layout
from lightning_sota.run.checkpoint import keep_plan, saved_config


@dataclass(frozen=True)
class Resume:
    checkpoint: Path
    step: int  # optimizer steps taken before it: metrics.csv keeps only the rows before this one


def resumed(cfg: DictConfig, overrides: list[str]) -> tuple[DictConfig, Resume]:
    """The interrupted run's config (``cfg.resume`` names its folder) and where to continue.
    ``cfg`` is what the command line composed, ``overrides`` what it typed."""
    folder = Path(cfg.resume)
    path = layout.last_checkpoint(folder)
    if not path.is_file():
        made_now = {p.name for p in folder.iterdir()} == {".hydra", "train.log"} and [
            p.name for p in (folder / ".hydra").iterdir()
        ] == ["resumed"]
        if made_now:  # a mistyped folder, which Hydra has just created: leave no trace
            shutil.rmtree(folder)
        raise ConfigError(
            f"resume={cfg.resume}: no {path.relative_to(folder)} there, nothing to resume; "
            "start a new run without resume="
        )
    ckpt = layout.read_checkpoint(path)
    step = ckpt["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]
    return resumed_config(cfg, saved_config(ckpt), overrides), Resume(path, step)


def resumed_config(current: DictConfig, saved: DictConfig, overrides: list[str]) -> DictConfig:
    """The run's ``saved`` config, with the keys the ``overrides`` may move taken from ``current``."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    # resume= itself is not the run's: its checkpoint keeps the config the run started with
    typed = [o.key_or_group for o in parsed if o.key_or_group != "resume"]
    fix = (
        "a resumed run keeps its own: give resume= alone (data.root= and data.cache_dir= may move), "
        "or start a new run without resume="
    )
    return keep_plan(saved, current, typed, "resume", fix)

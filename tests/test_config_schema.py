"""The config's schema (lightning_sota/config/schema.py): a wrong type, choice, key or range in
any group is refused in one line naming the key, before any data is read."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from lightning_sota.config.checks import check_config
from lightning_sota.config.schema import RunConf, validate
from lightning_sota.errors import ConfigError
from lightning_sota.run.build import build_run

from .conftest import ROOT, config, run_train


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))


# (overrides, the start of the one line that refuses them)
WRONG = [
    (["seed=abc"], "seed: Value 'abc' of type 'str' could not be converted to Integer"),
    (["optim.lr=abc"], "optim.lr: Value 'abc' of type 'str' could not be converted to Float"),
    (["augment.crop=whole"], "augment.crop: Invalid value 'whole', expected one of [square, image]"),
    (["augment.p_flip=2"], "augment.p_flip=2: must be in [0, 1]"),
    (["augment.ratio=[2,1]"], "augment.ratio=[2, 1]: use [low, high] with 0 < low <= high"),
    (["data.holdout=1"], "data.holdout=1: must be in [0, 1)"),
    (["data.variant=200px"], "data.variant: Invalid value '200px', expected one of [160px, 320px, full]"),
    (["model.widen=0"], "model.widen=0: must be > 0"),
    (["model.pretrained=[1]"], "model.pretrained=[1]: use true, false or a weights file"),
    (
        ["normalize=imagenet", "normalize.std=[0.2,0,0.2]"],
        "normalize.std=[0.2, 0, 0.2]: each value must be > 0",
    ),
    (["resize.overfit_batches=-1"], "resize.overfit_batches=-1: must be >= 0"),
    (["resize.phases=[]"], "resize.phases=[]: give at least one {size, batch_size, epochs}"),
    (["mix=mixup", "mix.alpha=0"], "mix.alpha=0: must be > 0"),
    (["loss.label_smoothing=1"], "loss.label_smoothing=1: must be in [0, 1)"),
    (["optim=sgd", "optim.momentum=1"], "optim.momentum=1: must be in [0, 1)"),
    (["optim=ranger", "optim.fused=false"], "optim.fused: Key 'fused' not in 'RangerConf'"),
    (["schedule.pct_start=1.5"], "schedule.pct_start=1.5: must be in [0, 1]"),
    (
        ["schedule=fine_tune_pretrained", "scale.epochs=3", "schedule.freeze_epochs=3"],
        "schedule.freeze_epochs=3: the run has 3 epochs: freeze fewer",
    ),
    (["tta=fastai", "tta.n=0"], "tta.n=0: must be >= 1"),
    (["tta=flip", "tta.mode=both"], "tta.mode: Invalid value 'both', expected one of [augment, flip]"),
    (
        ["weight_averaging=ema", "weight_averaging.multi_avg_fn.decay=1"],
        "weight_averaging.multi_avg_fn.decay=1: must be in (0, 1)",
    ),
    (["trainer.log_every_n_steps=often"], "trainer.log_every_n_steps: Value 'often' of type 'str'"),
    (["+trainer.accumulate_grad_batches=0"], "trainer.accumulate_grad_batches=0: must be an integer >= 1"),
    (["cpu.small_map_gemm=sometimes"], "cpu.small_map_gemm='sometimes': use auto, true or false"),
    (["graphs.capture=sometimes"], "graphs.capture='sometimes': use auto, true or false"),
    (["graphs.warmup=0"], "graphs.warmup=0: must be a positive integer"),
    (["graphs.capture=true"], "graphs.capture=true, but the run is on cpu: CUDA graphs need a GPU: use "),
    (["checkpoint.mode=highest"], "checkpoint.mode: Invalid value 'highest', expected one of [max, min]"),
    (["checkpoint.save_top_k=-1"], "checkpoint.save_top_k=-1: must be >= 0"),
    (["checkpoint.monitor=acc"], "checkpoint.monitor=acc: a run logs holdout_acc, holdout_loss"),
    (["logger.csv.name=[run]"], "logger.csv.name: Cannot convert 'list' to string"),
    (["scale.lr=0"], "scale.lr=0: must be > 0"),
    (
        ["scale=quick", "resize=progressive", "scale.progressive.0.size=96"],
        "scale.progressive=[{'size': 96, 'batch_size': 128, 'epochs': 4}, {'size': 64, 'batch_size': 64, "
        "'epochs': 6}]: sizes [96, 64] decrease",
    ),
    (["lr_find=sometimes"], "lr_find='sometimes': use true, false or only"),
    (["foo=1"], "foo: Key 'foo' not in 'RunConf'"),
    (["+foo=1"], "foo: no such key; the top level takes name, seed, "),
    (["+augment.foo=1"], "augment.foo: no such key; augment takes _target_, min_scale, "),
    (
        ["mix=mixupp"],
        "In 'config': Could not find 'mix/mixupp'; Available options in 'mix': cutmix, mixup, none",
    ),
    (["debug=nope"], "In 'config': Could not find 'debug/nope'"),
    (["hparams_search=nope"], "In 'config': Could not find 'hparams_search/nope'"),
]


@pytest.mark.parametrize(("overrides", "line"), WRONG)
def test_a_wrong_value_in_any_group_is_one_line_before_any_data(tmp_path: Path, overrides, line):
    """What train.py does with the command line until the data (compose, check, build the run),
    in-process: each wrong value stops it there in one line, with nothing read or written."""
    cache, nowhere = tmp_path / "cache", tmp_path / "nowhere"
    with pytest.raises(ConfigError) as refusal:
        cfg = config(
            *overrides,
            f"data.root={nowhere}",
            "data.download=false",
            f"data.cache_dir={cache}",
            f"logger.csv.save_dir={tmp_path / 'run'}",
        )
        check_config(cfg)
        build_run(cfg, tmp_path / "run")
    message = str(refusal.value)
    assert message.startswith(line) and "\n" not in message
    assert not cache.exists() and not nowhere.exists()


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("seed=abc", "error: seed: Value 'abc' of type 'str' could not be converted to Integer"),
        ("augment.p_flip=2", "error: augment.p_flip=2: must be in [0, 1]"),
    ],
)
def test_the_cli_refuses_in_one_line_without_a_traceback(tmp_path: Path, override, line):
    """seed=abc is refused by Hydra while it composes (it would print its own report), p_flip=2
    by the schema's ranges in the job: both end the same way (as a user meets them: without
    HYDRA_FULL_ERROR, which asks Hydra for its traceback)."""
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = run_train(override, f"data.root={tmp_path / 'nowhere'}", tmp=tmp_path, ok=False, env=env)
    assert (proc.returncode, proc.stderr.splitlines()) == (2, [line])
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("scale", options("scale"))
def test_every_experiment_composes_at_every_scale(scale):
    for experiment in options("experiment"):
        cfg = config(f"+experiment={experiment}", f"scale={scale}")  # validated as it composes
        assert OmegaConf.get_type(cfg) is RunConf and cfg.scale.name == scale


@pytest.mark.parametrize(
    "group",
    [
        "data",
        "model",
        "normalize",
        "augment",
        "resize",
        "mix",
        "loss",
        "optim",
        "schedule",
        "tta",
        "weight_averaging",
        "trainer",
        "cpu",
        "logger",
        "scale",
    ],
)
def test_every_option_is_typed_by_its_schema(group):
    """Each option's YAML lists its schema (an empty one, mix=none or tta=none, has no keys)."""
    for option in options(group):
        node = config(f"{group}={option}")[group]
        assert dataclasses.is_dataclass(OmegaConf.get_type(node)) or node == {}, f"{group}={option}"


def test_switches_are_typed_and_open_groups_take_new_keys():
    """A bool key converts what YAML calls false (a string such as "no" would be truthy); the
    trainer takes Lightning's other options, and a user's callbacks."""
    cfg = config(
        "model.blur_pool=no",
        "tta=fastai",
        "tta.use_max=false",
        "+trainer.gradient_clip_algorithm=value",
        "+callbacks.stop._target_=pytorch_lightning.callbacks.EarlyStopping",
    )
    assert cfg.model.blur_pool is False and cfg.tta.use_max is False
    assert cfg.trainer.gradient_clip_algorithm == "value" and "stop" in cfg.callbacks


def test_a_checkpoints_config_is_checked_against_the_schema():
    """evaluate, predict, export and resume= read a run's config back as plain values: the
    schema types and checks it too (the overrides those commands may take)."""
    saved = OmegaConf.to_container(config("scale=smoke", "~logger"), resolve=True, enum_to_str=True)
    validate(OmegaConf.create(saved))
    for key, value, line in [
        ("augment.p_flip", 2, "augment.p_flip=2: must be in [0, 1]"),
        ("data.variant", "200px", "data.variant: Invalid value '200px', expected one of"),
        ("cpu.small_map_gemm", "yes", "cpu.small_map_gemm='yes': use auto, true or false"),
        ("data.surprise", 1, "data.surprise: Key 'surprise' not in 'DataConf'"),
    ]:
        cfg = OmegaConf.create(saved)
        OmegaConf.update(cfg, key, value, force_add=True)
        with pytest.raises(ConfigError) as refusal:
            validate(cfg)
        assert str(refusal.value).startswith(line)

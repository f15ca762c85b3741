"""conf/cpu: the CPU-only speed-ups are on for CPU runs (auto), off for any other device, refused
there when asked for, and never change what a checkpoint holds."""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from lightning_sota.config.checks import check_config
from lightning_sota.cpu import CpuTuning
from lightning_sota.cpu.small_map_conv import SmallMapConv2d
from lightning_sota.errors import ConfigError
from lightning_sota.run.build import build_module, cpu_tuning
from lightning_sota.run.checkpoint import keep_plan, saved_config

from .conftest import config

CLASSES = [str(i) for i in range(10)]


def module_for(device: str, *overrides: str):
    cfg = config("scale=smoke", "~logger", *overrides)
    return build_module(cfg, CLASSES, cpu_tuning(cfg, torch.device(device)))


def small_map_convs(module) -> int:
    return sum(isinstance(m, SmallMapConv2d) for m in module.modules())


def test_a_model_built_for_a_gpu_is_plain_torch_and_keeps_the_cpu_models_state_dict():
    """No CUDA is needed to build for one: the device only decides the tuning."""
    cpu, gpu = module_for("cpu"), module_for("cuda")
    assert small_map_convs(cpu) == 19 and small_map_convs(gpu) == 0
    assert {type(m) for m in gpu.modules()} & {SmallMapConv2d} == set()
    assert cpu.cpu_tuning == {"small_map_gemm": True, "reuse_host_memory": True}
    assert gpu.cpu_tuning == {"small_map_gemm": False, "reuse_host_memory": False}
    assert cpu.state_dict().keys() == gpu.state_dict().keys()
    assert small_map_convs(module_for("cpu", "cpu=off")) == 0


@pytest.mark.parametrize("key", ["small_map_gemm", "reuse_host_memory"])
def test_each_switch_is_honoured_or_refused(key):
    assert getattr(CpuTuning.for_device("cpu", **{key: False}), key) is False
    assert getattr(CpuTuning.for_device("cpu", **{key: True}), key) is True
    assert getattr(CpuTuning.for_device("cuda:0", **{key: "auto"}), key) is False
    with pytest.raises(
        ConfigError, match=rf"^cpu.{key}=true: the run is on cuda, .*use cpu.{key}=auto or false$"
    ):
        CpuTuning.for_device("cuda", **{key: True})
    with pytest.raises(ConfigError, match=rf"^cpu.{key}='on': use auto, true or false$"):
        check_config(config(f"cpu.{key}=on"))


def test_the_cpu_run_only_switches_reach_the_model_from_the_config():
    assert small_map_convs(module_for("cpu", "cpu.small_map_gemm=false")) == 0
    with pytest.raises(ConfigError, match="cpu.small_map_gemm=true: the run is on cuda"):
        module_for("cuda", "cpu.small_map_gemm=true")


def test_a_checkpoint_from_before_cpu_tuning_reads_back_with_auto():
    """Earlier checkpoints kept the switch in the model's config and had no cpu group."""
    old = OmegaConf.to_container(config("scale=smoke", "~logger"), resolve=True)
    del old["cpu"]
    old["model"]["small_map_gemm"] = True
    cfg = saved_config({"lightning_sota": {"config": old}})
    assert "small_map_gemm" not in cfg.model
    assert small_map_convs(build_module(cfg, CLASSES, cpu_tuning(cfg, torch.device("cpu")))) == 19


def test_a_command_on_a_checkpoint_takes_a_switch_not_a_group():
    """evaluate's `cpu=off` is key=value, read as cpu: false: it would have replaced the group and
    been ignored; it is refused, and `cpu.small_map_gemm=false` is taken."""
    saved = OmegaConf.create(OmegaConf.to_container(config("scale=smoke", "~logger"), resolve=True))

    def evaluate_with(override: str):
        proposed = OmegaConf.merge(saved, OmegaConf.from_dotlist([override]))
        return keep_plan(saved, proposed, [override.split("=")[0]], "evaluate", "fix")

    with pytest.raises(ConfigError, match=r"^cpu= is a group of settings: give its keys one by one"):
        evaluate_with("cpu=off")
    assert evaluate_with("cpu.small_map_gemm=false").cpu.small_map_gemm is False

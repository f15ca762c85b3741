"""Speed-ups for runs on a CPU, in one place, applied only when the run's device is the CPU.

``conf/cpu/`` sets each to ``auto`` (on for a CPU run, off elsewhere), ``true`` (a CPU run only:
refused on another device, where it would do nothing) or ``false``. A model built for a GPU is
plain timm/torch. Neither changes a state_dict: checkpoints read the same either way.

- ``small_map_gemm``: 3x3 convolutions onto maps of at most 2x2 as per-position GEMMs
  (small_map_conv.py); oneDNN's convolution is slow at that shape.
- ``reuse_host_memory``: glibc keeps freed step buffers mapped (host_memory.py), so a CPU step
  does not page-fault its activations in anew.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError
from .host_memory import reuse_freed_host_memory
from .small_map_conv import use_small_map_gemm

Switch = bool | Literal["auto"]


def _decide(name: str, value: Switch, device: torch.device) -> bool:
    on_cpu = device.type == "cpu"
    if value == "auto":
        return on_cpu
    if value is True and not on_cpu:
        raise ConfigError(
            f"cpu.{name}=true: the run is on {device.type}, and it only speeds up CPU runs: "
            f"use cpu.{name}=auto or false"
        )
    return bool(value)


@dataclass(frozen=True)
class CpuTuning:
    """Which CPU speed-ups a run on one device uses; results.json records ``asdict`` of it."""

    small_map_gemm: bool
    reuse_host_memory: bool

    @classmethod
    def for_device(
        cls, device: torch.device | str, small_map_gemm: Switch = "auto", reuse_host_memory: Switch = "auto"
    ) -> CpuTuning:
        device = torch.device(device)
        return cls(
            _decide("small_map_gemm", small_map_gemm, device),
            _decide("reuse_host_memory", reuse_host_memory, device),
        )

    def apply(self, model: nn.Module, process: bool = True) -> dict[str, bool]:
        """Tune ``model`` (in place) and, with ``process``, this process's allocator; returns what
        is on, for results.json. A library call (``load_run``) passes ``process=False``: glibc's
        settings belong to the program that imported us."""
        reuse = self.reuse_host_memory and process
        if reuse:
            reuse_freed_host_memory()
        if self.small_map_gemm:
            use_small_map_gemm(model)
        return asdict(self) | {"reuse_host_memory": reuse}

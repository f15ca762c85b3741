"""weight_averaging=ema: Lightning's WeightAveraging with an average that never reads the device.

torch's ``AveragedModel.update_parameters`` compares its on-device step count with 0 twice per
update, and each comparison makes the host wait for the GPU: at every optimizer step. Here the
count is mirrored on the host, read from the device only when a checkpoint is loaded.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import WeightAveraging
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype


class HostCountedAverage(AveragedModel):
    """An AveragedModel (``use_buffers=True``, a ``multi_avg_fn``) whose update reads nothing
    back from the device."""

    def __init__(self, model: nn.Module, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not self.use_buffers or self.multi_avg_fn is None:
            raise ValueError("HostCountedAverage averages buffers too, with a multi_avg_fn")
        self.updates = 0  # n_averaged, as the host knows it

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.updates = int(self.n_averaged)  # once per load, not per step

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        averaged = [t.detach() for t in (*self.module.parameters(), *self.module.buffers())]
        current = [
            t.detach().to(a.device)  # a no-op unless the average lives elsewhere (``device=``)
            for t, a in zip((*model.parameters(), *model.buffers()), averaged, strict=True)
        ]
        if self.updates == 0:
            torch._foreach_copy_(averaged, current)
        else:  # grouped as torch's own update groups them: one foreach call per device and dtype
            groups = _group_tensors_by_device_and_dtype([averaged, current])
            for (device, _), ([avg, cur], _) in groups.items():
                self.multi_avg_fn(avg, cur, self.n_averaged.to(device))
        self.n_averaged += 1
        self.updates += 1


class EMA(WeightAveraging):
    """WeightAveraging whose average is a HostCountedAverage; the rest is Lightning's (the swap
    for validation, the average in the checkpoint, the copy into the model at the end)."""

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            device = self._device or pl_module.device
            self._average_model = HostCountedAverage(
                pl_module, device=device, use_buffers=self._use_buffers, **self._kwargs
            )

    @property
    def state_key(self) -> str:
        return "WeightAveraging"  # the key of checkpoints written with Lightning's own callback

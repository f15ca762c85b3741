"""debug=kernels: what a training step costs the GPU and the host, measured in the run itself.

torch.profiler over ``steps`` training steps of each phase's first epoch, from its ``start``-th
step (past the warm-up and, with graphs=auto, the capture: training/graphs.py): per phase, the
kernels a step launches, the wall time a step takes and how busy the GPU was in it (kernel time
over wall time: near 100 the model sets the pace, far below it the host does), and the ATen calls
the host makes a step (a replayed graph makes none). On a CPU there are no kernels.
An epoch shorter than the window ends it. Written to ``path`` (kernels.json) at the end.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch

from lightning_sota.files import write_json


class StepProfile(pl.Callback):
    def __init__(self, path: str, start: int = 10, steps: int = 20) -> None:
        self.path, self.start, self.steps = Path(path), start, steps
        self.phases: list[dict] = []
        self._profiler: torch.profiler.profile | None = None
        self._began = 0.0
        self._sizes: set[tuple] = set()  # the batch shapes profiled: one window a phase

    def _sync(self, trainer: pl.Trainer) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        shape = tuple(batch["image"].shape)
        if batch_idx != self.start or shape in self._sizes:
            return
        self._sizes.add(shape)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if trainer.strategy.root_device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._sync(trainer)  # the window holds these steps' work only
        self._profiler = torch.profiler.profile(activities=activities)
        self._profiler.__enter__()
        self._began = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        steps = min(self.start + self.steps, trainer.num_training_batches) - self.start  # a short epoch's
        if self._profiler is None or batch_idx != self.start + steps - 1:
            return
        self._sync(trainer)
        wall_ms = 1e3 * (time.perf_counter() - self._began)
        profiler, self._profiler = self._profiler, None
        profiler.__exit__(None, None, None)
        events = profiler.key_averages()
        kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
        busy_ms = sum(e.self_device_time_total for e in kernels) / 1e3
        calls = sum(e.count for e in events if e.key.startswith("aten::"))  # nested calls too
        self.phases.append(
            {
                "epoch": trainer.current_epoch,
                "size": int(batch["size"]),
                "batch_size": len(batch["label"]),
                "steps": steps,
                "wall_ms_per_step": round(wall_ms / steps, 2),
                "kernels_per_step": round(sum(e.count for e in kernels) / steps, 1) if kernels else None,
                "gpu_busy_percent": round(100 * busy_ms / wall_ms, 1) if kernels else None,
                "aten_calls_per_step": round(calls / steps, 1),
                "cuda_graphs": pl_module.graphs.report(),
            }
        )

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            write_json(self.path, {"device": str(trainer.strategy.root_device), "phases": self.phases})

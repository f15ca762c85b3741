"""The ATen ops a training step runs, with the numbers the host passes them: what a captured
CUDA graph would freeze. benchmarks/host_overhead.py counts them; tests/test_capturable.py holds
the step to none that change from one step to the next."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# no kernel: a new view of existing memory, an allocation, or a read of a host value
NO_KERNEL = {aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default,
             aten.detach.default, aten.lift_fresh.default, aten._local_scalar_dense.default,
             aten.alias.default}  # fmt: skip


def host_args(args: tuple, kwargs: dict) -> tuple:
    """The op's arguments that the host passes by value (numbers, shapes, flags), tensors left out."""

    def plain(a):
        if isinstance(a, torch.Tensor):
            return "T"
        if isinstance(a, (list, tuple)):
            return tuple(plain(b) for b in a)
        # an object (a profiler record's handle, a device) by its type: its address is no argument
        return a if isinstance(a, (int, float, bool, str, type(None))) else type(a).__name__

    return plain(args) + tuple(sorted((k, plain(v)) for k, v in kwargs.items()))


class OpLog(TorchDispatchMode):
    """Each ATen op run under it, with its host arguments; ``kernels``: those that launch one."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops.append((str(func), host_args(args, kwargs)))
        if func not in NO_KERNEL and not func.is_view:
            self.kernels += 1
        return func(*args, **kwargs)


def changing(a: OpLog, b: OpLog) -> list[str]:
    """The ops of two steps whose host arguments differ; the whole sequence if the ops differ."""
    if [op for op, _ in a.ops] != [op for op, _ in b.ops]:
        return ["<the op sequences differ>"]
    return [op for (op, x), (_, y) in zip(a.ops, b.ops, strict=True) if x != y]

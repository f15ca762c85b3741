"""Whether each training step's loss was finite, on this rank and on every rank, read by the host
one step late so that it never waits for the GPU's forward (tests/test_host_syncs.py)."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import Tensor

from lightning_sota.errors import NonFiniteLossError


class FiniteLoss:
    """The last step's verdict (finite here, finite on every rank, the loss), queued by ``watch``
    and acted on by ``settle``: at the next step (its forward long done), before validation and
    before a checkpoint is written, so no checkpoint holds weights stepped from a non-finite loss.
    Every rank reads the same verdict at the same step: a rank that stopped alone would leave the
    others blocked in the gradient all-reduce until the process-group timeout. ``stop``: raise the
    one-line error; lr_find turns it off (its search ends where the loss blows up), and a
    non-finite loss then only ends the fit."""

    def __init__(self) -> None:
        self.stop = True
        self._verdict: tuple[Tensor, torch.cuda.Event | None, int, int] | None = None
        self._host: Tensor | None = None  # pinned: the verdict's copy, read without a device wait

    def watch(self, loss: Tensor, epoch: int, step: int) -> None:
        """Queue the verdict on ``loss`` (of optimizer step ``step`` in ``epoch``) without waiting
        for it: an on-device all-reduce across the ranks, a copy to pinned host memory."""
        loss = loss.detach().float()
        here = torch.isfinite(loss).float()
        everywhere = here.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # not strategy.reduce: Lightning's puts a barrier (a host wait on NCCL) before it
            torch.distributed.all_reduce(everywhere, op=torch.distributed.ReduceOp.MIN)
        verdict, event = torch.stack([here, everywhere, loss]), None
        if verdict.is_cuda:
            if self._host is None:
                self._host = torch.empty(3, pin_memory=True)
            verdict = self._host.copy_(verdict, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        self._verdict = (verdict, event, epoch, step)

    def settle(self, trainer: pl.Trainer | None) -> None:
        """Act on the queued verdict, if any: stop every rank with the one-line error (or, without
        ``stop``, end ``trainer``'s fit) when a loss was not finite."""
        if self._verdict is None:
            return
        (verdict, event, epoch, step), self._verdict = self._verdict, None
        if event is not None:
            event.synchronize()
        if verdict[1]:  # finite on every rank: one value read, from host memory
            return
        here, value = bool(verdict[0]), float(verdict[2])
        if not self.stop:
            trainer.should_stop = True
            return
        where = f"loss is {value}" if not here else "the loss of another DDP rank is not finite"
        raise NonFiniteLossError(
            f"{where} at epoch {epoch}, step {step}: training stopped "
            "(the last good checkpoint is kept); lower optim.lr or try trainer.precision=32"
        )

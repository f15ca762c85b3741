"""No training, validation or TTA step makes the host wait for a GPU: proven on the CPU.

The steps run on fake CUDA tensors (torch's FakeTensorMode: shapes, dtypes and a ``cuda`` device,
no values, no driver) under ``NoHostSync``, a dispatch mode that fails on what would make the
host wait for a GPU. Backward, autocast and a real CUDA event need a driver, so the gradients are
set by hand and the event is a stand-in; gather, augmentation, normalization, MixUp/CutMix,
forward, loss, the finite-loss verdict, the optimizer step and the EMA update all run.
"""

from __future__ import annotations

import itertools
import threading
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from pytorch_lightning.plugins.precision import Precision
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torchmetrics import Metric

from lightning_sota.data import datamodule as data_module
from lightning_sota.run.build import build_module, cpu_tuning
from lightning_sota.run.plan import prepared_data
from lightning_sota.training.callbacks import HostSyncCount
from lightning_sota.training.weight_averaging import HostCountedAverage

from .conftest import config

aten = torch.ops.aten
# torch has no meta kernel for the fused AdamW with a tensor lr (optim.FusedRAdamW's), which fake
# tensors run on: it updates its arguments in place and returns nothing, so a no-op is its meta
if not torch._C._dispatch_has_kernel_for_dispatch_key("aten::_fused_adamw_.tensor_lr", "Meta"):
    _META = torch.library.Library("aten", "IMPL")
    _META.impl("_fused_adamw_.tensor_lr", lambda *args, **kwargs: None, "Meta")
CUDA = torch.device("cuda", 0)
# the steps run without a Trainer, where Lightning's self.log only warns
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


class HostSync(AssertionError):
    pass


class NoHostSync(TorchDispatchMode):
    """Fails (``strict``) on a read of a CUDA tensor's value (``aten._local_scalar_dense``:
    ``.item()``, ``bool()``, ``if tensor``), a copy from the host to a CUDA tensor (from pageable
    memory it waits for the device) and a blocking copy from a CUDA tensor to the host. Reads of
    host tensors are counted in ``host_reads`` (the finite-loss verdict, read from pinned memory)
    and answered with a stand-in value: fake tensors hold none. So is MixUp's Beta draw, which
    has no fake kernel: a tensor of its shape on its device."""

    def __init__(self, strict: bool = True) -> None:
        super().__init__()
        self.strict, self.host_reads = strict, 0

    def fail(self, what: str) -> None:
        if self.strict:
            raise HostSync(what)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is aten._local_scalar_dense.default:
            (tensor,) = args
            if tensor.is_cuda:
                self.fail(f"the host reads the value of a CUDA tensor of shape {tuple(tensor.shape)}")
            else:
                self.host_reads += 1
            return True if tensor.dtype == torch.bool else 1
        if func is aten._sample_dirichlet.default:
            return torch.empty_like(args[0])
        if func is aten._to_copy.default:
            target = torch.device(kwargs.get("device") or args[0].device)
            self.check_copy(args[0].device, target, kwargs.get("non_blocking", False))
        if func is aten.copy_.default:
            self.check_copy(args[1].device, args[0].device, kwargs.get("non_blocking", args[2:3] == (True,)))
        return func(*args, **kwargs)

    def check_copy(self, source: torch.device, target: torch.device, non_blocking: bool) -> None:
        if source.type == "cpu" and target.type == "cuda":
            self.fail("a copy from the host to a CUDA tensor")
        if source.type == "cuda" and target.type == "cpu" and not non_blocking:
            self.fail("a blocking copy from a CUDA tensor to the host")


class StandInEvent:
    """torch.cuda.Event without a driver; ``synchronize`` is the verdict's one wait, counted."""

    waits = 0

    def record(self) -> None:
        pass

    def synchronize(self) -> None:
        StandInEvent.waits += 1


def to_fake_cuda(module: nn.Module, mode: FakeTensorMode) -> None:
    """Every parameter, buffer and metric state of ``module`` replaced by a fake CUDA tensor of
    its shape and dtype (what ``module.cuda()`` would give, without a GPU)."""

    def fake(t: torch.Tensor) -> torch.Tensor:
        return FakeTensor(mode, torch.empty_like(t, device="meta"), CUDA)

    for m in module.modules():
        for name, p in m._parameters.items():
            if p is not None:
                m._parameters[name] = nn.Parameter(fake(p.detach()), p.requires_grad)
        for name, b in m._buffers.items():
            if b is not None:
                m._buffers[name] = fake(b)
        if isinstance(m, Metric):  # its states and their defaults, as Metric._apply moves them
            for name, default in m._defaults.items():
                setattr(m, name, fake(getattr(m, name)))
                m._defaults[name] = fake(default)


@pytest.fixture
def fake_gpu(monkeypatch):
    """The fake-tensor mode, a stand-in CUDA event, and a GPU whose free memory is unknown (so
    the caches go to it as data.on_device=true asks)."""
    monkeypatch.setattr(torch.cuda, "Event", StandInEvent)
    monkeypatch.setattr(data_module, "free_bytes", lambda device: None)
    StandInEvent.waits = 0
    return FakeTensorMode(allow_non_fake_inputs=True)


def on_fake_gpu(mode: FakeTensorMode, overrides: list[str], mini, tmp_path):
    """The config, the data (caches resident on the fake GPU), the module and the weight average
    (or None) of a smoke run of ``overrides``, built for CUDA as a GPU run builds them, then
    made of fake CUDA tensors (the average as EMA.setup makes it, on the module's device)."""
    where = [f"data.root={mini}", f"data.cache_dir={tmp_path}", "data.on_device=true"]
    cfg = config(*overrides, "scale=smoke", *where, "~logger")
    data, plan = prepared_data(cfg)
    with mode:
        data.place(CUDA, upload=True)
    module = build_module(cfg, data.classes, cpu_tuning(cfg, CUDA))
    module.plan = plan
    average = None
    if cfg.get("weight_averaging"):
        average = HostCountedAverage(module, use_buffers=True, **instantiate(cfg.weight_averaging)._kwargs)
        to_fake_cuda(average, mode)
    to_fake_cuda(module, mode)
    return cfg, data, module, average


def set_grads(module) -> None:
    for p in module.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)


STEPS = 7  # ranger's fused RAdam starts at step 6; the last step is the one held to no syncs


@pytest.mark.parametrize(
    "overrides",
    [
        ["+experiment=sota"],
        ["+experiment=mixup"],
        ["mix=cutmix"],
        ["weight_averaging=ema"],
        ["normalize=batch"],
    ],
    ids=["sota", "mixup", "cutmix", "ema", "normalize_batch"],
)
def test_a_training_step_never_waits_for_the_gpu(fake_gpu, overrides, mini, tmp_path):
    cfg, data, module, average = on_fake_gpu(fake_gpu, overrides, mini, tmp_path)
    optimizer = module.optimizer_factory(module.model)
    with fake_gpu:  # the epoch's index matrix goes to the (fake) GPU here
        loader = data.train_dataloader()
    # outside: an iterator draws its seed from a real host tensor; the mini set's epoch may be
    # shorter than STEPS, so the next one's batches follow
    batches = itertools.chain(iter(loader), iter(loader))
    for step in range(STEPS):
        guard = NoHostSync(strict=step == STEPS - 1)  # the first steps set up state (first reads)
        with fake_gpu:
            set_grads(module)
        with fake_gpu, guard:
            batch = next(batches)
            loss = module.training_step(batch, step)
            optimizer.step()
            module.after_step(loss, len(batch["label"]))
            if average is not None:
                average.update_parameters(module)
    assert loss.is_cuda and batch["image"].is_cuda
    # the one wait a step makes: for the previous step's finite-loss verdict (copied to pinned
    # host memory a step earlier, so its forward is long done); CutMix also reads its own draws,
    # made by the host's generator on host tensors
    assert StandInEvent.waits == STEPS - 1 and guard.host_reads >= 1


def test_validation_and_tta_steps_never_wait_for_the_gpu(fake_gpu, mini, tmp_path):
    cfg, data, module, _ = on_fake_gpu(fake_gpu, ["+experiment=sota"], mini, tmp_path)
    module.eval()
    tta = instantiate(cfg.tta)
    trainer = type("Trainer", (), {"precision_plugin": Precision()})()
    with fake_gpu:
        tta._correct, tta._total = torch.zeros((), device=CUDA), torch.zeros((), device=CUDA)
        loader = data.val_dataloader()
    batches = iter(loader)
    with fake_gpu, NoHostSync() as guard:
        for batch_idx, batch in enumerate(batches):
            module.validation_step(batch, batch_idx)
            centre = module.test_step(batch, batch_idx)
            tta.on_test_batch_end(trainer, module, centre, batch, batch_idx)
    assert guard.host_reads == 0 and batch["image"].is_cuda and tta._total.is_cuda


def test_the_guard_catches_each_kind_of_wait(fake_gpu):
    """What the steps above are held to, shown to fail: a pageable upload (what a per-batch
    ``index.to(device)`` is), a read of a CUDA value and a blocking download."""
    with fake_gpu:
        on_gpu = torch.zeros(4, device=CUDA)
    for wait, message in [
        (lambda: torch.from_numpy(np.arange(4)).to(CUDA), "a copy from the host to a CUDA tensor"),
        (lambda: bool(on_gpu.sum() > 0), "the host reads the value of a CUDA tensor"),
        (lambda: on_gpu.cpu(), "a blocking copy from a CUDA tensor to the host"),
    ]:
        with pytest.raises(HostSync, match=message), fake_gpu, NoHostSync():
            wait()
    with fake_gpu, NoHostSync() as guard:
        on_gpu.to("cpu", non_blocking=True)  # into host memory without a wait: allowed
    assert guard.host_reads == 0


def test_sync_count_keeps_another_threads_waits_apart(monkeypatch, tmp_path):
    """debug=syncs' counts per step are the loop's own: a wait on another thread (Lightning's
    AsyncCheckpointIO writing the last checkpoint, whose copies to the host wait there) is counted
    apart. torch's sync debug mode needs a driver, so its warning is raised here as torch raises
    it: a UserWarning on the thread that waits."""
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)
    count = HostSyncCount(str(tmp_path / "syncs.json"))
    trainer = SimpleNamespace(current_epoch=1, strategy=SimpleNamespace(root_device=CUDA))

    def wait(where: str) -> None:
        warnings.warn(f"called a synchronizing CUDA operation ({where})", UserWarning, stacklevel=1)

    shown = warnings.showwarning
    count.on_train_epoch_start(trainer, None)
    for step in range(3):
        wait("loop")
        count.on_train_batch_end(trainer, None, None, None, step)
    writer = threading.Thread(target=lambda: [wait("writer") for _ in range(5)])
    writer.start()
    writer.join()
    warnings.warn("not a wait", UserWarning, stacklevel=1)
    count.on_validation_epoch_start(trainer, None)
    count.on_validation_batch_end(trainer, None, None, None, 0)
    wait("loop")
    count.on_validation_epoch_end(trainer, None)
    (epoch,) = count.epochs
    counts = (epoch["train_steps"], epoch["train_waits"], epoch["val_batches"], epoch["val_waits"])
    assert counts == (3, 3, 1, 1)
    assert epoch["background_waits"] == 5 and sum(epoch["background_where"].values()) == 5
    assert sum(epoch["train_where"].values()) == 3 and sum(epoch["val_where"].values()) == 1
    assert warnings.showwarning is shown  # put back as it was

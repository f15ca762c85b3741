"""The training step as CUDA graphs (training/graphs.py): where it runs and why not, in one line
when asked for where it cannot; and, on the CPU with a stand-in for a graph's replay, that the
loop around replayed steps (static batch buffers, the closure at a replay, the optimizer's host
counts and Lookahead's update after it, a new shape per phase) trains exactly as eager steps do.
The captured step itself is test_cuda.py's (a GPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from pytorch_lightning.plugins.precision import MixedPrecision
from torch import nn

from lightning_sota.augment.mix import CutMix, MixUp
from lightning_sota.errors import ConfigError
from lightning_sota.training.graphs import StepGraphs, blockers
from lightning_sota.training.schedule import one_cycle

from .conftest import MINI, config, results, train_here

CUDA = torch.device("cuda")


def ranger(model: nn.Module):
    return instantiate(config("optim=ranger").optim)(model)


def trainer(device: torch.device, world_size: int, precision: str, accumulate: int) -> SimpleNamespace:
    """What blockers reads of a Trainer (a real one here cannot be on a GPU)."""
    strategy = SimpleNamespace(root_device=device)
    return SimpleNamespace(
        strategy=strategy, world_size=world_size, precision=precision, accumulate_grad_batches=accumulate
    )


def test_a_step_is_captured_only_where_nothing_stops_it():
    """Each reason a run steps eagerly, named; none for sota's step on one GPU (ranger, flat_cos,
    bf16-mixed, MixUp)."""
    model = small_model()
    optimizer = ranger(model)
    flat = one_cycle(optimizer, [(10, 1)], 1e-3, div=1, pct_start=0.75, moms=None)
    assert blockers(trainer(CUDA, 1, "bf16-mixed", 1), MixUp(0.4), False, optimizer, flat) == []
    adam = instantiate(config("optim=adam").optim)(model)
    cycled = one_cycle(adam, [(10, 1)], 1e-3)
    cpu_ddp = trainer(torch.device("cpu"), 2, "16-mixed", 2)
    said = blockers(cpu_ddp, CutMix(1.0), "reduce-overhead", adam, cycled)
    assert [line.split(":")[0].split(" ")[0] for line in said] == [
        "the", "the", "trainer.precision=16-mixed", "trainer.accumulate_grad_batches", "mix=cutmix",
        "model.compile=reduce-overhead", "AdamW", "schedule.moms",
    ]  # fmt: skip
    assert said[0] == "the run is on cpu: CUDA graphs need a GPU"


def small_model() -> nn.Module:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 8, 8))
    return model


def test_a_capture_waits_for_radams_fused_steps_and_ends_with_the_state_it_read():
    """settled: RAdam's next step is the fused one (after its five momentum steps), the step a
    graph may capture; unchanged: False once the state a graph read is cleared (fastai's
    clear_state between fine_tune's cycles) or loaded, which drops the graph (StepGraphs.step)."""
    model = small_model()
    optimizer = ranger(model)

    def step() -> None:
        model(torch.ones(2, 3, 8, 8)).sum().backward()
        optimizer.step()
        optimizer.zero_grad()

    settled = []
    for _ in range(6):
        step()
        settled.append(optimizer.settled())
    assert settled == [False, False, False, False, True, True] and optimizer.unchanged()
    saved = optimizer.state_dict()
    optimizer._base_optimizer.state.clear()
    assert not optimizer.unchanged()
    step()
    assert optimizer.unchanged() and not optimizer.settled()  # its count starts over
    optimizer.load_state_dict(saved)
    assert not optimizer.unchanged()
    step()
    assert optimizer.unchanged() and optimizer.settled()


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_lightnings_autocast_keeps_no_weight_cache(precision):
    """A cast weight cached by autocast outlives the step: a captured step must cast anew."""
    assert MixedPrecision(precision, "cpu").autocast_context_manager()._cache_enabled is False


def test_capture_true_is_refused_in_one_line_and_auto_or_false_say_why_not():
    with pytest.raises(ConfigError) as refusal:
        StepGraphs(capture=True).decide(["the run is on cpu: CUDA graphs need a GPU"])
    assert str(refusal.value) == (
        "graphs.capture=true, but the run is on cpu: CUDA graphs need a GPU: use graphs.capture=auto or false"
    )
    auto, off, free = StepGraphs("auto"), StepGraphs(False), StepGraphs("auto")
    auto.decide(["the run is on cpu: CUDA graphs need a GPU"])
    off.decide([])
    free.decide([])
    assert (auto.on, auto.why, off.on, off.why, free.on, free.why) == (
        False, "the run is on cpu: CUDA graphs need a GPU", False, "graphs.capture=false", True, None,
    )  # fmt: skip


def cache_batch(side: int, value: int, labels: list[int]) -> dict:
    image = torch.full((len(labels), side, side, 3), value, dtype=torch.uint8)
    return {"image": image, "label": torch.tensor(labels), "size": side}


def staged(graphs: StepGraphs, batch: dict) -> dict:
    graphs.stage(batch)
    return batch


def test_a_batch_is_staged_into_its_shapes_buffers():
    graphs = StepGraphs()
    first = staged(graphs, cache_batch(4, 1, [0, 1]))
    buffers = {k: first[k].data_ptr() for k in ("image", "label")}
    graphs._graph = object()  # a graph of this shape
    second = staged(graphs, cache_batch(4, 7, [1, 0]))
    assert {k: second[k].data_ptr() for k in buffers} == buffers  # the same memory, the new batch
    assert second["image"].eq(7).all() and second["label"].tolist() == [1, 0] and second["size"] == 4
    assert graphs._graph is not None
    larger = staged(graphs, cache_batch(8, 1, [0, 0]))
    assert larger["image"].data_ptr() != buffers["image"] and larger["image"].shape == (2, 8, 8, 3)
    assert graphs._graph is None  # a new shape lets the last shape's graph go


class Rerun:
    """A CUDA graph's stand-in on the CPU: a replay runs the captured step's work again, on the
    same static batch buffers, with the optimizer's host side deferred as under a graph, and
    writes its loss into the same output tensor."""

    def __init__(self, run: Callable[[], object], loss: torch.Tensor) -> None:
        self.run, self.loss = run, loss

    def replay(self) -> None:
        self.loss.copy_(self.run())


class CpuStepGraphs(StepGraphs):
    """StepGraphs with Rerun for torch.cuda.CUDAGraph and the current stream for the side one:
    every other part of the loop around a captured step runs as on a GPU."""

    def decide(self, reasons: list[str]) -> None:
        super().decide([r for r in reasons if "CUDA graphs need a GPU" not in r])

    def _run_eager(self, run: Callable[[], object]) -> None:
        run()

    def _capture(self, run: Callable[[], object]) -> tuple[Rerun, torch.Tensor]:
        loss = torch.zeros(())  # a capture runs nothing: the replay that follows it does
        return Rerun(run, loss), loss


class FailingCapture(CpuStepGraphs):
    """A capture that fails, as one with an op that a CUDA graph refuses does."""

    def _capture(self, run: Callable[[], object]) -> tuple[Rerun, torch.Tensor]:
        raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors ...")


class StepLosses(pl.Callback):
    """Every training step's loss, as the loop received it."""

    seen: list[list[float]] = []

    def on_fit_start(self, trainer, pl_module) -> None:
        StepLosses.seen.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        StepLosses.seen[-1].append(float(outputs["loss"]))


# sota's step with MixUp (device draws) over 75 steps: two shapes, each captured after its
# warm-up, Lookahead's k-th updates between replays, and fine_tune's fresh optimizer state at each
# of its cycles (the second phase's two epochs), which drops the graph that read the old state
STEPS = [
    "+experiment=sota",
    "mix=mixup",
    "schedule=fine_tune",
    "schedule.moms=null",
    "resize.phases=[{size:16,batch_size:8,epochs:1},{size:24,batch_size:8,epochs:2}]",
    "model.arch=xresnet18",
    "model.widen=0.25",
    "tta=none",
    "+callbacks.steps._target_=tests.test_graphs.StepLosses",
]


def steps(*overrides: str, tmp: Path, name: str) -> list[float]:
    """The losses of a run of STEPS with ``overrides``, in ``tmp / name``."""
    train_here(*STEPS, *overrides, tmp=tmp, run_dir=tmp / name)
    return StepLosses.seen[-1]


@pytest.fixture(scope="module")
def eager(tmp_path_factory) -> tuple[list[float], Path]:
    """The eager run the others are held to: its losses and its folder."""
    tmp = tmp_path_factory.mktemp("eager")
    return steps("graphs=off", f"data.root={MINI}", tmp=tmp, name="run"), tmp / "run"


def test_replayed_steps_train_exactly_as_eager_steps(eager, mini, tmp_path):
    eager_losses, eager_run = eager
    graphed = steps(
        "graphs._target_=tests.test_graphs.CpuStepGraphs", f"data.root={mini}", tmp=tmp_path, name="run"
    )
    assert len(eager_losses) == 75 and graphed == eager_losses
    ran = results(tmp_path / "run")["cuda_graphs"]
    # captured at the sixth step of each epoch (RAdam's five momentum steps, anew with each
    # cycle's fresh state, are eager), and replayed for the other 20 of its 25
    assert ran == {"capture": "auto", "on": True, "why": None, "captured": 3, "replayed_steps": 60}
    assert results(eager_run)["cuda_graphs"]["why"] == "graphs.capture=false"
    weights = [
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        for run in (eager_run, tmp_path / "run")
    ]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_a_failed_capture_steps_eagerly_with_auto_and_is_one_line_with_true(eager, mini, tmp_path):
    """graphs=auto: the run goes on eagerly from the failed capture on (the same steps as a run
    that never tried), and results.json says why; graphs.capture=true: one line, the run stops."""
    failing = ["graphs._target_=tests.test_graphs.FailingCapture", f"data.root={mini}"]
    assert steps(*failing, tmp=tmp_path, name="failed") == eager[0]
    assert results(tmp_path / "failed")["cuda_graphs"] == {
        "capture": "auto", "on": False, "captured": 0, "replayed_steps": 0,
        "why": "the capture failed: operation not permitted when stream is capturing",
    }  # fmt: skip
    with pytest.raises(ConfigError) as refusal:
        steps(*failing, "graphs.capture=true", tmp=tmp_path, name="true")
    assert str(refusal.value) == (
        "graphs.capture=true, but the capture failed: operation not permitted when stream is capturing: "
        "use graphs.capture=auto (eager where the capture fails) or false"
    )

"""The whole training step as one CUDA graph per batch shape (conf/graphs: ``capture`` auto, on
where a GPU runs the step and nothing below stops it; true, refused where it cannot; false).

On a GPU this recipe's step is about 1,200 ATen ops, most of them launching a kernel: Python
and the launches, not the GPU, set its pace (benchmarks/RESULTS.md). A replayed graph launches
them all at once. Written by hand beside Lightning's automatic optimization, through its public
hooks, as NVIDIA NeMo's CUDAGraphCallback does: ImageClassifier.optimizer_step hands Lightning's
step (``optimizer.step(closure)``: training_step, zero_grad, backward, the optimizer's update)
to ``StepGraphs.step``. Each new batch shape's first ``warmup`` steps run eagerly on a side
stream (cuDNN's autotuning, the allocator, RAdam's momentum steps), the next is captured and
replayed, and the later ones only replayed: the closure then runs with training_step returning
the graph's loss and zero_grad and backward skipped, so Lightning's loop (its step count,
outputs and hooks) sees the step it expects. The batch is first copied into its shape's static
buffers (``stage``, from on_train_batch_start); the draws come from the device's generator,
seeded before a replay as before an eager step (a graph reads the seed when it replays). What
the host does for a step (the optimizer's counts, Lookahead's k-th update) is the optimizer's
``host_step``, called after every step. Lightning's autocast keeps no cache of cast weights
(``cache_enabled=False``), as a capture needs (tests/test_graphs.py holds it to that).
Callbacks' per-step hooks run at every step, but those that run inside the optimizer's step
(on_before_optimizer_step) only when it runs eagerly or is captured: a replay runs no Python.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch import Tensor

from lightning_sota.augment.mix import CutMix
from lightning_sota.errors import ConfigError

log = logging.getLogger(__name__)
Switch = bool | Literal["auto"]


def blockers(
    trainer: pl.Trainer,
    mix: object | None,
    compile_mode: bool | str = False,
    optimizer: object | None = None,
    schedule: object | None = None,
) -> list[str]:
    """Why a run's step cannot be captured, if it cannot: ``trainer``'s device, processes,
    precision and accumulation, the run's mix and model.compile, and once the model exists
    (configure_optimizers) its optimizer and schedule (None leaves them out)."""
    why = []
    device, world_size = trainer.strategy.root_device, trainer.world_size
    if device.type != "cuda":
        why.append(f"the run is on {device.type}: CUDA graphs need a GPU")
    if world_size > 1:
        why.append(f"the run has {world_size} processes: DDP's gradient all-reduce is not captured here")
    if str(trainer.precision) == "16-mixed":
        why.append(
            "trainer.precision=16-mixed: its gradient scaler reads the host every step (use bf16-mixed)"
        )
    if trainer.accumulate_grad_batches > 1:
        why.append("trainer.accumulate_grad_batches > 1: a graph replays an update every step")
    if isinstance(mix, CutMix):
        why.append("mix=cutmix draws its box on the host (mixup draws on the device)")
    if compile_mode in ("reduce-overhead", "max-autotune"):
        why.append(f"model.compile={compile_mode} makes CUDA graphs of its own")
    if optimizer is not None and not all(
        hasattr(optimizer, m) for m in ("host_step", "settled", "unchanged")
    ):
        why.append(f"{type(optimizer).__name__} takes host numbers that change every step (use optim=ranger)")
    if getattr(schedule, "moms", None) is not None:
        why.append("schedule.moms cycles beta1, a host number to the fused kernel (use schedule.moms=null)")
    return why


class StepGraphs:
    """The run's captured steps: its switch, what it decided and why, and the graph of the
    current batch shape (one at a time: a new shape, a phase's, releases the last)."""

    def __init__(self, capture: Switch = "auto", warmup: int = 3) -> None:
        self.setting, self.warmup = capture, warmup
        self.why: str | None = "not a training run"
        self.replaying = False  # the closure runs for a replayed step: see ImageClassifier
        self.loss: Tensor | None = None  # the graph's loss, which training_step returns at a replay
        self.captured = self.replayed = 0
        self._decided = False
        self._suspended = False
        self._shape: tuple | None = None  # the staged batch's
        self._static: dict[str, Tensor] = {}
        self._graph: torch.cuda.CUDAGraph | None = None
        self._eager = 0  # eager steps of the current shape
        self._stream: torch.cuda.Stream | None = None

    @property
    def on(self) -> bool:
        return self._decided and not self._suspended

    def decide(self, reasons: list[str]) -> None:
        """On unless switched off or ``reasons`` (``blockers``) say why not; capture=true with a
        reason is refused in one line."""
        if self.setting is False:
            self._decided, self.why = False, "graphs.capture=false"
        elif reasons and self.setting is True:
            raise ConfigError(f"graphs.capture=true, but {reasons[0]}: use graphs.capture=auto or false")
        else:
            self._decided, self.why = not reasons, (reasons[0] if reasons else None)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """Eager steps inside (lr_find's search, whose weights and optimizer state are put back
        after it); no graph of before or inside is replayed after."""
        self._suspended = True
        self._release()
        try:
            yield
        finally:
            self._suspended = False
            self._release()

    def stage(self, batch: dict[str, Any]) -> None:
        """``batch``'s tensors replaced by the static buffers of its shape, which a captured step
        reads, holding the same values. A new shape (a phase's) makes them, and lets the last
        shape's graph go."""
        shape = tuple(
            (k, tuple(v.shape), v.dtype) if isinstance(v, Tensor) else (k, v) for k, v in batch.items()
        )
        if shape != self._shape:
            self._release()
            self._shape = shape
            self._static = {k: v.clone() for k, v in batch.items() if isinstance(v, Tensor)}
        else:
            for key, buffer in self._static.items():
                buffer.copy_(batch[key])
        batch.update(self._static)

    def step(self, optimizer: LightningOptimizer, closure: Callable[[], object]) -> None:
        """One training step, Lightning's ``optimizer.step(closure)``: eager, captured, or
        replayed with ``closure`` run after the replay; then the optimizer's ``host_step``."""
        inner = optimizer.optimizer

        def run() -> object:
            return optimizer.step(closure=closure)

        if not inner.unchanged():
            self._release()  # the optimizer's state cleared or loaded: the graph read the old one
        if self._graph is not None:
            self._graph.replay()
            self.replayed += 1
            self.replaying = True
            try:
                closure()
            finally:
                self.replaying = False
        elif self._eager < self.warmup or not inner.settled():
            self._eager += 1
            self._run_eager(run)
        elif not self._try_capture(run, inner):
            return  # captured nothing, stepped eagerly and counted: the run goes on without graphs
        inner.host_step()

    def _run_eager(self, run: Callable[[], object]) -> None:
        """On the stream the capture will use, as torch's whole-network capture warms up."""
        stream = self._side_stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            run()
        torch.cuda.current_stream().wait_stream(stream)

    def _try_capture(self, run: Callable[[], object], optimizer: Any) -> bool:
        """The step captured, then replayed for this batch; False (the step run eagerly, and
        every later one) where the capture failed and ``capture`` is auto."""
        try:
            # the loss the step returns (Lightning's closure's, detached) is the graph's output
            self._graph, self.loss = self._capture(run)
        except RuntimeError as err:  # an op the capture refused
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if self.setting is True:
                raise ConfigError(
                    f"graphs.capture=true, but the capture failed: {reason}: use graphs.capture=auto "
                    "(eager where the capture fails) or false"
                ) from err
            self._decided, self.why = False, f"the capture failed: {reason}"
            log.warning("graphs: %s; the run goes on without CUDA graphs", self.why)
            optimizer.defer_host = False
            run()
            return False
        self.captured += 1
        self._graph.replay()
        self.replayed += 1
        return True

    def _capture(self, run: Callable[[], object]) -> tuple[torch.cuda.CUDAGraph, Tensor]:
        """The graph of ``run`` and its output, which each replay writes."""
        graph = torch.cuda.CUDAGraph()
        # thread_local: the checkpoint writer's and the pinning thread's copies, on threads of
        # their own, go on during the capture (global would refuse them, or the capture)
        with torch.cuda.graph(graph, stream=self._side_stream(), capture_error_mode="thread_local"):
            loss = run()
        return graph, loss

    def _side_stream(self) -> torch.cuda.Stream:
        if self._stream is None:
            self._stream = torch.cuda.Stream()
        return self._stream

    def _release(self) -> None:
        self._graph, self._eager = None, 0

    def close(self) -> None:
        """The fit is over: its graph, their memory pool and the static buffers let go."""
        self._release()
        self._static, self._shape, self.loss = {}, None, None

    def report(self) -> dict:
        """For results.json: the switch, whether steps were captured and replayed, and why not."""
        return {
            "capture": self.setting,
            "on": self._decided,
            "why": self.why,
            "captured": self.captured,
            "replayed_steps": self.replayed,
        }

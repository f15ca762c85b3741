"""What the host does for one training step: ATen ops, ops that launch kernels, host ms by
section, and the ops whose host-side arguments change from step to step (what a captured CUDA
graph would freeze).

    python benchmarks/host_overhead.py --root /path/to/imagenette2-224 [--widen 0.015625] [--json out.json]

The step is the product's own, built from a composed config through the same factories as a run
(lightning_sota.run.build), on the CPU with the model's widths scaled down (``model.widen``): the
real op graph with nearly free kernels, so the time left is the host's. Sections: gather (the next
batch from the loader), seeding (the step's draws), augment (crop, flip, warp, lighting),
normalize, mix, forward, loss, the rest of training_step (logging, the finite-loss verdict),
backward, optimizer (with the schedule's step). "Lightning's loop" is a real ``trainer.fit`` of
the same run (build_run: its callbacks, loggers and checkpoints) per step, minus the manual
step's total. Ops are counted per step by a dispatch mode on steps after RAdam's first five;
"launch kernels" counts every op that is not a view, a fresh allocation or a host read. Figures
only: nothing is asserted; current ones are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytorch_lightning as pl
import torch
from throughput import built

from lightning_sota.config.compose import compose_config
from lightning_sota.run.build import build_run
from lightning_sota.training.step_ops import OpLog, changing

CPU = torch.device("cpu")


class Sections:
    """Host ms of the step's parts, per step, from forward hooks on the module's parts and
    wrappers; ``median`` over the steps after ``warm_up``."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = [defaultdict(float)]
        self._start: dict[str, float] = {}

    def add(self, name: str, start: float) -> None:
        self.steps[-1][name] += 1e3 * (time.perf_counter() - start)

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.add(name, start)

    def hook(self, module: torch.nn.Module, name: str) -> None:
        module.register_forward_pre_hook(lambda *_: self._start.__setitem__(name, time.perf_counter()))
        module.register_forward_hook(lambda *_: self.add(name, self._start[name]))

    def wrap(self, fn: Callable, name: str) -> Callable:
        def timed_fn(*args, **kwargs):
            with self.timed(name):
                return fn(*args, **kwargs)

        return timed_fn

    def next_step(self) -> None:
        self.steps.append(defaultdict(float))

    def median(self, warm_up: int) -> dict[str, float]:
        """Per section; training_step's own rest apart from the parts it calls."""
        inside = ("augment", "normalize", "mix", "forward", "loss")
        steps = [
            {**step, "training_step": step["training_step"] - sum(step.get(n, 0.0) for n in inside)}
            for step in self.steps[warm_up:-1]
        ]
        return {name: round(statistics.median(s[name] for s in steps), 3) for name in steps[0]}


def optimizer_host_ms(cfg, steps: int = 40) -> float:
    """Median ms of the run's optimizer and schedule step with every parameter one element
    (its number of dimensions kept: weight decay goes by it): each op still dispatched and
    run, its kernel's own work nearly nothing, so the time is the host's (Python, dispatch,
    per-op costs) as on a GPU, where the kernels run apart. Lookahead's k-th steps left out."""
    data, module = built(cfg, CPU)
    for p in module.model.parameters():
        p.data = torch.zeros((1,) * p.ndim)
        p.grad = torch.full_like(p.data, 1e-3)
    optimizer = module.optimizer_factory(module.model)
    schedule = module.schedule_factory(optimizer, module.plan.optimizer_steps())
    times = []
    for _ in range(steps + 10):
        start = time.perf_counter()
        optimizer.step()
        schedule.step()
        times.append(1e3 * (time.perf_counter() - start))
    k = optimizer.defaults.get("lookahead_k") or steps + 10
    return round(statistics.median(t for i, t in enumerate(times[10:], 10) if (i + 1) % k), 3)


def build(args: argparse.Namespace, cache_dir: str, log_dir: str | None = None, epochs: int = 1):
    """The composed config, one phase of ``args.size`` and ``args.bs`` whatever the recipe's;
    metrics.csv in ``log_dir`` (the real run's logger), or no logger."""
    logger = f"logger.csv.save_dir={log_dir}" if log_dir else "~logger"
    overrides = [f"data.root={args.root}", "data.download=false", f"data.cache_dir={cache_dir}", logger,
                 f"data.on_device={str(args.on_device).lower()}",
                 f"model.widen={args.widen}", f"trainer.precision={args.precision}", *args.overrides,
                 f"resize.phases=[{{size:{args.size},batch_size:{args.bs},epochs:{epochs}}}]"]  # fmt: skip
    return compose_config(overrides)


def manual_steps(
    cfg, steps: int, sections: Sections, oplog_from: int | None = None, device: torch.device = CPU, after=None
) -> tuple[list, dict]:
    """``steps`` training steps of the run's module, as Lightning's loop makes them (autocast as
    the precision asks, the schedule stepped after the optimizer), timed by section; the op logs
    of the steps from ``oplog_from`` on, by kind: "first" (an epoch's first step: it also builds
    the loader), "lookahead" (Lookahead's k-th step) and "plain". On ``device`` (the GPU check's
    profile: benchmarks/gpu_check.py); ``after(step)`` is called after each step."""
    data, module = built(cfg, device)
    configured = module.configure_optimizers()
    optimizer, schedule = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    bf16 = "bf16" in str(cfg.trainer.precision)
    for part in ("augment", "normalize", "model", "loss"):
        sections.hook(getattr(module, part), "forward" if part == "model" else part)
    if module.mix is not None:
        module.mix = sections.wrap(module.mix, "mix")
    module.train()
    per_step, logs = [], {"first": [], "lookahead": [], "plain": []}
    k = optimizer.defaults.get("lookahead_k")  # timm's Lookahead (ranger)
    batches, first = iter(()), False
    for step in range(steps):
        logged = oplog_from is not None and step >= oplog_from
        log = OpLog() if logged else contextlib.nullcontext()
        start = time.perf_counter()
        with log:
            with sections.timed("gather"):
                batch = next(batches, None)
                if first := batch is None:  # a new epoch, as Lightning's loop starts one
                    batches = iter(data.train_dataloader())
                    batch = next(batches)
                    module.on_train_epoch_start()
            with sections.timed("seeding"):
                module.on_train_batch_start(batch, step)
            with (
                sections.timed("training_step"),
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
            ):
                loss = module.training_step(batch, step)
            with sections.timed("backward"):
                loss.backward()
            with sections.timed("optimizer"):
                optimizer.step()
            with sections.timed("zero_grad"):
                optimizer.zero_grad(set_to_none=True)
            with sections.timed("schedule"):
                schedule.step()
            with sections.timed("after_step"):  # Lightning's on_train_batch_end: what the loop keeps
                module.after_step(loss, len(batch["label"]))
        per_step.append(1e3 * (time.perf_counter() - start))
        sections.next_step()
        if after:
            after(step)
        if logged:
            kind = "first" if first else "lookahead" if k and (step + 1) % k == 0 else "plain"
            logs[kind].append((step, log))
    return per_step, logs


class StepClock(pl.Callback):
    """The wall time between consecutive training batch ends, within an epoch."""

    def __init__(self) -> None:
        self.intervals: list[float] = []
        self._last: float | None = None

    def on_train_epoch_start(self, *_) -> None:
        self._last = None

    def on_train_batch_end(self, *_) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.intervals.append(1e3 * (now - self._last))
        self._last = now


def lightning_step_ms(args: argparse.Namespace, cache_dir: str, epochs: int) -> float:
    """Median ms between two training steps of a real ``trainer.fit`` of the run (``epochs``
    epochs, no validation), an epoch's first step left out."""
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = build(args, cache_dir, run_dir, epochs=epochs)
        cfg.trainer.limit_val_batches = 0
        run = build_run(cfg, Path(run_dir))
        clock = StepClock()
        run.trainer.callbacks.append(clock)
        run.trainer.fit(run.module, datamodule=run.data)
    return statistics.median(clock.intervals)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True)
    parser.add_argument("--widen", type=float, default=1 / 64, help="the model's width multiplier")
    # small: the host's work per step does not depend on them, the kernels' does
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--bs", type=int, default=8)
    parser.add_argument("--precision", default="32", help="trainer.precision: 32 or bf16-mixed")
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the timed trainer.fit")
    parser.add_argument(
        "--on-device",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the caches resident with the model, as on a GPU (data.on_device)",
    )
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("overrides", nargs="*", default=["+experiment=sota"], help="config overrides")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=".*self.log.*")
    torch.set_num_threads(1)  # the host's own time, not the kernels' threading
    with tempfile.TemporaryDirectory() as cache_dir:
        cfg = build(args, cache_dir)
        # the steps after RAdam's first five (momentum SGD) and the runs' first (state set up)
        _, logs = manual_steps(cfg, 30, Sections(), oplog_from=8)
        sections = Sections()
        per_step, _ = manual_steps(cfg, args.steps + 10, sections)
        optimizer_ms = optimizer_host_ms(cfg)
        loop = lightning_step_ms(args, cache_dir, args.epochs)
    manual = statistics.median(per_step[10:])
    # two consecutive plain steps
    plain = dict(logs["plain"])
    pair = next((plain[s], plain[s + 1]) for s in sorted(plain) if s + 1 in plain)
    a, b = pair
    changed = changing(a, b)
    look = logs["lookahead"][0][1] if logs["lookahead"] else None
    figures = {
        "config": " ".join(args.overrides), "widen": args.widen, "size": args.size, "batch_size": args.bs,
        "precision": args.precision, "on_device": args.on_device, "torch": torch.__version__,
        "aten_ops": len(b.ops), "kernel_ops": b.kernels,
        "changing_host_args": len(changed), "changing_ops": sorted(set(changed)),
        "lookahead_extra_ops": (len(look.ops) - len(b.ops)) if look else None,
        "host_ms": sections.median(warm_up=10),
        "optimizer_host_ms": optimizer_ms,
        "manual_step_ms": round(manual, 3), "lightning_step_ms": round(loop, 3),
        "lightning_loop_ms": round(loop - manual, 3),
    }  # fmt: skip
    for name, value in figures.items():
        print(f"{name:>20}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()

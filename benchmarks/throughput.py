"""Images/s of the loader alone and of the training step, per size, precision and memory format.

    python benchmarks/throughput.py --root /path/to/imagenette2-224 [--sizes 64 128 224] [--device cuda]

Both are the product's own pipeline, built from the composed config as a run builds it
(lightning_sota.run.build.build_module): loader = cache -> uint8 batch -> device -> fused
augmentation -> normalized float batch, what the model receives (the caches are built first and
reported apart); step = forward, backward and optimizer step of the run's model, loss and
optimizer on such a batch, eager in four precision/memory-format variants, bf16 + channels_last
once more without the CPU's small-map GEMMs (``cpu.small_map_gemm=false``; CPU only), and compiled
(``model.compile=true``) in the product's default precision there, with the seconds its first two
steps took (compiling; --no-compile leaves it out: on a CPU that is most of a small run). Figures
only: nothing is asserted; current ones are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch
from omegaconf import DictConfig

from lightning_sota.config.compose import compose_config
from lightning_sota.data.datamodule import ImagenetteDataModule
from lightning_sota.run.build import build_module, cpu_tuning
from lightning_sota.run.plan import prepared_data
from lightning_sota.training.module import ImageClassifier


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def pipeline(
    root: str,
    size: int,
    bs: int,
    device: torch.device,
    overrides: list[str] = (),
    cache_dir: str | None = None,
) -> tuple[ImagenetteDataModule, ImageClassifier]:
    """The data (set up, one phase of ``size`` and ``bs``) and the module a run of ``overrides``
    builds on ``device``."""
    where = [f"data.cache_dir={cache_dir}"] if cache_dir else []
    phase = ["resize=fixed", f"scale.size={size}", f"scale.batch_size={bs}", "scale.epochs=1"]
    # ~logger: its paths are a Hydra run's, and nothing is logged here
    cfg = compose_config([f"data.root={root}", "data.download=false", "~logger", *where, *phase, *overrides])
    return built(cfg, device)


def built(cfg: DictConfig, device: torch.device) -> tuple[ImagenetteDataModule, ImageClassifier]:
    """The data of ``cfg`` (set up, placed for ``device``) and the module a run builds, on ``device``."""
    data, plan = prepared_data(cfg)
    data.place(device, upload=True)
    module = build_module(cfg, data.classes, cpu_tuning(cfg, device))
    module.plan, module.serving = plan, data.serving()
    return data, module.to(device)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def loader_rate(data: ImagenetteDataModule, module: ImageClassifier, batches: int) -> float:
    """Augmented, normalized training batches per second (as images/s), after 2 of warm-up."""
    device = module.device
    seen, start = 0, None
    with torch.no_grad():
        for i, batch in enumerate(data.train_dataloader()):
            if i == 2:
                sync(device)
                start, seen = time.perf_counter(), 0
            seen += len(module.prepare(to_device(batch, device), train=True))
            if i == batches + 1:
                break
    sync(device)
    return seen / (time.perf_counter() - start)


def step_rate(
    data: ImagenetteDataModule, module: ImageClassifier, bf16: bool, steps: int
) -> tuple[float, float]:
    """Images/s of the timed training steps (forward, backward, the run's optimizer) on one real
    prepared batch, and the seconds of the two warm-up steps (compiling, if the model is)."""
    device = module.device
    batch = to_device(next(iter(data.train_dataloader())), device)
    with torch.no_grad():
        x, y = module.prepare(batch, train=True), batch["label"]
    module.train()
    opt = module.optimizer_factory(module.model)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    warm_start = time.perf_counter()
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            start = time.perf_counter()
            warm_up = start - warm_start
        with autocast:
            loss = module.loss(module.model(x), y).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return steps * len(x) / (time.perf_counter() - start), warm_up


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True)
    parser.add_argument("--arch", default="xresnet18")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--loader-batches", type=int, default=30)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default: 3 on CPU, 30 on GPU)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--cache-dir", default=os.environ.get("LIGHTNING_SOTA_CACHE", "outputs/cache"))
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = args.steps or (30 if device.type == "cuda" else 3)
    on_cpu = device.type == "cpu"

    print(
        f"{args.arch}, bs {args.bs}, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    header = ("size", "cache s", "loader img/s", "step fp32", "fp32+CL", "bf16", "bf16+CL", "w/o pairs",
              "compiled", "compile s", "loader/step")  # fmt: skip
    widths = (5, 8, 13, 10, 9, 9, 9, 10, 9, 10, 12)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    arch = [f"model.arch={args.arch}"]

    def rate(size: int, bf16: bool, *overrides: str) -> tuple[float, float]:
        built = pipeline(args.root, size, args.bs, device, [*arch, *overrides], args.cache_dir)
        return step_rate(*built, bf16, steps)

    for size in args.sizes:
        data, module = pipeline(args.root, size, args.bs, device, arch, args.cache_dir)
        loader = loader_rate(data, module, args.loader_batches)
        rates = {
            (bf16, cl): rate(size, bf16, f"model.channels_last={str(cl).lower()}")[0]
            for bf16 in (False, True)
            for cl in (False, True)
        }
        no_pairs = rate(size, True, "cpu.small_map_gemm=false")[0] if on_cpu else None
        # compiled in the product's default precision: bf16-mixed on a GPU, fp32 on a CPU
        compiled, compile_seconds = (
            rate(size, not on_cpu, "model.compile=true") if args.compile else (None, None)
        )
        best = max(*rates.values(), compiled or 0)
        cells = [no_pairs, compiled, compile_seconds]
        print(
            f"{size:>5} {data.cache_seconds:>8.1f} {loader:>13.0f} {rates[False, False]:>10.1f} "
            f"{rates[False, True]:>9.1f} {rates[True, False]:>9.1f} {rates[True, True]:>9.1f} "
            + " ".join(
                f"{c:>{w}.1f}" if c is not None else f"{'-':>{w}}"
                for c, w in zip(cells, (10, 9, 10), strict=True)
            )
            + f" {loader / best:>11.1f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()

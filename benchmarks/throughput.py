"""Images/s of the loader alone and of the training step, per size, precision and memory format.

    python benchmarks/throughput.py --root /tmp/imagenette2-224 [--sizes 64 128 224] [--device cuda]

Loader: cache -> uint8 batch -> device -> fused augmentation -> normalized float batch, what the
model receives (the caches are built first and reported apart). Step: forward, backward and
optimizer step of the model on such a batch, eager in four precision/memory-format variants, bf16
+ channels_last once more without the small maps' GEMMs (``model.small_map_gemm=false``), and
compiled (``model.compile=true``) in the product's default one (bf16 + channels_last on a GPU, fp32
+ channels_last on a CPU), with the seconds its first two steps took (compiling; --no-compile
leaves it out: on a CPU that is most of a small run). Figures only: nothing is asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import time

import torch

from lightning_sota.augment import BatchAugment
from lightning_sota.data import ImagenetteDataModule
from lightning_sota.host_memory import reuse_freed_host_memory
from lightning_sota.models import create_model
from lightning_sota.normalize import Normalize
from lightning_sota.optim import adam


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def loader_rate(data: ImagenetteDataModule, device, batches: int) -> float:
    augment, normalize = BatchAugment(), Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]).to(device)
    seen, start = 0, None
    for i, batch in enumerate(data.train_dataloader()):
        if i == 2:  # warm-up done
            sync(device)
            start, seen = time.perf_counter(), 0
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        x = normalize(augment(batch, train=True)).contiguous(memory_format=torch.channels_last)
        seen += len(x)
        if i == batches + 1:
            break
    sync(device)
    return seen / (time.perf_counter() - start)


def step_rate(
    arch: str,
    size: int,
    bs: int,
    bf16: bool,
    channels_last: bool,
    device,
    steps: int,
    compile: bool = False,
    small_map_gemm: bool = True,
) -> tuple[float, float]:
    """Images/s of the timed steps, and the seconds of the two warm-up steps (compiling, if so)."""
    model = create_model(
        arch, num_classes=10, channels_last=channels_last, compile=compile, small_map_gemm=small_map_gemm
    )
    model = model.to(device).train()
    opt = adam(model)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(10, (bs,), device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    warm_start = time.perf_counter()
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            start = time.perf_counter()
            warm_up = start - warm_start
        with autocast:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return steps * bs / (time.perf_counter() - start), warm_up


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
    reuse_freed_host_memory()  # as train.py does
    device = torch.device(args.device)
    steps = args.steps or (30 if device.type == "cuda" else 3)

    print(
        f"{args.arch}, bs {args.bs}, {device}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    )
    compiled_bf16 = device.type == "cuda"  # the product's default precision there: bf16-mixed
    header = (
        "size",
        "cache s",
        "loader img/s",
        "step fp32",
        "fp32+CL",
        "bf16",
        "bf16+CL",
        "w/o pairs",
        "compiled",
        "compile s",
        "loader/step",
    )
    widths = (5, 8, 13, 10, 9, 9, 9, 10, 9, 10, 12)
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for size in args.sizes:
        data = ImagenetteDataModule(
            args.root,
            [{"size": size, "batch_size": args.bs, "epochs": 1}],
            download=False,
            cache_dir=args.cache_dir,
        )
        data.setup("fit")
        loader = loader_rate(data, device, args.loader_batches)
        rates = {
            (bf16, cl): step_rate(args.arch, size, args.bs, bf16, cl, device, steps)[0]
            for bf16 in (False, True)
            for cl in (False, True)
        }
        no_pairs = step_rate(args.arch, size, args.bs, True, True, device, steps, small_map_gemm=False)[0]
        compiled, compile_seconds = (
            step_rate(args.arch, size, args.bs, compiled_bf16, True, device, steps, compile=True)
            if args.compile
            else (0.0, 0.0)
        )
        best = max(*rates.values(), compiled)
        print(
            f"{size:>5} {data.cache_seconds:>8.1f} {loader:>13.0f} {rates[False, False]:>10.1f} "
            f"{rates[False, True]:>9.1f} {rates[True, False]:>9.1f} {rates[True, True]:>9.1f} "
            f"{no_pairs:>10.1f} "
            + (f"{compiled:>9.1f} {compile_seconds:>10.1f}" if args.compile else f"{'-':>9} {'-':>10}")
            + f" {loader / best:>11.1f}x",
            flush=True,
        )


if __name__ == "__main__":
    main()

"""Pack the full official split into one archive small enough to carry to a lent GPU machine.

    python benchmarks/pack_data.py --root /tmp/imagenette2-224 [--out data-pack/imagenette-pack.tar]

The device tool carries at most 64 MiB and the GPU machine has no network, so the 161 MB split is
re-encoded: the largest short side (of --sides) whose JPEG quality can stay at --min-quality or
above within --max-mib, at the highest such quality (estimated on a sample, then checked on the
whole pack and lowered until it fits). Images are resized with PIL's antialiasing filter, upright
(EXIF applied), RGB. The tar holds train/ and val/ in the official layout and PACK.json (short
side, quality, counts, bytes, source); `tar -xf` gives a folder `data.root` takes as it is.
Written under a temporary name and renamed. The pack lives under an ignored path: never commit it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from lightning_sota.data.folders import scan_split  # noqa: E402
from lightning_sota.locks import usable_cpus  # noqa: E402

MIB = 1 << 20
TAR_OVERHEAD = 768  # a member's 512-byte header and, on average, half a 512-byte block of padding


def encode(path: str, side: int, quality: int) -> bytes:
    with Image.open(path) as img:
        img = ImageOps.exif_transpose(img).convert("RGB")
        scale = side / min(img.size)
        if scale < 1:
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            img = img.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, "JPEG", quality=quality, optimize=True)
        return out.getvalue()


def _encode_many(paths: list[str], side: int, quality: int) -> list[bytes]:
    return [encode(p, side, quality) for p in paths]


def encode_all(paths: list[str], side: int, quality: int, workers: int) -> list[bytes]:
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    with ProcessPoolExecutor(workers) as pool:
        parts = pool.map(_encode_many, chunks, [side] * len(chunks), [quality] * len(chunks))
        return [blob for part in parts for blob in part]


def estimate(sample: list[str], total: int, side: int, quality: int, workers: int) -> float:
    """The pack's MiB at (side, quality), scaled up from a sample of the images."""
    blobs = encode_all(sample, side, quality, workers)
    return (sum(map(len, blobs)) + TAR_OVERHEAD * len(blobs)) * total / len(sample) / MIB


def choose(sample: list[str], total: int, args, workers: int) -> tuple[int, int]:
    """The largest side whose best fitting quality is at least min_quality, and that quality."""
    for side in sorted(args.sides, reverse=True):
        fitting = [
            q
            for q in range(95, args.min_quality - 1, -5)
            if estimate(sample, total, side, q, workers) <= args.max_mib * 0.97
        ]
        if fitting:
            return side, fitting[0]
    raise SystemExit(
        f"error: no short side in {args.sides} fits {args.max_mib} MiB at quality >= {args.min_quality}; "
        "add a smaller --sides value or lower --min-quality"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="a folder with train/ and val/ (the full split)")
    parser.add_argument("--out", default="data-pack/imagenette-pack.tar")
    parser.add_argument("--max-mib", type=float, default=60.0)
    parser.add_argument("--sides", type=int, nargs="+", default=[224, 192, 176, 160, 144, 128])
    parser.add_argument("--min-quality", type=int, default=60)
    parser.add_argument("--workers", type=int, default=None, help="default: the CPUs this process may use")
    args = parser.parse_args()
    workers = args.workers or usable_cpus()
    root = Path(args.root)
    members: list[tuple[str, str]] = []  # (path inside the pack, source file)
    for split in ("train", "val"):
        classes, files, labels = scan_split(root / split)
        members += [(f"{split}/{classes[y]}/{f.name}", str(f)) for f, y in zip(files, labels, strict=True)]
    if not members:
        raise SystemExit(f"error: no images under {root}/train and {root}/val")
    start = time.perf_counter()
    side, quality = choose([src for _, src in members[::50]], len(members), args, workers)
    while True:
        blobs = encode_all([src for _, src in members], side, quality, workers)
        size = sum(map(len, blobs)) + TAR_OVERHEAD * len(blobs)
        if size <= args.max_mib * MIB * 0.99 or quality <= args.min_quality:
            break
        quality -= 5  # the sample underestimated: one step lower
    manifest = {
        "short_side": side,
        "jpeg_quality": quality,
        "images": {s: sum(m[0].startswith(s + "/") for m in members) for s in ("train", "val")},
        "source": str(root.resolve()),
        "encoded_bytes": sum(map(len, blobs)),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    part = out.with_name(out.name + ".part")
    with tarfile.open(part, "w") as tar:
        for (name, _), blob in zip(members, blobs, strict=True):
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(blob), 0
            tar.addfile(info, io.BytesIO(blob))
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("PACK.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    if part.stat().st_size > args.max_mib * MIB:
        part.unlink()
        raise SystemExit(
            f"error: the pack is over {args.max_mib} MiB even at quality {quality}; "
            "add a smaller --sides value or lower --min-quality"
        )
    os.replace(part, out)
    manifest["pack_mib"] = round(out.stat().st_size / MIB, 2)
    manifest["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()

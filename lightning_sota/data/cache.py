"""Step 2: decode every image once into a presized uint8 array on disk, reused by later runs.

Each image is stored landscape (portrait images transposed, the flag kept so the augmentation
turns them back inside its single grid_sample), with its short side resized to the presize P
(never upsampled) and its long side kept up to ``max_aspect``·P, centred in a fixed H×W box and
edge-padded. ``boxes`` records where the real pixels are, so crops never sample the padding.

The cache is keyed by a fingerprint of (paths, byte sizes, mtimes, P, max_aspect) and built in a
temporary folder renamed into place only when complete: a killed build is never trusted, and two
runs building the same cache at once both end with one valid copy.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps
from rich.progress import Progress

from lightning_sota.files import is_stage, staged
from lightning_sota.locks import exclusive, usable_cpus

# 2: EXIF orientation applied (phone photos stored upright); caches of version 1 are rebuilt.
CACHE_VERSION = 2


@dataclass
class ImageCache:
    images: np.ndarray  # uint8 [N, H, W, 3], memory-mapped
    boxes: np.ndarray  # float32 [N, 4]: top, left, height, width of the real pixels
    transposed: np.ndarray  # bool [N]: stored transposed (the source was portrait)
    ok: np.ndarray  # bool [N]: False where the file could not be decoded
    path: Path
    built: bool  # True when this call decoded the images, False when it reused a cache
    seconds: float

    def __len__(self) -> int:
        return len(self.images)


def fingerprint(files: Sequence[Path], presize: int, max_aspect: float) -> str:
    digest = hashlib.sha256(f"v{CACHE_VERSION}|{presize}|{max_aspect:.4f}".encode())
    for f in files:
        st = os.stat(f)
        digest.update(f"|{Path(f).absolute()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def stored_shape(size: tuple[int, int], presize: int, max_aspect: float) -> tuple[int, int, bool]:
    """(short, long, transposed) of an image of PIL ``size`` (w, h) once presized."""
    w, h = size
    transposed = h > w
    short, long = (w, h) if transposed else (h, w)
    scale = min(1.0, presize / short)
    new_short = max(1, round(short * scale))
    new_long = min(max(1, round(long * scale)), math.ceil(presize * max_aspect))
    return new_short, new_long, transposed


def _turned(img: Image.Image) -> bool:
    """The EXIF orientation (phones store photos sideways with this tag) swaps width and height."""
    return img.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)


def upright_size(img: Image.Image) -> tuple[int, int]:
    """(w, h) as a person sees the image: after its EXIF orientation."""
    return img.size[::-1] if _turned(img) else img.size


def load_image(path: Path | Image.Image, short: int, long: int, transposed: bool) -> np.ndarray:
    """Decode to RGB (greyscale, CMYK, RGBA and palette images converted), turned upright by its
    EXIF orientation, at short×long. ``path`` may be an image already open (predict.py's API)."""
    opened = isinstance(path, str | Path)
    with Image.open(path) if opened else contextlib.nullcontext(path) as img:
        w, h = upright_size(img)
        src_short, src_long = (w, h) if transposed else (h, w)
        # Resize so the short side fits, then centre-crop the long side if it was capped.
        scale = short / src_short
        full_long = max(long, round(src_long * scale))
        target = (full_long, short) if not transposed else (short, full_long)
        # libjpeg decodes at 1/2, 1/4, 1/8 scale (much faster), asked in the file's own
        # orientation; a caller's own image is left as it was given
        if opened:
            img.draft("RGB", target[::-1] if _turned(img) else target)
        img = ImageOps.exif_transpose(img).convert("RGB").resize(target, Image.Resampling.BILINEAR)
        arr = np.asarray(img)
    if transposed:
        arr = arr.transpose(1, 0, 2)
    start = (arr.shape[1] - long) // 2
    return arr[:, start : start + long]


def _read_sizes(files: Sequence[Path]) -> list[tuple[int, int] | None]:
    sizes: list[tuple[int, int] | None] = []
    for f in files:
        try:
            with Image.open(f) as img:
                sizes.append(upright_size(img))
        except Exception:  # any unreadable file is reported as skipped, never fatal
            sizes.append(None)
    return sizes


def place(box: np.ndarray, arr: np.ndarray, top: int, left: int) -> None:
    """Put ``arr`` into ``box`` at (top, left) and edge-pad around it: rotations near the border
    then see plausible pixels, never black bars."""
    short, long = arr.shape[:2]
    box[top : top + short, left : left + long] = arr
    box[:top] = box[top]
    box[top + short :] = box[top + short - 1]
    box[:, :left] = box[:, left : left + 1]
    box[:, left + long :] = box[:, left + long - 1 : left + long]


def _decode_chunk(array_path: str, items: list[tuple[int, str, int, int, int, int, bool]]) -> list[int]:
    """Decode ``items`` into the memory-mapped array; returns the indices that failed."""
    images = np.load(array_path, mmap_mode="r+")
    failed = []
    for index, path, top, left, short, long, transposed in items:
        try:
            arr = load_image(Path(path), short, long, transposed)
        except Exception:
            failed.append(index)
            continue
        place(images[index], arr, top, left)
    images.flush()
    return failed


def _map(fn, chunks: list, workers: int, label: str) -> list:
    results = []
    with Progress(transient=True) as progress:
        task = progress.add_task(label, total=len(chunks))
        if workers <= 1:
            for chunk in chunks:
                results.append(fn(*chunk))
                progress.advance(task)
            return results
        # fork: the children only run PIL and numpy, and start instantly.
        with ProcessPoolExecutor(workers, mp_context=get_context("fork")) as pool:
            futures = [pool.submit(fn, *chunk) for chunk in chunks]
            for _ in as_completed(futures):
                progress.advance(task)
            results = [f.result() for f in futures]
    return results


def _chunks(seq: Sequence, size: int) -> list:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def _remove_stale(cache_dir: Path) -> None:
    """Drop the temporary folders of killed builds. Called under the build lock, which every
    build holds until its rename: any temporary folder left is a dead one's, on any host."""
    for tmp in filter(is_stage, cache_dir.iterdir()):
        shutil.rmtree(tmp, ignore_errors=True)


def _load(folder: Path, built: bool, seconds: float) -> ImageCache:
    meta = np.load(folder / "meta.npz")
    return ImageCache(
        images=np.load(folder / "images.npy", mmap_mode="r"),
        boxes=meta["boxes"],
        transposed=meta["transposed"],
        ok=meta["ok"],
        path=folder,
        built=built,
        seconds=seconds,
    )


def build_cache(
    files: Sequence[Path],
    presize: int,
    cache_dir: str | Path,
    max_aspect: float = 4 / 3,
    workers: int | None = None,
) -> ImageCache:
    """Load the cache of ``files`` at ``presize``, building it first if no complete one exists."""
    start = time.perf_counter()
    cache_dir = Path(cache_dir)
    final = cache_dir / f"p{presize}-{fingerprint(files, presize, max_aspect)}"
    if (final / "meta.npz").exists():
        return _load(final, built=False, seconds=time.perf_counter() - start)
    cache_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(cache_dir / ".build.lock", f"the {presize}px cache in {cache_dir}"):
        if (final / "meta.npz").exists():  # the process we waited for built it
            return _load(final, built=False, seconds=time.perf_counter() - start)
        _remove_stale(cache_dir)
        _build(files, presize, max_aspect, final, usable_cpus() if workers is None else workers)
    return _load(final, built=True, seconds=time.perf_counter() - start)


def _build(files: Sequence[Path], presize: int, max_aspect: float, final: Path, workers: int) -> None:
    """Decode ``files`` into a temporary folder beside ``final``, then rename it into place."""
    names = [str(f) for f in files]

    size_chunks = _chunks(names, 256)
    sizes = [
        s for part in _map(_read_sizes, [(c,) for c in size_chunks], workers, "read sizes") for s in part
    ]
    shapes = [stored_shape(s, presize, max_aspect) if s else None for s in sizes]
    height = max((s[0] for s in shapes if s), default=1)
    width = max((s[1] for s in shapes if s), default=1)

    n = len(files)
    boxes = np.zeros((n, 4), np.float32)
    transposed = np.zeros(n, bool)
    ok = np.array([s is not None for s in shapes])
    items = []
    for i, shape in enumerate(shapes):
        if shape is None:
            continue
        short, long, flip = shape
        top, left = (height - short) // 2, (width - long) // 2
        boxes[i] = (top, left, short, long)
        transposed[i] = flip
        items.append((i, names[i], top, left, short, long, flip))

    with staged(final) as stage:
        stage.path.mkdir()
        np.lib.format.open_memmap(
            stage.path / "images.npy", mode="w+", dtype=np.uint8, shape=(n, height, width, 3)
        ).flush()
        chunks = [(str(stage.path / "images.npy"), c) for c in _chunks(items, 64)]
        for failed in _map(_decode_chunk, chunks, workers, f"presize {n} images to {presize}px"):
            ok[failed] = False
        np.savez(stage.path / "meta.npz", boxes=boxes, transposed=transposed, ok=ok)

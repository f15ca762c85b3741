"""Step 1: find Imagenette on disk, or download the official archive, verify it and unpack it safely.

Nothing half-done is ever left where it would be trusted: the archive is downloaded under a
temporary name and renamed only once its MD5 matches, and it is extracted into a temporary
folder that is renamed into place only when extraction finished (files.staged).
"""

from __future__ import annotations

import hashlib
import http.client
import tarfile
import urllib.request
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from lightning_sota.errors import DataError
from lightning_sota.files import staged
from lightning_sota.locks import exclusive

# torchvision's Imagenette archives (torchvision.datasets.Imagenette._ARCHIVES).
BASE_URL = "https://s3.amazonaws.com/fast-ai-imageclas"
ARCHIVES: dict[str, tuple[str, str]] = {
    "full": ("imagenette2.tgz", "fe2fc210e6bb7c5664d602c3cd71e612"),
    "320px": ("imagenette2-320.tgz", "3df6f0d01a2c9592104656642f5e78a3"),
    "160px": ("imagenette2-160.tgz", "e793b78cc4c9e9a4ccc0c1155377a412"),
}


VALID_NAMES = ("val", "valid")  # Imagenette's name, and fastai's own default (GrandparentSplitter)


def valid_folder(folder: Path) -> Path | None:
    """``folder``'s validation split: ``val/``, else ``valid/``; None without either."""
    return next((folder / n for n in VALID_NAMES if (folder / n).is_dir()), None)


def has_splits(folder: Path) -> bool:
    return (folder / "train").is_dir() and valid_folder(folder) is not None


def resolve_root(
    root: str | Path, variant: str = "160px", download: bool = True, base_url: str = BASE_URL
) -> Path:
    """Return the folder holding ``train/`` and ``val/`` (or ``valid/``): ``root`` itself, the
    archive's folder inside it (``root/imagenette2-160``), or that folder freshly downloaded."""
    root = Path(root).expanduser().resolve()
    if has_splits(root):
        return root
    if variant not in ARCHIVES:
        raise DataError(f"unknown data.variant={variant!r}: choose one of {sorted(ARCHIVES)}")
    archive, md5 = ARCHIVES[variant]
    target = root / archive.removesuffix(".tgz")
    if has_splits(target):
        return target
    if not download:
        raise DataError(
            f"no train/ and val/ folders in {root}: point data.root (or IMAGENETTE_ROOT) at a folder "
            f"holding them, or set data.download=true to fetch {archive} into it"
        )
    created = not root.exists()
    root.mkdir(parents=True, exist_ok=True)
    lock = root / f".{archive}.lock"  # ranks started together download it once, not into one .part
    try:
        with exclusive(lock, archive):
            if not has_splits(target):  # else the process we waited for fetched it
                path = download_file(f"{base_url.rstrip('/')}/{archive}", root / archive, md5)
                extract_archive(path, target)
                path.unlink()
    except DataError:
        if {p.name for p in root.iterdir()} <= {lock.name}:  # a run that got nothing leaves no trace
            lock.unlink(missing_ok=True)
            if created:
                root.rmdir()
        raise
    if not has_splits(target):
        raise DataError(f"{archive} did not contain train/ and val/: delete {target} and check data.variant")
    return target


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download_file(url: str, dest: Path, md5: str | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through a temporary name; on any failure or MD5 mismatch
    nothing is left and a DataError says what happened."""
    if dest.exists() and (md5 is None or md5sum(dest) == md5):
        return dest
    try:
        with staged(dest) as stage:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(stage.path, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0)
                columns = (
                    *Progress.get_default_columns()[:1],
                    BarColumn(),
                    DownloadColumn(),
                    TransferSpeedColumn(),
                )
                with Progress(*columns, transient=True) as progress:
                    task = progress.add_task(f"download {dest.name}", total=total or None)
                    while block := response.read(1 << 20):
                        out.write(block)
                        progress.advance(task, len(block))
            got_bytes = stage.path.stat().st_size
            if total and got_bytes != total:
                raise DataError(
                    f"download of {url} was cut off at {got_bytes} of {total} bytes: run again to retry"
                )
            if md5 is not None and (got := md5sum(stage.path)) != md5:
                raise DataError(
                    f"MD5 mismatch for {url}: expected {md5}, got {got}; the file was deleted, "
                    "run again to retry (or check data.variant)"
                )
    except (OSError, ValueError, http.client.HTTPException) as err:  # URLError, HTTPError: OSErrors
        raise DataError(
            f"could not download {url} ({err}): check the network (or data.base_url), or point "
            "data.root= (or IMAGENETTE_ROOT) at a folder holding train/ and val/"
        ) from err
    return dest


def extract_archive(archive: Path, target: Path) -> Path:
    """Extract a tar archive whose single top-level folder becomes ``target``.

    Members with absolute paths or ``..`` are refused outright, and tarfile's ``data`` filter
    also refuses links leaving the archive, device files and the like; extraction happens in a
    temporary folder beside ``target``, renamed into place when complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with staged(target) as stage, tarfile.open(archive) as tar:
            unsafe = [
                m.name for m in tar.getmembers() if Path(m.name).is_absolute() or ".." in Path(m.name).parts
            ]
            if unsafe:
                raise DataError(
                    f"refused {archive}: member {unsafe[0]!r} would land outside the data folder; "
                    "delete the archive and get it from a trusted source"
                )
            stage.path.mkdir()
            tar.extractall(stage.path, filter="data")
            entries = list(stage.path.iterdir())
            if len(entries) == 1 and entries[0].is_dir():  # the archive's own top folder
                stage.source = entries[0]
    except (tarfile.TarError, OSError) as err:
        raise DataError(f"could not extract {archive}: {err}; delete it and run again") from err
    return target

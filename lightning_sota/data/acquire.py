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
from dataclasses import dataclass
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from lightning_sota.errors import DataError
from lightning_sota.files import staged
from lightning_sota.locks import exclusive


@dataclass(frozen=True)
class Check:
    """How a downloaded archive is verified: its whole MD5 (torchvision's checksums for
    Imagenette), or its size and the MD5 of its first MiB (fastai's download_checks.py, the only
    checksums fast.ai publishes for Imagewoof)."""

    md5: str | None = None
    size: int | None = None
    head_md5: str | None = None

    def problem(self, path: Path) -> str | None:
        """What is wrong with ``path``, or None."""
        if self.md5 is not None and (got := md5sum(path)) != self.md5:
            return f"MD5 mismatch: expected {self.md5}, got {got}"
        if self.size is not None and (got := path.stat().st_size) != self.size:
            return f"size mismatch: expected {self.size} bytes, got {got}"
        if self.head_md5 is not None and (got := md5sum(path, limit=1 << 20)) != self.head_md5:
            return f"MD5 mismatch of the first MiB: expected {self.head_md5}, got {got}"
        return None


BASE_URL = "https://s3.amazonaws.com/fast-ai-imageclas"
# data.dataset -> data.variant -> (archive, its check); each extracts to a folder of its name
ARCHIVES: dict[str, dict[str, tuple[str, Check]]] = {
    "imagenette": {  # torchvision.datasets.Imagenette._ARCHIVES
        "full": ("imagenette2.tgz", Check(md5="fe2fc210e6bb7c5664d602c3cd71e612")),
        "320px": ("imagenette2-320.tgz", Check(md5="3df6f0d01a2c9592104656642f5e78a3")),
        "160px": ("imagenette2-160.tgz", Check(md5="e793b78cc4c9e9a4ccc0c1155377a412")),
    },
    "imagewoof": {  # fastai 2.8's fastai/data/download_checks.py
        "full": ("imagewoof2.tgz", Check(size=1343715595, head_md5="2cc1c1e36e20cb6fd24ffb978edcb487")),
        "320px": ("imagewoof2-320.tgz", Check(size=328387740, head_md5="7a1fd92672a559a85de76e4810a20c21")),
        "160px": ("imagewoof2-160.tgz", Check(size=92612825, head_md5="3559b194123981a540b87132dbda412f")),
    },
}


VALID_NAMES = ("val", "valid")  # Imagenette's name, and fastai's own default (GrandparentSplitter)


def valid_folder(folder: Path) -> Path | None:
    """``folder``'s validation split: ``val/``, else ``valid/``; None without either."""
    return next((folder / n for n in VALID_NAMES if (folder / n).is_dir()), None)


def has_splits(folder: Path) -> bool:
    return (folder / "train").is_dir() and valid_folder(folder) is not None


def resolve_root(
    root: str | Path,
    variant: str = "160px",
    download: bool = True,
    base_url: str = BASE_URL,
    dataset: str = "imagenette",
) -> Path:
    """Return the folder holding ``train/`` and ``val/`` (or ``valid/``): ``root`` itself, the
    archive's folder inside it (``root/imagenette2-160``), or that folder freshly downloaded."""
    root = Path(root).expanduser().resolve()
    if has_splits(root):
        return root
    archive, check = ARCHIVES[dataset][variant]  # both checked by the config's schema
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
                path = download_file(f"{base_url.rstrip('/')}/{archive}", root / archive, check)
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


def md5sum(path: Path, chunk: int = 1 << 20, limit: int | None = None) -> str:
    """The MD5 of ``path``, or of its first ``limit`` bytes."""
    digest, left = hashlib.md5(), limit
    with open(path, "rb") as f:
        while (left is None or left > 0) and (block := f.read(chunk if left is None else min(chunk, left))):
            digest.update(block)
            left = None if left is None else left - len(block)
    return digest.hexdigest()


def download_file(url: str, dest: Path, check: Check | None = None, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``dest`` through a temporary name; on any failure or a file ``check``
    refuses nothing is left and a DataError says what happened."""
    if dest.exists() and (check is None or check.problem(dest) is None):
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
            if check is not None and (problem := check.problem(stage.path)):
                raise DataError(
                    f"{problem} for {url}; the file was deleted, run again to retry (or check "
                    "data.dataset and data.variant)"
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

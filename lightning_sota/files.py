"""Files and folders that appear complete or not at all: everything the project writes for later
(results, metrics, pictures, exports, caches, downloads) goes through ``staged``."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class Stage:
    """A temporary path beside ``final``; ``source`` is what gets renamed into place (the path
    itself, or something written inside it, such as an archive's single top folder)."""

    def __init__(self, final: Path) -> None:
        self.path = final.with_name(f".{final.name}.tmp-{socket.gethostname()}-{os.getpid()}")
        self.source = self.path


def is_stage(path: Path) -> bool:
    """A temporary path left by a ``staged`` block that was killed before it finished."""
    return ".tmp-" in path.name


@contextlib.contextmanager
def staged(final: str | Path) -> Iterator[Stage]:
    """Write ``stage.path`` (a file or a folder) in the block; on success it replaces ``final`` in
    one rename, on any error it is removed and ``final`` is left as it was. A killed process
    leaves only a hidden ``.<name>.tmp-<host>-<pid>``, which nothing trusts (``is_stage``)."""
    final = Path(final)
    stage = Stage(final)
    try:
        yield stage
        os.replace(stage.source, final)
    finally:
        if stage.path.is_dir() and not stage.path.is_symlink():
            shutil.rmtree(stage.path, ignore_errors=True)
        else:
            stage.path.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> None:
    with staged(path) as stage:
        stage.path.write_text(json.dumps(data, indent=2) + "\n")

"""What made a run: the project's commit (and whether its tree had changes) when it runs from a
git checkout, the versions of the libraries that shape its numbers, and its command line.
build_run makes it once; results.json and every checkpoint carry it."""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from pathlib import Path

import hydra
import pytorch_lightning
import timm
import torch
import torchmetrics
import torchvision
from hydra.core.hydra_config import HydraConfig

CHECKOUT = Path(__file__).resolve().parents[2]  # lightning_sota/run/ -> the repository's root


def git_state(root: Path = CHECKOUT) -> dict | None:
    """The checkout's commit and whether tracked files differ from it; None outside a checkout
    (an installed wheel) or without git."""
    if not (root / ".git").exists():
        return None

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30, check=True
        ).stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def versions() -> dict[str, str]:
    """Plain strings: torch's is a str subclass, which a weights_only checkpoint load refuses."""
    found = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "pytorch_lightning": pytorch_lightning.__version__,
        "timm": timm.__version__,
        "torchmetrics": torchmetrics.__version__,
        "hydra": hydra.__version__,
    }
    return {name: str(version) for name, version in found.items()}


def provenance() -> dict:
    """The run's provenance: git, versions, the process's command line and, under Hydra, the
    job's own overrides (in a sweep, what this job was given)."""
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    return {
        "git": git_state(),
        "versions": versions(),
        "command": shlex.join(sys.argv),
        "overrides": overrides,
    }
